"""Training datasets, models and scoring over the one feature spec (features/spec.py).

Plain Python (no Dagster): assets/ml.py wraps it as assets and checks, and
streaming/processors/inference.py calls the same `model_inputs` and `score` online, so offline and
online predictions come from one code path.
"""

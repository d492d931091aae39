"""Mutation fuzzing of the collectors' adapters, exchange-info parsers, capture reader and the
normalizer with genuine inputs from ../shared/samples (issue 12). engine.py holds the
machinery; tests/test_fuzz_adapters.py runs a small seeded budget in CI and
``python -m tests.fuzz.run`` a longer one, both printing the same report."""

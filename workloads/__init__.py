"""Workloads shared by the tests and the benchmarks.

The genuine exchange captures (samples.py), a deterministic synthetic market
(synthetic.py), the Binance capture hour taken through the platform's own adapter,
normalizer and lake writer (binance_hour.py), and getting envelopes onto the project's
topics (kafka.py). They live in the project, not under tests/, so that bench/ never
imports the test suite; no platform package (collectors/ .. pipelines/) imports them.
"""

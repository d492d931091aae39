"""Prometheus metrics of the stream processors (normalizer, feature processor).

Labelled by processor name only: per-symbol labels would make cardinality follow the
instrument list. Served by `start_metrics_server` when a processor is started with a
metrics port (one port per process).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_P = "ticklake_processor_"

RECORDS_IN = Counter(_P + "records_in", "Input records consumed and committed", ["processor"])
RECORDS_OUT = Counter(_P + "records_out", "Output records committed (incl. dead letters)", ["processor"])
TRANSACTIONS = Counter(_P + "transactions", "Committed transactions (micro-batches)", ["processor"])
DUPLICATES = Counter(_P + "duplicates", "Input records dropped as duplicates (event_id)", ["processor"])
LATE = Counter(_P + "late_records", "Records later than the allowed lateness (sent to dlq.features)", ["processor"])
WATERMARK = Gauge(_P + "watermark_us", "Close frontier: windows ending at or before it are final", ["processor"])
BATCH_SECONDS = Histogram(_P + "batch_seconds", "Wall time of one micro-batch (poll to commit)", ["processor"],
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
FEATURE_DELAY = Histogram(_P + "feature_delay_seconds",
                          "Feature row emission time minus the newest exchange_ts in its window",
                          ["processor"], buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    start_http_server(port, addr)

"""Prometheus metrics of the stream processors (normalizer, feature processor), under the
names the processors use; every metric is defined once, in runtime/metrics.py.

Labelled by processor name only: per-symbol labels would make cardinality follow the
instrument list.
"""

from __future__ import annotations

from runtime.metrics import EXCHANGE_TO_FEATURE as FEATURE_DELAY
from runtime.metrics import (
    EXCHANGE_TO_PROCESSED,
    LAST_RECORD,
    RECORDS_CONSUMED,
    RECORDS_PRODUCED,
    LagSnapshot,
    consumer_lag,
    loop_lag,
    register_lag_provider,
    unregister_lag_provider,
)
from runtime.metrics import PROCESSOR_BATCH_SECONDS as BATCH_SECONDS
from runtime.metrics import PROCESSOR_DUPLICATES as DUPLICATES
from runtime.metrics import PROCESSOR_LATE as LATE
from runtime.metrics import PROCESSOR_RECORDS_IN as RECORDS_IN
from runtime.metrics import PROCESSOR_RECORDS_OUT as RECORDS_OUT
from runtime.metrics import PROCESSOR_SOURCE_FRONTIER as SOURCE_FRONTIER
from runtime.metrics import PROCESSOR_TRANSACTIONS as TRANSACTIONS
from runtime.metrics import PROCESSOR_WATERMARK as WATERMARK

__all__ = [
    "BATCH_SECONDS",
    "DUPLICATES",
    "EXCHANGE_TO_PROCESSED",
    "LagSnapshot",
    "FEATURE_DELAY",
    "LAST_RECORD",
    "LATE",
    "RECORDS_CONSUMED",
    "RECORDS_IN",
    "RECORDS_OUT",
    "RECORDS_PRODUCED",
    "SOURCE_FRONTIER",
    "TRANSACTIONS",
    "WATERMARK",
    "consumer_lag",
    "loop_lag",
    "register_lag_provider",
    "start_metrics_server",
    "unregister_lag_provider",
]


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    from runtime.service_status import start_metrics_server as start

    start(port, addr)

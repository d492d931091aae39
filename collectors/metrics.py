"""Prometheus counters of the collectors, under the names the runner uses; every metric is
defined once, in runtime/metrics.py (the platform's one metrics module).

Labelled by shard so one scrape of a multi-shard process still tells shards apart; the
symbol label appears only where a per-instrument story matters (resyncs) and symbols per
shard are bounded by its config.
"""

from __future__ import annotations

from runtime.metrics import COLLECTOR_CONNECTIONS as CONNECTIONS
from runtime.metrics import COLLECTOR_DELIVERY_ERRORS as DELIVERY_ERRORS
from runtime.metrics import COLLECTOR_DUPLICATES as DUPLICATES
from runtime.metrics import COLLECTOR_GAPS as GAPS
from runtime.metrics import COLLECTOR_IP_STATE_CHANGES as FAILOVERS
from runtime.metrics import COLLECTOR_MESSAGES_IN as MESSAGES_IN
from runtime.metrics import COLLECTOR_MESSAGES_OUT as MESSAGES_OUT
from runtime.metrics import COLLECTOR_PARSE_ERRORS as PARSE_ERRORS
from runtime.metrics import COLLECTOR_PRODUCER_RETRIES as PRODUCER_RETRIES
from runtime.metrics import COLLECTOR_RATE_LIMIT_HITS as RATE_LIMIT_HITS
from runtime.metrics import COLLECTOR_RECONNECTS as RECONNECTS
from runtime.metrics import COLLECTOR_REST_RESPONSES as REST_RESPONSES
from runtime.metrics import COLLECTOR_RESYNCS as RESYNCS
from runtime.metrics import COLLECTOR_ROTATIONS as ROTATIONS
from runtime.metrics import COLLECTOR_SYMBOLS as SYMBOLS
from runtime.metrics import LAST_RECORD

__all__ = [
    "CONNECTIONS",
    "DELIVERY_ERRORS",
    "DUPLICATES",
    "FAILOVERS",
    "GAPS",
    "LAST_RECORD",
    "MESSAGES_IN",
    "MESSAGES_OUT",
    "PARSE_ERRORS",
    "PRODUCER_RETRIES",
    "RATE_LIMIT_HITS",
    "RECONNECTS",
    "REST_RESPONSES",
    "RESYNCS",
    "ROTATIONS",
    "SYMBOLS",
]

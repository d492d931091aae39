"""Prometheus counters of the collectors (one definition, shared by every shard in a process).

Labelled by shard so one scrape of a multi-shard process still tells shards apart; the
symbol label appears only where a per-instrument story matters (resyncs) and symbols per
shard are bounded by its config.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

_P = "ticklake_collector_"

MESSAGES_IN = Counter(_P + "messages_in", "Websocket frames received", ["shard", "exchange", "market"])
MESSAGES_OUT = Counter(_P + "messages_out", "Records published to raw topics", ["shard", "exchange", "market"])
DUPLICATES = Counter(_P + "duplicates", "Events dropped as already published (event_id window)", ["shard"])
PARSE_ERRORS = Counter(_P + "parse_errors", "Frames refused by the adapter (sent to dlq.collector)",
                       ["shard", "exchange", "market"])
RESYNCS = Counter(_P + "resyncs", "Per-symbol book resyncs", ["shard", "symbol"])
RECONNECTS = Counter(_P + "reconnects", "Websocket sessions that ended and were reopened", ["shard", "ip"])
ROTATIONS = Counter(_P + "rotations", "Planned make-before-break connection replacements", ["shard", "reason"])
FAILOVERS = Counter(_P + "ip_state_changes", "Egress IP health transitions", ["shard", "ip", "state"])
PRODUCER_RETRIES = Counter(_P + "producer_retries", "Produce calls retried because the local queue was full",
                           ["shard"])
DELIVERY_ERRORS = Counter(_P + "delivery_errors", "Records the broker did not acknowledge", ["shard"])
REST_RESPONSES = Counter(_P + "rest_responses", "REST answers by status", ["shard", "ip", "status"])
CONNECTIONS = Gauge(_P + "connections", "Open websocket sessions", ["shard", "ip"])

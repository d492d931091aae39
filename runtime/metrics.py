"""Every Prometheus metric of the platform, defined once (the one metrics module).

Collectors, processors, the lake sink, ClickHouse live and the pragma publisher import their
metrics from here; the alert rules (deploy/prometheus/rules) and Grafana dashboards
(deploy/grafana) may only reference names defined here (tests/test_observability.py checks
it). Conventions: `ticklake_` prefix, the unit in the name (`_seconds`, `_bytes`,
`_records`), counters exposed with `_total`, and bounded label sets only: service, shard,
exchange, market, topic, partition, table, egress ip, reason code. Symbol labels appear only
where the shard config bounds them (book resyncs).

Two families are computed because Prometheus scrapes, not in the hot path: consumer lag per
partition (each consuming service registers a provider that reads its consumer's positions
and the high watermarks its fetches report) and sealed-hour freshness (read from the lake
catalog). A scrape starts their refresh in a background thread and waits at most a second
for it, else serves the previous values: a busy consumer or a locked catalog never hangs the
scrape. Without scrapes nothing runs, so an idle service pays nothing for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- every service

SERVICE_START_TIME = Gauge(
    "ticklake_service_start_time_seconds",
    "Unix time this service process started (a change is a restart)",
    ["service", "shard"],
)
LAST_RECORD = Gauge(
    "ticklake_service_last_record_timestamp_seconds",
    "Unix time the service last consumed (or, for a collector, received) a record",
    ["service"],
)
INPUT_READY = Gauge(
    "ticklake_service_input_ready_time_seconds",
    "Unix time the service became ready to consume its input, for a service that first waits for something "
    "else (inference: a model to serve); the stuck check counts from here",
    ["service"],
)
RECORDS_CONSUMED = Counter(
    "ticklake_topic_records_consumed", "Records a service consumed from a topic (committed)", ["service", "topic"]
)
RECORDS_PRODUCED = Counter(
    "ticklake_topic_records_produced", "Records a service produced to a topic (committed)", ["service", "topic"]
)
DEAD_LETTERS = Counter(
    "ticklake_dead_letters", "Records sent to a dead-letter topic, by reason code", ["stage", "code"]
)


@dataclass(slots=True)
class LoopCounters:
    """What every consume -> process -> commit loop counts, meaning the same in each (the
    processors, the lake sink, ClickHouse live, the pragma publisher): `batches` is the
    consumed batches handled, `records_in` the Kafka records they held. A loop's own stats
    extend it with what only that loop counts (rows, commits, deliveries).

    `consumed()` is the one place a handled batch is counted: here, and in the shared
    families every service exports (time of the last record, records consumed per topic),
    which `ticklake status` and the dashboards read alike for every service."""

    batches: int = 0
    records_in: int = 0

    def consumed(self, service: str, topics: Iterable[str]) -> None:
        """Count one handled batch whose records came from `topics` (one entry a record)."""
        n = count_by_topic(RECORDS_CONSUMED, service, topics)
        self.batches += 1
        self.records_in += n
        if n:
            LAST_RECORD.labels(service).set(time.time())


def count_by_topic(counter: Counter, service: str, topics: Iterable[str]) -> int:
    """Add records to a (service, topic) counter, one inc per topic rather than per record;
    `topics` has one entry a record. Returns how many records there were."""
    per_topic: dict[str, int] = {}
    for t in topics:
        per_topic[t] = per_topic.get(t, 0) + 1
    for t, n in per_topic.items():
        counter.labels(service, t).inc(n)
    return sum(per_topic.values())


#: Consumer lag per partition; samples come from registered providers at scrape time.
CONSUMER_LAG_NAME = "ticklake_consumer_lag_records"

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
EXCHANGE_TO_PROCESSED = Histogram(
    "ticklake_exchange_to_processed_seconds",
    "Venue event time (exchange_ts) to the normalizer producing the processed record",
    ["exchange", "market"],
    buckets=_LATENCY_BUCKETS,
)
EXCHANGE_TO_FEATURE = Histogram(
    "ticklake_exchange_to_feature_seconds",
    "Feature row emission time minus the newest exchange_ts in its window",
    ["processor"],
    buckets=_LATENCY_BUCKETS,
)

# --------------------------------------------------------------------------- collectors

_C = "ticklake_collector_"
COLLECTOR_MESSAGES_IN = Counter(_C + "messages_in", "Websocket frames received", ["shard", "exchange", "market"])
COLLECTOR_MESSAGES_OUT = Counter(
    _C + "messages_out", "Records published to raw topics", ["shard", "exchange", "market"]
)
COLLECTOR_DUPLICATES = Counter(_C + "duplicates", "Events dropped as already published (event_id window)", ["shard"])
COLLECTOR_PARSE_ERRORS = Counter(
    _C + "parse_errors", "Frames refused by the adapter (sent to dlq.collector)", ["shard", "exchange", "market"]
)
COLLECTOR_RESYNCS = Counter(_C + "resyncs", "Per-symbol book resyncs", ["shard", "symbol"])
COLLECTOR_GAPS = Counter(
    _C + "sequence_gaps", "Venue sequence gaps (missing data; each triggers a resync)", ["shard", "exchange", "market"]
)
COLLECTOR_SYMBOLS = Gauge(
    _C + "symbols", "Symbols a shard collects (denominator of gaps per symbol-hour)", ["shard", "exchange", "market"]
)
COLLECTOR_RECONNECTS = Counter(_C + "reconnects", "Websocket sessions that ended and were reopened", ["shard", "ip"])
COLLECTOR_ROTATIONS = Counter(
    _C + "rotations", "Planned make-before-break connection replacements", ["shard", "reason"]
)
COLLECTOR_IP_STATE_CHANGES = Counter(_C + "ip_state_changes", "Egress IP health transitions", ["shard", "ip", "state"])
COLLECTOR_RATE_LIMIT_HITS = Counter(
    _C + "rate_limit_hits", "REST answers that throttle (429) or ban (418/403) an egress IP", ["shard", "ip", "status"]
)
COLLECTOR_PRODUCER_RETRIES = Counter(
    _C + "producer_retries", "Produce calls retried because the local queue was full", ["shard"]
)
COLLECTOR_DELIVERY_ERRORS = Counter(_C + "delivery_errors", "Records the broker did not acknowledge", ["shard"])
COLLECTOR_REST_RESPONSES = Counter(_C + "rest_responses", "REST answers by status", ["shard", "ip", "status"])
COLLECTOR_CONNECTIONS = Gauge(_C + "connections", "Open websocket sessions", ["shard", "ip"])

# --------------------------------------------------------------------------- stream processors

_P = "ticklake_processor_"
PROCESSOR_RECORDS_IN = Counter(_P + "records_in", "Input records consumed and committed", ["processor"])
PROCESSOR_RECORDS_OUT = Counter(_P + "records_out", "Output records committed (incl. dead letters)", ["processor"])
PROCESSOR_TRANSACTIONS = Counter(_P + "transactions", "Committed transactions (micro-batches)", ["processor"])
PROCESSOR_DUPLICATES = Counter(_P + "duplicates", "Input records dropped as duplicates (event_id)", ["processor"])
PROCESSOR_LATE = Counter(
    _P + "late_records", "Records later than the allowed lateness (sent to dlq.features)", ["processor"]
)
PROCESSOR_WATERMARK = Gauge(
    _P + "watermark_us", "Close frontier (the oldest source's): windows ending at or before it are final", ["processor"]
)
PROCESSOR_SOURCE_FRONTIER = Gauge(
    _P + "source_frontier_us",
    "Close frontier of one source (market:exchange): its windows ending at or before it are final",
    ["processor", "source"],
)
PROCESSOR_BATCH_SECONDS = Histogram(
    _P + "batch_seconds",
    "Wall time of one micro-batch (poll to commit)",
    ["processor"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# --------------------------------------------------------------------------- lake

LAKE_ROWS = Counter("ticklake_lake_rows", "Rows committed to the lake", ["table"])
LAKE_RECORDS = Counter("ticklake_lake_records", "Kafka records consumed by the lake sink", ["table"])
LAKE_DUPLICATES = Counter("ticklake_lake_duplicates", "Records dropped as event_id duplicates", ["table"])
LAKE_LATE = Counter("ticklake_lake_late_rows", "Rows older than the table watermark when they arrived", ["table"])
LAKE_COMMITS = Counter("ticklake_lake_commits", "Iceberg commits of the lake sink", ["table"])
LAKE_LAG = Gauge("ticklake_lake_consumer_lag", "Records in processed topics not yet in the lake", ["topic"])
LAKE_WATERMARK = Gauge(
    "ticklake_lake_watermark_seconds",
    "Event-time watermark of a lake table (max exchange_ts - allowed lateness), unix s",
    ["table"],
)
LAKE_FILES = Counter("ticklake_lake_files_written", "Data files the lake sink committed", ["table"])
LAKE_FILE_SIZE = Histogram(
    "ticklake_lake_file_size_bytes",
    "Size of each data file the lake sink committed",
    ["table"],
    buckets=(4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6, 128e6, 256e6, 512e6, 1e9),
)
#: Newest sealed hour per table (start of the hour, unix s), read from the catalog at scrape time.
SEALED_HOUR_NAME = "ticklake_lake_newest_sealed_hour_timestamp_seconds"

# --------------------------------------------------------------------------- pragma publisher

_G = "ticklake_pragma_"
PRAGMA_PUBLISHED = Counter(
    _G + "messages_published", "Messages acknowledged by the broker, per topic and feed key", ["topic", "feed"]
)
PRAGMA_PUBLISH_LATENCY = Histogram(
    _G + "publish_latency_seconds",
    "produce() call to broker acknowledgement",
    ["topic"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PRAGMA_EVENT_AGE = Histogram(
    _G + "event_age_seconds",
    "Venue event time to broker acknowledgement (end to end)",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PRAGMA_DELIVERY_ERRORS = Counter(
    _G + "delivery_errors", "Messages the broker did not acknowledge (dropped, retries per config)", ["topic"]
)
PRAGMA_SKIPPED = Counter(_G + "skipped", "Input envelopes not published, by reason", ["reason"])
PRAGMA_DEAD_LETTERS = Counter(_G + "dead_letters", "Undecodable input records sent to dlq.pragma", ["reason"])


# --------------------------------------------------------------------------- scrape-time families

LagSample = tuple[str, int, int]  # topic, partition, records behind
LagProvider = Callable[[], Iterable[LagSample]]


class Refreshed:
    """A value computed off the caller's thread: `get()` starts a refresh when the value is
    older than `ttl_s` (one at a time), waits up to `wait_s` for it, and returns the newest
    value it has."""

    def __init__(self, compute: Callable[[], Any], initial: Any, ttl_s: float = 0.0, wait_s: float = 1.0):
        self.compute, self.value, self.ttl_s, self.wait_s = compute, initial, ttl_s, wait_s
        self._at = -1e18
        self._running: threading.Event | None = None
        self._lock = threading.Lock()

    def _run(self, done: threading.Event) -> None:
        try:
            self.value = self.compute()
            self._at = time.monotonic()
        except Exception:  # keep the last value; the next get() tries again
            log.debug("metrics refresh failed", exc_info=True)
        finally:
            with self._lock:
                self._running = None
            done.set()

    def get(self) -> Any:
        with self._lock:
            done = self._running
            if done is None and time.monotonic() - self._at >= self.ttl_s:
                done = self._running = threading.Event()
                threading.Thread(target=self._run, args=(done,), name="metrics-refresh", daemon=True).start()
        if done is not None:
            done.wait(self.wait_s)
        return self.value


class _LagCollector(Collector):
    """ticklake_consumer_lag_records{service,topic,partition} from registered providers."""

    def __init__(self) -> None:
        self._providers: dict[str, LagProvider] = {}
        self._lock = threading.Lock()
        self._values = Refreshed(self._compute, [])

    def _compute(self) -> list[tuple[str, str, int, int]]:
        with self._lock:
            providers = list(self._providers.items())
        out = []
        for service, provider in providers:
            try:
                out += [(service, topic, part, lag) for topic, part, lag in provider()]
            except Exception:  # a closing consumer must not break the others
                log.debug("lag provider of %s failed", service, exc_info=True)
        return out

    def register(self, service: str, provider: LagProvider) -> None:
        with self._lock:
            self._providers[service] = provider

    def unregister(self, service: str) -> None:
        with self._lock:
            self._providers.pop(service, None)

    def describe(self):
        return [
            GaugeMetricFamily(
                CONSUMER_LAG_NAME,
                "Records in a partition not yet consumed and committed",
                labels=["service", "topic", "partition"],
            )
        ]

    def collect(self):
        fam = GaugeMetricFamily(
            CONSUMER_LAG_NAME,
            "Records in a partition not yet consumed and committed",
            labels=["service", "topic", "partition"],
        )
        with self._lock:
            live = set(self._providers)
        for service, topic, part, lag in self._values.get():
            if service in live:
                fam.add_metric([service, topic, str(part)], float(lag))
        yield fam


_LAG = _LagCollector()
REGISTRY.register(_LAG)


def register_lag_provider(service: str, provider: LagProvider) -> None:
    _LAG.register(service, provider)


def unregister_lag_provider(service: str) -> None:
    _LAG.unregister(service)


class LagSnapshot:
    """Per-partition lag computed by the thread that owns the consumer, at most every
    `every_s` (a few cached-watermark reads per partition), read by the scrape. Calling a
    consumer from the scrape thread was seen to hang until the consumer's own thread moved,
    freezing the exported lag; the owning thread never waits on anything here."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: list[LagSample] = []
        self._at = -1e18

    def maybe_update(self, compute: Callable[[], list[LagSample]]) -> None:
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._at = now
            try:
                self.samples = compute()
            except Exception:  # a closing consumer: keep the last samples
                log.debug("lag computation failed", exc_info=True)

    def get(self) -> list[LagSample]:
        return self.samples


def consumer_lag(consumer, positions: Iterable[tuple[str, int, int]]) -> list[LagSample]:
    """Lag of (topic, partition, next offset to consume) against the high watermark the
    consumer's fetches last reported (cached: the embedded broker answers a ListOffsets
    "latest" query wrongly, and a cached read costs no request)."""
    from confluent_kafka import TopicPartition

    out = []
    for topic, part, pos in positions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, part), cached=True)
        if high >= 0:
            out.append((topic, part, max(0, high - max(pos, 0))))
    return out


def loop_lag(
    consumer, partitions: Iterable[tuple[str, int]] | None = None, committed: dict[tuple[str, int], int] | None = None
) -> list[LagSample]:
    """The lag of every consume loop (processors, inference, lake sink, ClickHouse live, pragma
    publisher): records per partition past what the loop has consumed, against the high
    watermark its fetches last reported. Call it from the thread that owns the consumer,
    between batches (when everything delivered is processed).

    The position is the larger of `committed` (what the loop itself made durable, if it keeps
    that) and the client's own position. A transactional input ends in a commit marker that
    occupies an offset but is never delivered: a committed position (last record + 1) stays
    one below the high watermark of an idle partition, while the client's position passes
    markers and never records it has not delivered. A partition with neither (nothing
    committed, nothing fetched yet) counts from 0. `partitions` defaults to the assignment."""
    from confluent_kafka import KafkaException, TopicPartition

    tps = list(partitions) if partitions is not None else [(tp.topic, tp.partition) for tp in consumer.assignment()]
    pos = dict(committed or {})
    if tps:
        try:
            for tp in consumer.position([TopicPartition(t, p) for t, p in tps]):
                key = (tp.topic, tp.partition)
                if tp.offset > pos.get(key, 0):
                    pos[key] = tp.offset
        except KafkaException:  # no position yet (nothing fetched): the committed one stands
            pass
    return consumer_lag(consumer, [(t, p, pos.get((t, p), 0)) for t, p in tps])


class _SealedHourCollector(Collector):
    """The newest sealed hour per lake table, from a catalog the lake sink registers (cached
    for `ttl_s`: a scrape every 15 s must not load every table each time)."""

    def __init__(self, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self._values: Refreshed | None = None
        self._lock = threading.Lock()

    def set_source(self, source: Callable[[], dict[str, float | None]] | None) -> None:
        with self._lock:
            self._values = None if source is None else Refreshed(source, {}, ttl_s=self.ttl_s)

    def describe(self):
        return [
            GaugeMetricFamily(
                SEALED_HOUR_NAME, "Start of the newest sealed hour of a lake table, unix s", labels=["table"]
            )
        ]

    def collect(self):
        fam = GaugeMetricFamily(
            SEALED_HOUR_NAME, "Start of the newest sealed hour of a lake table, unix s", labels=["table"]
        )
        with self._lock:
            refreshed = self._values
        values = refreshed.get() if refreshed is not None else {}
        for table, ts in sorted(values.items()):
            if ts is not None:
                fam.add_metric([table], ts)
        yield fam


_SEALED = _SealedHourCollector()
REGISTRY.register(_SEALED)


def set_sealed_hour_source(source: Callable[[], dict[str, float | None]] | None) -> None:
    _SEALED.set_source(source)


#: Every metric family name the code defines (as scraped: counters with _total), for the
#: dashboard/rule reference test and the local Prometheus check.
def family_names() -> set[str]:
    names = {CONSUMER_LAG_NAME, SEALED_HOUR_NAME}
    for value in globals().values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, (Gauge, Histogram)):
            names.add(value._name)
    return names

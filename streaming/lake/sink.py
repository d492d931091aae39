"""Lake sink: processed.* Kafka topics -> Iceberg tables, exactly once.

Each micro-batch is split by table (topics map 1:1 to tables through the event type).
For every table that received records the sink writes sorted zstd Parquet files, then
makes ONE Iceberg commit whose snapshot summary carries that table's cumulative consumed
offsets, watermark and per-hour ledger (streaming/lake/state.py). On start each table
resumes from its own newest sink snapshot, so a crash anywhere — after writing files but
before committing (the files become orphans for maintenance), or after committing some
tables of a batch but not others — neither loses nor duplicates a row: a committed table
never re-reads its records and an uncommitted one re-reads exactly what it lost.

Offsets live in Iceberg, not in the consumer group (assign() with explicit offsets, never
subscribe): the embedded broker ignores auto.offset.reset=latest and offsets_for_times,
and a group offset committed apart from the data could disagree with it. If a stored
offset is beyond the end of its partition (topic deleted and recreated), that partition
restarts from the beginning and event_id dedup against the lake drops what is already
there. Dedup also absorbs the copies of aborted transactions that the embedded broker
still delivers to read_committed consumers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table

from runtime import kafka_config as kc
from runtime import metrics as obs
from runtime.dlq import DlqCounters, dead_letter, record_source
from runtime.home import CATALOG_NAME, resolve_home
from runtime.metrics import LoopCounters
from runtime.service_cli import LoopSettings, service_main
from runtime.service_loop import ServiceLoop, collect_for_batches
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.iceberg import ensure_all_tables
from schemas.model import Exchange, Market, event_type_from_pb
from schemas.serde import SerdeError, decode
from schemas.tables import TABLES, TableSpec
from schemas.topics import DlqStage, Stage, all_event_topics, parse_event_topic
from streaming.kafka.io import TP, check, release_clients
from streaming.lake.freshness import sealed_hour_timestamps
from streaming.lake.state import HOUR_US, HourCount, SinkState, latest_sink_state
from streaming.lake.watermarks import DEFAULT_ALLOWED_LATENESS_US, WatermarkTracker
from streaming.lake.writer import LakeFileWriter, commit_files, ensure_writer_properties

log = logging.getLogger(__name__)

#: Service name (Dagster run tag value, status and metrics label).
SERVICE_NAME = "lake-sink"

# Metrics are defined once, in runtime/metrics.py.
ROWS, RECORDS, DUPLICATES = obs.LAKE_ROWS, obs.LAKE_RECORDS, obs.LAKE_DUPLICATES
LATE, COMMITS, LAG = obs.LAKE_LATE, obs.LAKE_COMMITS, obs.LAKE_LAG


class SinkFencedError(RuntimeError):
    """Another writer committed sink offsets to a table this sink writes: two sinks run."""


@dataclass(slots=True)
class SinkConfig:
    topics: list[str]
    batch_max_records: int = 50_000
    batch_max_ms: int = 500
    allowed_lateness_us: int = DEFAULT_ALLOWED_LATENESS_US
    #: hours of event_ids kept in memory per table for dedup (older hours reload on touch)
    dedup_hours: int = 3
    target_file_bytes: int | None = None
    group_id: str = "ticklake-lake-sink"
    commit_retries: int = 5


@dataclass(slots=True)
class SinkStats(LoopCounters):
    rows: int = 0
    duplicates: int = 0
    commits: int = 0
    commit_retries: int = 0
    per_table_rows: dict[str, int] = field(default_factory=dict)


def topic_tables(topics: list[str]) -> dict[str, TableSpec]:
    """processed topic -> its table (raises on a topic that is not a processed event topic)."""
    out = {}
    for t in topics:
        et = parse_event_topic(t)
        if et.stage is not Stage.PROCESSED:
            raise ValueError(f"the lake sink reads processed topics only, got {t!r}")
        out[t] = TABLES[et.event_type]
    return out


def processed_topics(exchanges: list[str] | None = None, markets: list[str] | None = None) -> list[str]:
    exs = tuple(Exchange(e) for e in exchanges) if exchanges else tuple(Exchange)
    mks = tuple(Market(m) for m in markets) if markets else tuple(Market)
    return all_event_topics(Stage.PROCESSED, exchanges=exs, markets=mks)


def hour_filter(hour_us: int):
    return And(GreaterThanOrEqual("exchange_ts", hour_us), LessThan("exchange_ts", hour_us + HOUR_US))


class HourDedup:
    """event_ids already in the lake, per hour, for the hours this sink touched recently.

    An hour not in memory is loaded from the table itself on first touch, so dedup is
    exact against everything committed (after a restart, after a topic reset), while
    memory stays bounded to `max_hours` hours."""

    def __init__(self, max_hours: int):
        self.max_hours = max(1, max_hours)
        self.hours: OrderedDict[int, set[str]] = OrderedDict()

    def ids_for(self, table: Table, hour_us: int) -> set[str]:
        ids = self.hours.get(hour_us)
        if ids is None:
            scan = table.scan(row_filter=hour_filter(hour_us), selected_fields=("event_id",))
            ids = set(scan.to_arrow().column("event_id").to_pylist()) if table.current_snapshot() else set()
            self.hours[hour_us] = ids
            while len(self.hours) > self.max_hours:
                self.hours.popitem(last=False)
        else:
            self.hours.move_to_end(hour_us)
        return ids


@dataclass(slots=True)
class TableBatch:
    spec: TableSpec
    envelopes: list[pb.Envelope] = field(default_factory=list)
    offsets: dict[TP, int] = field(default_factory=dict)  # next offset per partition
    records: int = 0


class LakeSink(ServiceLoop):
    """The sink loop (lifecycle: runtime.service_loop.ServiceLoop)."""

    name = "lake-sink"

    def __init__(self, conn: kc.KafkaConnection, catalog: Catalog, config: SinkConfig):
        super().__init__()
        self.conn = conn.with_client_id(f"{conn.client_id}-lake-sink")
        self.catalog = catalog
        self.config = config
        self.topic_table = topic_tables(config.topics)
        self.stats = SinkStats()
        self.dlq = DlqCounters(DlqStage.LAKE.value)
        self.tables: dict[str, Table] = {}
        self.states: dict[str, SinkState] = {}
        self.dedup: dict[str, HourDedup] = {}
        self.writers: dict[str, LakeFileWriter] = {}
        self.tracker = WatermarkTracker(config.allowed_lateness_us)
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.assignment: list[TP] = []
        self.topic_ids: dict[str, str] = {}
        self.dlq_errors: list[str] = []
        self.lag_snapshot = obs.LagSnapshot()

    # -- start / resume ------------------------------------------------------------------

    def start(self) -> dict[TP, int]:
        """Load each table's sink state and assign the consumer at those offsets."""
        tables = ensure_all_tables(self.catalog)
        for spec in {s.name: s for s in self.topic_table.values()}.values():
            table = ensure_writer_properties(tables[spec.name])
            self.tables[spec.name] = table
            state = latest_sink_state(table)
            self.states[spec.name] = state
            self.dedup[spec.name] = HourDedup(self.config.dedup_hours)
            self.writers[spec.name] = LakeFileWriter(table, target_file_bytes=self.config.target_file_bytes)
            self.tracker.seed(spec.name, state.max_event_us)
        cfg = kc.consumer_config(
            self.conn,
            self.config.group_id,
            read_committed=True,
            session_timeout_ms=6000,
            fetch_wait_max_ms=kc.SERVICE_FETCH_WAIT_MAX_MS,
        )
        self.consumer = Consumer(cfg)
        self.assignment = self._existing_partitions()
        stored = {
            tp: self.states[self.topic_table[tp[0]].name].offsets.get(tp[0], {}).get(tp[1]) for tp in self.assignment
        }
        self.topic_ids = self._topic_ids()
        recreated = set()
        for topic, spec in self.topic_table.items():
            old = self.states[spec.name].topic_ids.get(topic)
            if old and self.topic_ids.get(topic) and old != self.topic_ids[topic]:
                recreated.add(topic)
                log.warning(
                    "topic %s was recreated (id %s -> %s): reading it from the beginning; "
                    "event_id dedup drops what the lake has",
                    topic,
                    old,
                    self.topic_ids[topic],
                )
        beyond = self._offsets_beyond_end({tp: o for tp, o in stored.items() if o and tp[0] not in recreated})
        start: dict[TP, int] = {}
        for tp, off in stored.items():
            if off is None or tp in beyond or tp[0] in recreated:
                start[tp] = OFFSET_BEGINNING
            else:
                start[tp] = off
        for tp in beyond:
            log.warning(
                "stored offset %s of %s[%d] is beyond the end of the partition (topic reset?): "
                "reading it from the beginning; event_id dedup drops what the lake has",
                stored[tp],
                *tp,
            )
        self.consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        self.producer = Producer(kc.producer_config(self.conn, linger_ms=5))
        obs.register_lag_provider(SERVICE_NAME, self.lag_snapshot.get)
        obs.set_sealed_hour_source(lambda: sealed_hour_timestamps(self.catalog))
        collect_for_batches()  # as the transactional processors do
        log.info("lake sink started on %d partitions of %d topics", len(self.assignment), len(self.topic_table))
        return start

    def _existing_partitions(self) -> list[TP]:
        md = self.consumer.list_topics(timeout=10)
        tps: list[TP] = []
        missing = []
        for topic in self.topic_table:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                missing.append(topic)
                continue
            tps += [(topic, p) for p in sorted(tmd.partitions)]
        if not tps:
            raise RuntimeError(
                f"none of the {len(self.topic_table)} processed topics exists; "
                "create them first (ticklake up / streaming.kafka.topic_admin)"
            )
        if missing:
            log.warning(
                "%d processed topics do not exist and are not consumed: %s", len(missing), ", ".join(missing[:10])
            )
        return tps

    def _topic_ids(self) -> dict[str, str]:
        """Current Kafka topic ids (empty when the broker does not report them)."""
        topics = sorted({t for t, _ in self.assignment})
        admin = AdminClient(kc.admin_config(self.conn))
        out: dict[str, str] = {}
        try:
            for name, fut in admin.describe_topics(TopicCollection(topics), request_timeout=10).items():
                tid = fut.result().topic_id
                if tid is not None and str(tid) not in ("", "AAAAAAAAAAAAAAAAAAAAAA"):
                    out[name] = str(tid)
        except KafkaException as exc:
            log.warning("cannot read topic ids (%s); topic resets are detected by offsets only", exc)
        return out

    def _offsets_beyond_end(self, stored: dict[TP, int], timeout_s: float = 5.0) -> set[TP]:
        """Partitions whose stored offset lies past their high watermark.

        The embedded broker answers ListOffsets(latest) wrongly and returns no error for a
        fetch past the end, but every fetch response carries the true high watermark: so
        fetch once at the stored offset with a throw-away consumer and compare."""
        if not stored:
            return set()
        cfg = kc.consumer_config(
            self.conn,
            self.config.group_id + "-probe",
            read_committed=True,
            session_timeout_ms=6000,
            fetch_wait_max_ms=10,
        )
        probe = Consumer(cfg)
        try:
            probe.assign([TopicPartition(t, p, o) for (t, p), o in stored.items()])
            highs: dict[TP, int] = {}
            deadline = time.monotonic() + timeout_s
            while len(highs) < len(stored) and time.monotonic() < deadline:
                probe.consume(1000, 0.1)
                for tp in stored:
                    if tp not in highs:
                        _, high = probe.get_watermark_offsets(TopicPartition(*tp), cached=True)
                        if high >= 0:
                            highs[tp] = high
            return {tp for tp, high in highs.items() if stored[tp] > high}
        finally:
            probe.close()

    # -- the loop ------------------------------------------------------------------------

    def poll_batch(self) -> list[Message]:
        out: list[Message] = []
        deadline = time.monotonic() + self.config.batch_max_ms / 1000
        while len(out) < self.config.batch_max_records and not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for m in self.consumer.consume(min(self.config.batch_max_records - len(out), 10_000), min(left, 0.1)):
                m = check(m)
                if m is not None:
                    out.append(m)
        return out

    def split(self, msgs: list[Message]) -> dict[str, TableBatch]:
        """Decode and route each record to its table; refused records go to dlq.lake."""
        # Per record only what every record needs (a record-source string and the event-type
        # enum are built for refused records alone): this loop runs once per lake row.
        batches: dict[str, TableBatch] = {}
        by_topic: dict[str, tuple[TableBatch, int, list[pb.Envelope], dict[TP, int]]] = {}
        for m in msgs:
            topic = m.topic()
            hit = by_topic.get(topic)
            if hit is None:
                spec = self.topic_table[topic]
                tb = batches.get(spec.name)
                if tb is None:
                    tb = batches[spec.name] = TableBatch(spec)
                hit = by_topic[topic] = (tb, spec.event_type.pb, tb.envelopes, tb.offsets)
            tb, want, envelopes, offsets = hit
            # A partition's records arrive in offset order, so the last one seen is the highest.
            offsets[(topic, m.partition())] = m.offset() + 1
            tb.records += 1
            try:
                env = decode(m.value(), m.headers())
            except SerdeError as exc:
                self._dead_letter(f"undecodable: {exc}", m)
                continue
            if env.event_type != want:
                try:
                    et = event_type_from_pb(env.event_type)
                except ValueError as exc:
                    self._dead_letter(f"undecodable: {exc}", m)
                    continue
                self._dead_letter(f"wrong_event_type: {et} record on a {tb.spec.event_type} topic", m)
                continue
            envelopes.append(env)
        return batches

    def _dead_letter(self, reason: str, m: Message) -> None:
        source = record_source(m.topic(), m.partition(), m.offset())
        rec = dead_letter(DlqStage.LAKE, reason, source=source, raw=m.value())
        self.producer.produce(rec.topic, key=rec.key, value=rec.value, headers=rec.headers, on_delivery=self._delivered)
        self.dlq.count(reason)

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.dlq_errors.append(str(err))

    def run_once(self) -> int:
        """One micro-batch: returns the number of table commits made."""
        self.lag_snapshot.maybe_update(self._publish_lag)
        msgs = self.poll_batch()
        if not msgs:
            return 0
        batches = self.split(msgs)
        if self.dlq.total:
            # Dead letters must be durable before the offsets that skip them are.
            remaining = self.producer.flush(30)
            if remaining or self.dlq_errors:
                raise RuntimeError(
                    f"dead letters not delivered ({remaining} pending, errors: "
                    f"{self.dlq_errors[:3]}); not committing past them"
                )
        commits = 0
        for name in sorted(batches):
            if self.commit_table(batches[name]):
                commits += 1
        self.stats.consumed(SERVICE_NAME, [m.topic() for m in msgs])
        return commits

    def _publish_lag(self) -> list[tuple[str, int, int]]:
        """The per-partition lag (self.lag(), the shared definition) for the scrape, and its sum
        per topic in the lake-lag gauge: one computation, refreshed by every round through
        lag_snapshot, idle ones included. The gauge used to be set only after a batch with
        records, at most every 5 s, so a sink that caught up within 5 s of its last update
        kept showing that batch's lag on an idle stack."""
        samples = self.lag()
        lag: dict[str, int] = {}
        for topic, _part, n in samples:
            lag[topic] = lag.get(topic, 0) + n
        for topic, n in lag.items():
            LAG.labels(topic).set(n)
        return samples

    def commit_table(self, tb: TableBatch) -> bool:
        name = tb.spec.name
        table = self.tables[name]
        prev = self.states[name]
        state = prev.copy()
        for (topic, part), off in tb.offsets.items():
            fresh = topic in self.topic_ids and state.topic_ids.get(topic) != self.topic_ids[topic]
            if fresh:  # recreated topic: its old offsets are void
                state.offsets[topic] = {}
                state.topic_ids[topic] = self.topic_ids[topic]
            state.offsets.setdefault(topic, {})[part] = max(off, state.offsets.get(topic, {}).get(part, 0))
        rows = envelopes_to_table(tb.spec.event_type, tb.envelopes) if tb.envelopes else None
        kept, records_per_hour, rows_per_hour, dups = self._dedup(table, name, rows)
        for h, n in records_per_hour.items():
            state.ledger.setdefault(h, HourCount()).records += n
        for h, n in rows_per_hour.items():
            state.ledger.setdefault(h, HourCount()).rows += n
        state.trim_ledger()
        if kept is not None and kept.num_rows:
            ts = kept.column("exchange_ts").cast(pa.int64())
            late = 0
            wm = self.tracker.watermark_us(name)
            if wm is not None:
                late = int(pc.sum(pc.less(ts, wm)).as_py() or 0)
            self.tracker.observe(name, int(pc.max(ts).as_py()))
            if late:
                LATE.labels(name).inc(late)
        state.max_event_us = self.tracker.max_event_us.get(name)
        state.watermark_us = self.tracker.watermark_us(name)
        files = self.writers[name].write(kept) if kept is not None and kept.num_rows else []
        for f in files:
            obs.LAKE_FILES.labels(name).inc()
            obs.LAKE_FILE_SIZE.labels(name).observe(f.file_size_in_bytes)
        table = self._commit_with_retry(table, prev, files, state)
        self.tables[name] = table
        state.snapshot_id = table.current_snapshot().snapshot_id if table.current_snapshot() else None
        self.states[name] = state
        n_rows = kept.num_rows if kept is not None else 0
        if n_rows:
            self._remember(name, kept)
        ROWS.labels(name).inc(n_rows)
        RECORDS.labels(name).inc(tb.records)
        DUPLICATES.labels(name).inc(dups)
        COMMITS.labels(name).inc()
        self.stats.rows += n_rows
        self.stats.duplicates += dups
        self.stats.commits += 1
        self.stats.per_table_rows[name] = self.stats.per_table_rows.get(name, 0) + n_rows
        return True

    def _dedup(self, table: Table, name: str, rows: pa.Table | None):
        """Drop rows whose event_id is in the lake or earlier in the batch; count per hour."""
        if rows is None or rows.num_rows == 0:
            return rows, {}, {}, 0
        ts = rows.column("exchange_ts").cast(pa.int64()).to_numpy()
        hours = ts - np.mod(ts, HOUR_US)
        ids = rows.column("event_id").to_pylist()
        keep = np.ones(len(ids), dtype=bool)
        seen_in_batch: set[str] = set()
        dedup = self.dedup[name]
        records_per_hour: dict[int, int] = {}
        rows_per_hour: dict[int, int] = {}
        hour_list = hours.tolist()
        known = {h: dedup.ids_for(table, h) for h in set(hour_list)}
        for i, (eid, h) in enumerate(zip(ids, hour_list, strict=True)):
            records_per_hour[h] = records_per_hour.get(h, 0) + 1
            if eid in seen_in_batch or eid in known[h]:
                keep[i] = False
                continue
            seen_in_batch.add(eid)
            rows_per_hour[h] = rows_per_hour.get(h, 0) + 1
        dups = int((~keep).sum())
        kept = rows if dups == 0 else rows.filter(pa.array(keep))
        return kept, records_per_hour, rows_per_hour, dups

    def _remember(self, name: str, kept: pa.Table) -> None:
        """Add committed ids to the in-memory hours; an hour not in memory reloads from the
        table (which now holds this commit) on its next touch."""
        ts = kept.column("exchange_ts").cast(pa.int64()).to_numpy()
        hours = (ts - np.mod(ts, HOUR_US)).tolist()
        mem = self.dedup[name].hours
        for eid, h in zip(kept.column("event_id").to_pylist(), hours, strict=True):
            ids = mem.get(h)
            if ids is not None:
                ids.add(eid)

    def _commit_with_retry(self, table: Table, prev: SinkState, files, state: SinkState) -> Table:
        """Commit; on a concurrent commit (a seal, maintenance) refresh and retry, unless the
        concurrent commit was another sink's (then this sink is fenced and must stop)."""
        for attempt in range(self.config.commit_retries + 1):
            try:
                return commit_files(table, files, state.summary())
            except CommitFailedException:
                if attempt == self.config.commit_retries:
                    raise
                table = table.refresh()
                now = latest_sink_state(table)
                if now.snapshot_id != prev.snapshot_id:
                    raise SinkFencedError(
                        f"table {'.'.join(table.name())} got sink snapshot {now.snapshot_id} from another "
                        f"writer (expected {prev.snapshot_id}); only one lake sink may run"
                    ) from None
                log.info("commit to %s raced a concurrent commit; retrying", ".".join(table.name()))
                self.stats.commit_retries += 1
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.consumer is not None

    def lag(self) -> list[tuple[str, int, int]]:
        """Per-partition lag, the shared definition (runtime.metrics.loop_lag; this loop's thread)."""
        consumer = self.consumer
        if consumer is None:
            return []
        return obs.loop_lag(consumer, self.assignment)

    def close(self) -> None:
        obs.unregister_lag_provider(SERVICE_NAME)
        obs.set_sealed_hour_source(None)
        release_clients(self)

    def summary(self) -> str:
        return f"{super().summary()} dlq={dict(self.dlq.counts)}"

    def watermarks_us(self) -> dict[str, int | None]:
        return {name: self.tracker.watermark_us(name) for name in self.tables}


class LakeSinkSettings(LoopSettings):
    """The sink's settings: the Dagster run config (pipelines/services/lake_sink.py) and the
    `python -m streaming.lake.sink` options (runtime/service_cli.py)."""

    exchanges: list[str] = []
    """Limit to these exchanges (empty: all)."""
    markets: list[str] = []
    """Limit to these markets (empty: all)."""
    topics: list[str] = []
    """Exact processed topics (overrides exchanges/markets)."""
    batch_max_records: int = 50_000
    batch_max_ms: int = 500
    allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_US / 1e6


def sink_from_settings(conn: kc.KafkaConnection, catalog: Catalog, settings: LakeSinkSettings) -> LakeSink:
    """The sink a Dagster run and the standalone entry both run."""
    return LakeSink(
        conn,
        catalog,
        SinkConfig(
            topics=settings.topics or processed_topics(settings.exchanges or None, settings.markets or None),
            batch_max_records=settings.batch_max_records,
            batch_max_ms=settings.batch_max_ms,
            allowed_lateness_us=int(settings.allowed_lateness_s * 1e6),
        ),
    )


def _standalone_sink(conn: kc.KafkaConnection, a: argparse.Namespace, settings: LakeSinkSettings) -> LakeSink:
    home = resolve_home(a.home).ensure()
    catalog = load_catalog(
        CATALOG_NAME, type="sql", uri=home.catalog_uri, warehouse=home.warehouse, init_catalog_tables="true"
    )
    return sink_from_settings(conn, catalog, settings)


main = service_main(
    __name__,
    LakeSinkSettings,
    _standalone_sink,
    service=SERVICE_NAME,
    add_arguments=lambda ap: ap.add_argument(
        "--home", help="$TICKLAKE_HOME whose local catalog to write (default: the env/.ticklake)"
    ),
)


if __name__ == "__main__":
    sys.exit(main())

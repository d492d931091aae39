"""Consume -> transform -> produce inside one Kafka transaction per micro-batch.

Each batch's output and the input offsets it consumed are committed together
(`send_offsets_to_transaction`), so after a crash the processor resumes exactly after the
last committed batch. The embedded broker does not hide aborted records from
read_committed consumers, so the processors built on this loop also make their output a
deterministic function of the input (same records, same bytes, same event_id after a
replay) and downstream consumers dedup by event_id: an aborted copy is then
indistinguishable from the committed one.

Crash-only: any transaction error aborts (best effort) and raises; the supervisor starts a
fresh process, whose init_transactions() fences the old producer id. A stop request
(SIGTERM, Dagster run termination) finishes and commits the current batch, then returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from runtime import kafka_config as kc
from runtime.metrics import LoopCounters, count_by_topic
from runtime.service_loop import ServiceLoop, collect_for_batches
from streaming.kafka.io import TP, check, committed_offsets, partitions_for, release_clients
from streaming.processors import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OutRecord:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_ms: int | None = None
    partition: int | None = None


@dataclass(slots=True)
class LoopStats(LoopCounters):
    records_out: int = 0
    last_commit_monotonic: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


class TransactionalLoop(ServiceLoop):
    """Subclasses implement process_batch (and optionally warm_up / finalize_txn); the stop
    request, run() and the signal handlers are runtime.service_loop.ServiceLoop's."""

    name = "processor"
    #: Deliver end-of-partition events to on_partition_eof (the feature processor's exact
    #: caught-up test needs them; the others do without).
    partition_eof = False

    def __init__(
        self,
        conn: kc.KafkaConnection,
        *,
        group_id: str,
        transactional_id: str,
        input_topics: list[str],
        batch_max_records: int = 5000,
        batch_max_ms: int = 200,
        batch_min_ms: int = 0,
        producer_overrides: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.conn = conn
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.input_topics = list(input_topics)
        self.batch_max_records = batch_max_records
        self.batch_max_ms = batch_max_ms
        self.batch_min_ms = min(batch_min_ms, batch_max_ms)
        self.producer_overrides = {"linger_ms": 5, **(producer_overrides or {})}
        self.stats = LoopStats()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.lag_snapshot = metrics.LagSnapshot()
        self.assignment: list[TP] = []
        self.positions: dict[TP, int] = {}

    # -- hooks ---------------------------------------------------------------------------

    def warm_up(self, committed: dict[TP, int | None]) -> None:
        """Rebuild in-memory state before consuming from the committed offsets."""

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        raise NotImplementedError

    def finalize_txn(self, producer: Producer, msgs: list[Message], outs: list[OutRecord]) -> list[TopicPartition]:
        """Last records of the transaction; returns extra offsets to commit with it."""
        return []

    def after_commit(self) -> None:
        """Called once the batch's transaction committed."""

    def wants_txn(self, msgs: list[Message], outs: list[OutRecord]) -> bool:
        return bool(msgs or outs)

    def before_produce(self, msgs: list[Message], outs: list[OutRecord]) -> None:
        """Last touch of the batch's records before they are produced (the normalizer stamps
        a batch-level header on a few of them)."""

    def on_partition_eof(self, tp: TP, offset: int) -> None:
        """The client's fetcher reached the end of `tp` at `offset` (only with partition_eof)."""

    def poll_due(self) -> float | None:
        """A monotonic time by which the next poll returns, records or not (None: the batch
        limits alone): the feature processor's next upstream probe, so a window's close does
        not wait for the end of the batch after its probe became possible."""
        return None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.producer is not None

    def start(self) -> None:
        conn = self.conn.with_client_id(f"{self.conn.client_id}-{self.name}")
        cfg = kc.consumer_config(
            conn,
            self.group_id,
            read_committed=True,
            session_timeout_ms=6000,
            fetch_wait_max_ms=kc.SERVICE_FETCH_WAIT_MAX_MS,
        )
        if self.partition_eof:
            cfg["enable.partition.eof"] = True
        self.consumer = Consumer(cfg)
        self.assignment = partitions_for(self.consumer, self.input_topics)
        self.producer = Producer(
            kc.transactional_producer_config(conn, self.transactional_id, **self.producer_overrides)
        )
        # Fences any previous incarnation and aborts its open transaction.
        self.producer.init_transactions(60)
        committed = committed_offsets(self.consumer, self.assignment)
        self.warm_up(committed)
        self.positions = {tp: off for tp, off in committed.items() if off is not None}
        # A partition the group never committed starts at offset 0, not at the logical
        # "beginning": resolving that is a ListOffsets request, which the embedded broker held
        # for ~4 s after a killed producer's transaction (a restarted normalizer read nothing
        # meanwhile). A log that no longer starts at 0 answers the fetch out of range, and the
        # consumer's auto.offset.reset (earliest) resolves it then.
        self.consumer.assign(
            [
                TopicPartition(t, p, committed[(t, p)] if committed[(t, p)] is not None else 0)
                for t, p in self.assignment
            ]
        )
        self.lag_snapshot = metrics.LagSnapshot()
        metrics.register_lag_provider(self.name, self.lag_snapshot.get)
        collect_for_batches()
        log.info("%s started: %d partitions, committed %s", self.name, len(self.assignment), committed)

    def lag(self) -> list[tuple[str, int, int]]:
        """Records per input partition not yet processed (this loop's thread, between batches):
        the shared definition (runtime.metrics.loop_lag) over the committed positions, which
        passes the commit markers a transactional input ends in (an idle stack showed "lag 9",
        one marker per input partition, with nothing to read)."""
        consumer = self.consumer
        if consumer is None:
            return []
        return metrics.loop_lag(consumer, self.assignment, self.positions)

    def close(self) -> None:
        metrics.unregister_lag_provider(self.name)
        release_clients(self)

    # -- the loop ------------------------------------------------------------------------

    def _poll_batch(self) -> list[Message]:
        """Up to batch_max_records, waiting at most batch_max_ms; returns early once the
        consumer is caught up (a short read after data arrived) and batch_min_ms passed, so
        latency at low load is about one fetch rather than a full batch interval."""
        assert self.consumer is not None
        out: list[Message] = []
        now = time.monotonic()
        deadline = now + self.batch_max_ms / 1000
        due = self.poll_due()
        if due is not None:
            deadline = max(now, min(deadline, due))
        min_until = min(now + self.batch_min_ms / 1000, deadline)
        while len(out) < self.batch_max_records and not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            want = min(self.batch_max_records - len(out), 10_000)
            # consume(n, timeout) blocks until it has n records or the timeout passes: asked
            # for a whole batch while none was there, it waited out its timeout (up to 100 ms)
            # at any rate below batch_max_records per timeout, and each hop's latency carried
            # that wait. So the wait is for the first record only; the rest of the batch is
            # what else is queued, read with short waits until a read comes back short.
            first = not out
            got = self.consumer.consume(1, min(left, 0.1)) if first else self.consumer.consume(want, 0.005)
            for m in got:
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    self.on_partition_eof((m.topic(), m.partition()), m.offset())
                    continue
                m = check(m)
                if m is not None:
                    out.append(m)
            if out and not first and len(got) < want and time.monotonic() >= min_until:
                break
        return out

    def run_once(self) -> bool:
        """One micro-batch; True if a transaction was committed."""
        assert self.producer is not None
        started = time.monotonic()
        self.lag_snapshot.maybe_update(self.lag)
        msgs = self._poll_batch()
        outs = self.process_batch(msgs)
        if not self.wants_txn(msgs, outs):
            return False
        self.before_produce(msgs, outs)
        producer = self.producer
        producer.begin_transaction()
        try:
            for o in outs:
                self._produce(o)
            extra = self.finalize_txn(producer, msgs, outs)
            offsets: dict[TP, int] = {}
            for m in msgs:
                tp = (m.topic(), m.partition())
                offsets[tp] = max(offsets.get(tp, -1), m.offset() + 1)
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()] + list(extra)
            if tps:
                producer.send_offsets_to_transaction(tps, self.consumer.consumer_group_metadata(), 60)
            producer.commit_transaction(60)
        except BaseException:
            try:
                producer.abort_transaction(10)
            except KafkaException:
                pass
            raise
        self.positions.update(offsets)
        self.stats.consumed(self.name, [m.topic() for m in msgs])
        self.stats.records_out += len(outs)
        now = time.monotonic()
        self.stats.last_commit_monotonic = now
        metrics.RECORDS_IN.labels(self.name).inc(len(msgs))
        metrics.RECORDS_OUT.labels(self.name).inc(len(outs))
        metrics.TRANSACTIONS.labels(self.name).inc()
        count_by_topic(metrics.RECORDS_PRODUCED, self.name, [o.topic for o in outs])
        metrics.BATCH_SECONDS.labels(self.name).observe(now - started)
        self.after_commit()
        return True

    def _produce(self, o: OutRecord) -> None:
        kwargs: dict[str, Any] = {"value": o.value, "key": o.key, "headers": o.headers}
        if o.timestamp_ms is not None:
            kwargs["timestamp"] = o.timestamp_ms
        if o.partition is not None:
            kwargs["partition"] = o.partition
        while True:
            try:
                self.producer.produce(o.topic, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

"""Recompute runbook for the feature processor: rebuild a time range of a processor's output
from its own history (docs/lake.md, "Runbook: a broken hour"; named apart from the exchange
emulator's capture replay, collectors/replay.py).

1. Rewind: per input partition, find the first offset whose record timestamp is at or
   after the range start (minus lateness and one window) by binary search over offsets,
   reading record timestamps — the embedded broker has no timestamp index.
2. Recompute: take the newest committed checkpoint at or before those offsets from the
   processor's state topic and re-run the committed batches after it (same records, same
   recorded close frontiers), so the recomputation is the processor's exact history, not an
   approximation; rows of windows in [start, end) go to a side topic.
3. Compare: counts and a checksum (blake2b over sorted event_id + record bytes) of the side
   rows against the live topic's rows of the same windows (live copies deduplicated by
   event_id, as every consumer does).
4. Promote (optional): publish, in one transaction, the rows the live topic is missing and
   the rows whose content differs (header `ticklake-correction: 1`) into the live topic.
   Consumers dedup by event_id, so rows the live topic already has identically are not
   republished; a correction shares its row's event_id and is the last copy, which is the
   one "latest wins" consumers keep. The report lists every promoted event_id.

The normalizer has the same runbook (`recompute_normalizer`): raw offsets found by record
timestamp (collectors' create time, i.e. receipt), its dedup window rebuilt by re-reading
the span before the rewind point (exactly what a restart does), records re-normalized with
the current reference data, and processed rows of the range compared and promoted the
same way (side topic `recompute.<tag>.processed`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from features.records import decode_row, encode_row
from features.spec import WINDOW_US
from runtime import kafka_config as kc
from schemas.model import Exchange, Market
from schemas.serde import decode, encode, envelope_bytes
from schemas.topics import feature_topic
from streaming.kafka.io import (
    TP,
    check,
    log_bounds,
    partitions_for,
    read_all,
    read_range,
)
from streaming.kafka.topic_admin import create_topics
from streaming.kafka.topic_config import TopicConfig
from streaming.processors.feature_processor import (
    Chain,
    Engine,
    closed_through,
    committed_chain,
    feature_records,
    input_topics,
    replay_chain,
    source_key,
    source_of,
    state_topic,
)
from streaming.processors.normalizer import DEFAULT_DEDUP_SPAN, Normalizer

CORRECTION_HEADER = "ticklake-correction"
RECOMPUTE_HEADER = "ticklake-recompute"


def _uncommitted_reader(conn: kc.KafkaConnection, group: str) -> Consumer:
    """Offsets are searched in the raw log: read_uncommitted sees every record and the true
    high watermark (the embedded broker reports 0 to read_committed during a transaction)."""
    return Consumer(kc.consumer_config(conn, group, read_committed=False, fetch_wait_max_ms=10))


def first_record_at(consumer: Consumer, tp: TP, offset: int, high: int, timeout: float = 10.0):
    """(offset, timestamp_ms) of the first record at or after `offset`, None past the last one."""
    if offset >= high:
        return None
    consumer.assign([TopicPartition(tp[0], tp[1], offset)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(1, 0.2):
                m = check(m)
                if m is not None:
                    return m.offset(), m.timestamp()[1]
            if consumer.position([TopicPartition(*tp)])[0].offset >= high:
                return None
        raise TimeoutError(f"no record at or after {tp}@{offset} within {timeout}s")
    finally:
        consumer.unassign()


def offset_for_time(consumer: Consumer, tp: TP, ts_ms: int, bounds: tuple[int, int] | None = None) -> int:
    """Smallest offset o such that every record from o on has timestamp >= ts_ms, assuming
    timestamps are non-decreasing in the partition (event time, up to the lateness the
    caller subtracts beforehand). O(log n) single-record fetches. `bounds`: the partition's
    log_bounds, if the caller has them."""
    lo, hi = bounds if bounds is not None else log_bounds(consumer, tp)
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        rec = first_record_at(consumer, tp, mid, end)
        if rec is None or rec[1] >= ts_ms:
            hi = mid
        else:
            lo = rec[0] + 1
    return lo


@dataclass
class RecomputeReport:
    processor: str
    start_us: int
    end_us: int
    side_topic: str
    input_offsets: dict[str, int]
    from_checkpoint: bool
    batches_replayed: int
    complete: bool  # the processor's committed history covers the whole range
    recomputed: int = 0
    live: int = 0
    live_copies: int = 0
    recomputed_checksum: str = ""
    live_checksum: str = ""
    missing_in_live: list[str] = field(default_factory=list)
    extra_in_live: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.recomputed_checksum == self.live_checksum and self.recomputed == self.live

    def as_dict(self) -> dict:
        return {**asdict(self), "equal": self.equal}


def checksum(rows: dict[str, bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for eid in sorted(rows):
        h.update(eid.encode())
        h.update(b"\x1f")
        h.update(rows[eid])
        h.update(b"\x1e")
    return h.hexdigest()


def _live_rows(
    conn: kc.KafkaConnection, topics: list[str], start_us: int, end_us: int, group: str, margin_us: int
) -> tuple[dict[str, set[bytes]], int]:
    """Live rows of windows in [start, end). The processor publishes a batch's rows window by
    window, so row timestamps in a partition never go back; rows written before it did (one
    batch's rows instrument by instrument) are ordered only up to the windows one batch
    closed: the search starts `margin_us` early and rows are filtered by window."""
    reader = _uncommitted_reader(conn, group)
    try:
        tps = partitions_for(reader, topics)
        start = {tp: offset_for_time(reader, tp, (start_us - margin_us) // 1000) for tp in tps}
        msgs = read_all(reader, tps, start=start)
    finally:
        reader.close()
    rows: dict[str, set[bytes]] = {}
    n = 0
    for m in msgs:
        r = decode_row(m.value())
        if start_us <= r["exchange_ts"] < end_us:
            rows.setdefault(r["event_id"], set()).add(m.value())
            n += 1
    return rows, n


def recompute_features(
    conn: kc.KafkaConnection,
    pairs: list[tuple[Market, Exchange]],
    start_us: int,
    end_us: int,
    *,
    processor_name: str = "default",
    promote: bool = False,
    tag: str | None = None,
    side_partitions: int | None = None,
    rewind_margin_us: int = 5 * WINDOW_US,
) -> RecomputeReport:
    """`rewind_margin_us` (> allowed lateness + one window) is how far before `start` the
    input is rewound; the checkpoint used is the newest at or before that point whose
    windows from `start` on were still open."""
    if end_us <= start_us:
        raise ValueError("end must be after start")
    tag = tag or time.strftime("%Y%m%dT%H%M%S")
    group = f"ticklake-features-{processor_name}"
    st_topic = state_topic(processor_name)
    search = _uncommitted_reader(conn, f"{group}-recompute-search")
    committed_reader = Consumer(kc.consumer_config(conn, group, read_committed=True, fetch_wait_max_ms=10))
    try:
        tps = partitions_for(search, input_topics(pairs))
        engine = Engine()
        rewind_ms = (start_us - rewind_margin_us) // 1000
        bounds = {tp: log_bounds(search, tp) for tp in tps}
        offsets = {tp: offset_for_time(search, tp, rewind_ms, bounds[tp]) for tp in tps}
        # The sources whose windows the range needs closed: those with input from the rewind
        # point on (each source has its own close frontier; one with nothing there has no row).
        sources = sorted({source_of(tp) for tp in tps if offsets[tp] < bounds[tp][1]})
        st = committed_reader.committed([TopicPartition(st_topic, 0)], timeout=10)[0].offset
        if st is None or st < 0:
            raise RuntimeError(f"processor {processor_name!r} has no committed state in {st_topic}")
        chain = committed_chain(
            committed_reader, st_topic, st, before=offsets, frontier_at_most=start_us, frontier_sources=sources
        )
        for i, rec in enumerate(chain.batches):  # stop at the batch that closed the range's last window
            if sources and closed_through(rec["frontier"], end_us, sources):
                chain = Chain(chain.checkpoint, chain.batches[: i + 1])
                break
        rows: dict[str, bytes] = {}
        batches = 0

        # The replay runs the processor's whole history (every source it reads); only the rows
        # of `pairs` are compared with their live topics (and promoted into them).
        wanted = {source_key(m, x) for m, x in pairs}

        def collect(out_rows, _dead) -> None:
            nonlocal batches
            batches += 1
            for r in out_rows:
                if start_us <= r["exchange_ts"] < end_us and source_key(r["market"], r["exchange"]) in wanted:
                    rows[r["event_id"]] = encode_row(r)

        def done(e: Engine) -> bool:
            """Every source with input in the range has closed its windows up to the end."""
            return bool(sources) and e.closed_through(end_us, sources)

        replay_chain(engine, chain, committed_reader, emit=collect, stop_after=done)
    finally:
        search.close()
        committed_reader.close()

    live_topics = sorted({feature_topic(m, x) for m, x in pairs})
    side = f"recompute.{tag}.features.{processor_name}"
    cfg = TopicConfig.local(side_partitions or 3)
    create_topics(AdminClient(kc.admin_config(conn)), {side: cfg.feature}, replication_factor=1)
    recs = feature_records([decode_row(v) for v in rows.values()])
    _publish(
        conn,
        f"ticklake-recompute-{processor_name}-{tag}",
        side,
        [(r.key, r.value, r.headers + [(RECOMPUTE_HEADER, tag.encode())], r.timestamp_ms) for r in recs],
    )

    live, copies = _live_rows(conn, live_topics, start_us, end_us, f"{group}-recompute-live", rewind_margin_us)
    report = RecomputeReport(
        processor=processor_name,
        start_us=start_us,
        end_us=end_us,
        side_topic=side,
        input_offsets={f"{t}[{p}]": o for (t, p), o in offsets.items()},
        from_checkpoint=chain.checkpoint is not None,
        batches_replayed=batches,
        complete=done(engine),
        recomputed=len(rows),
        live=len(live),
        live_copies=copies,
        recomputed_checksum=checksum(rows),
        live_checksum=checksum({k: min(v) for k, v in live.items()}),
        missing_in_live=sorted(set(rows) - set(live)),
        extra_in_live=sorted(set(live) - set(rows)),
        differing=sorted(k for k in set(rows) & set(live) if live[k] != {rows[k]}),
    )
    if promote and (report.missing_in_live or report.differing):
        if not report.complete:
            raise RuntimeError(
                "refusing to promote an incomplete recomputation: the processor has not "
                "committed windows up to the end of the range yet"
            )
        by_id = {decode_row(v)["event_id"]: decode_row(v) for v in rows.values()}
        items = []
        for eid in report.missing_in_live + report.differing:
            rec = feature_records([by_id[eid]])[0]
            hdrs = rec.headers + [(RECOMPUTE_HEADER, tag.encode())]
            if eid in report.differing:
                hdrs.append((CORRECTION_HEADER, b"1"))
            items.append((rec.topic, rec.key, rec.value, hdrs, rec.timestamp_ms))
        _publish_many(conn, f"ticklake-promote-{processor_name}-{tag}", items)
        report.promoted = report.missing_in_live + report.differing
    return report


def _publish(conn, txid, topic, items) -> None:
    _publish_many(conn, txid, [(topic, k, v, h, ts) for k, v, h, ts in items])


def _publish_many(conn, txid, items) -> None:
    """All or nothing: one transaction."""
    p = Producer(kc.transactional_producer_config(conn, txid, linger_ms=5))
    p.init_transactions(60)
    p.begin_transaction()
    try:
        for topic, key, value, headers, ts in items:
            while True:
                try:
                    p.produce(topic, value=value, key=key, headers=headers, timestamp=ts or 0)
                    break
                except BufferError:
                    p.poll(0.05)
        p.commit_transaction(60)
    except BaseException:
        p.abort_transaction(10)
        raise


def _compare(report: RecomputeReport, rows: dict[str, bytes], live: dict[str, set[bytes]]) -> RecomputeReport:
    report.recomputed, report.live = len(rows), len(live)
    report.recomputed_checksum = checksum(rows)
    report.live_checksum = checksum({k: min(v) for k, v in live.items()})
    report.missing_in_live = sorted(set(rows) - set(live))
    report.extra_in_live = sorted(set(live) - set(rows))
    report.differing = sorted(k for k in set(rows) & set(live) if live[k] != {rows[k]})
    return report


def recompute_normalizer(
    conn: kc.KafkaConnection,
    catalog,
    raw_topics: list[str],
    start_us: int,
    end_us: int,
    *,
    promote: bool = False,
    tag: str | None = None,
    margin_us: int = 60 * WINDOW_US,
    dedup_span: int | None = None,
) -> RecomputeReport:
    """Re-normalize the raw records around [start, end) and compare the processed rows of
    that exchange-time range with the live processed topics."""
    dedup_span = dedup_span or DEFAULT_DEDUP_SPAN
    if end_us <= start_us:
        raise ValueError("end must be after start")
    tag = tag or time.strftime("%Y%m%dT%H%M%S")
    norm = Normalizer(catalog, dedup_span=dedup_span)
    search = _uncommitted_reader(conn, "ticklake-normalizer-recompute-search")
    reader = Consumer(
        kc.consumer_config(conn, "ticklake-normalizer-recompute", read_committed=True, fetch_wait_max_ms=10)
    )
    rows: dict[str, bytes] = {}
    topic_of: dict[str, str] = {}
    offsets: dict[TP, int] = {}
    replayed = 0
    stop_ms = (end_us + margin_us) // 1000
    try:
        tps = partitions_for(search, raw_topics)
        for tp in tps:
            low, high = log_bounds(search, tp)
            rewind = offsets[tp] = offset_for_time(search, tp, (start_us - margin_us) // 1000, (low, high))
            for m in read_range(reader, tp, max(low, rewind - dedup_span), rewind):
                norm.process(m.topic(), m.partition(), m.offset(), m.value(), m.headers())
            for m in read_range(reader, tp, rewind, high):
                if m.timestamp()[1] > stop_ms:
                    break
                replayed += 1
                o = norm.process(m.topic(), m.partition(), m.offset(), m.value(), m.headers())
                if o.kind == "ok" and start_us <= o.env.exchange_ts < end_us:
                    rows[o.env.event_id] = encode(o.env).value
                    topic_of[o.env.event_id] = o.topic
        processed = sorted({t.replace("raw.", "processed.", 1) for t in raw_topics})
        live_tps = partitions_for(search, processed)
        live_start = {tp: offset_for_time(search, tp, (start_us - margin_us) // 1000) for tp in live_tps}
        live: dict[str, set[bytes]] = {}
        copies = 0
        for m in read_all(search, live_tps, start=live_start):
            env = decode(m.value(), m.headers())
            if start_us <= env.exchange_ts < end_us:
                # as this writer states the body's schema version (Envelope.schema_version): a
                # record written before that field is not "differing" for its absence
                live.setdefault(env.event_id, set()).add(envelope_bytes(env))
                copies += 1
    finally:
        search.close()
        reader.close()

    side = f"recompute.{tag}.processed"
    create_topics(AdminClient(kc.admin_config(conn)), {side: TopicConfig.local(3).processed}, replication_factor=1)
    items = []
    for value in rows.values():
        env = decode(value)
        rec = encode(env)
        items.append(
            (side, rec.key, rec.value, rec.headers + [(RECOMPUTE_HEADER, tag.encode())], env.exchange_ts // 1000)
        )
    _publish_many(conn, f"ticklake-recompute-normalizer-{tag}", items)
    report = _compare(
        RecomputeReport(
            processor="normalizer",
            start_us=start_us,
            end_us=end_us,
            side_topic=side,
            input_offsets={f"{t}[{p}]": o for (t, p), o in offsets.items()},
            from_checkpoint=False,
            batches_replayed=replayed,
            complete=True,
            live_copies=copies,
        ),
        rows,
        live,
    )
    if promote and (report.missing_in_live or report.differing):
        out = []
        for eid in report.missing_in_live + report.differing:
            env = decode(rows[eid])
            rec = encode(env)
            hdrs = rec.headers + [(RECOMPUTE_HEADER, tag.encode())]
            if eid in report.differing:
                hdrs.append((CORRECTION_HEADER, b"1"))
            out.append((topic_of[eid], rec.key, rec.value, hdrs, env.exchange_ts // 1000))
        _publish_many(conn, f"ticklake-promote-normalizer-{tag}", out)
        report.promoted = report.missing_in_live + report.differing
    return report

"""The upstream clearance's proposals stamped with the raw records' time, on a real broker.

The normalizer puts RAW_BEFORE_HEADER (a time after the CreateTime of every raw record it had
consumed) on the last record of each output partition of a batch; the feature processor stamps
a close-frontier proposal with the newest such time when the last record it took from every
partition carries one, else with its own clock (when its poll returned). A proposal may skip
the idle partitions once the normalizer's group has consumed every raw record created before
its stamp (streaming/kafka/upstream.py). docs/decisions.md, "Clearance proposals stamped with
the raw records' time"."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from features.records import decode_row
from schemas.model import EventType, Exchange, Market, event_type_from_pb
from schemas.serde import encode
from schemas.topics import dlq_topic, event_topic, feature_topic
from streaming.kafka.upstream import RAW_BEFORE_HEADER, parse_raw_before, raw_before_value
from streaming.processors.feature_processor import FeatureProcessor
from streaming.processors.normalizer import Normalizer, NormalizerService, input_topics_for
from tests.support import processing as ps
from tests.support.envelopes import BASE_TS, envelope
from workloads.kafka import connection, produce, produce_raw
from workloads.synthetic import SyntheticMarket, synthetic_catalog

PAIR = [(Market.SPOT, Exchange.BINANCE)]
SPOT = {"market": Market.SPOT, "symbol": "BTC-USDT", "native": "BTCUSDT"}


def test_every_processed_partition_ends_each_batch_with_the_raw_bound(broker):
    """Through the normalizer service: each processed partition's records carry the header on
    the last record of each batch (so on the partition's last record), its time is after the
    CreateTime of every raw record behind it, and it never decreases along a partition."""
    envs = SyntheticMarket(seed=3).events(3000, 1000)
    produce_raw(broker.bootstrap, envs[:1500])
    conn = connection(broker.bootstrap)
    svc = NormalizerService(conn, Normalizer(synthetic_catalog()), input_topics_for(["binance"], ["spot"]))
    svc.batch_max_records = 400  # several batches
    svc.run(idle_exit_s=1.5)
    produce_raw(broker.bootstrap, envs[1500:])  # a second run: the bound keeps rising
    svc = NormalizerService(conn, Normalizer(synthetic_catalog()), input_topics_for(["binance"], ["spot"]))
    svc.batch_max_records = 400
    svc.run(idle_exit_s=1.5)

    created = {_header(m, "event-id"): m.timestamp()[1] for m in _raw_msgs(broker)}
    by_tp = defaultdict(list)
    for m in ps.read_topics(broker.bootstrap, ps.processed_feature_topics()):
        by_tp[(m.topic(), m.partition())].append(m)
    assert len(by_tp) >= 3
    stamped = checked = 0
    for tp, msgs in by_tp.items():
        msgs.sort(key=lambda m: m.offset())
        bounds = [parse_raw_before(m.headers()) for m in msgs]
        assert bounds[-1] is not None, f"{tp}: the last record has no {RAW_BEFORE_HEADER}"
        times = [b[1] for b in bounds if b is not None]
        assert times == sorted(times)
        assert {b[0] for b in bounds if b is not None} == {"ticklake-normalizer"}
        stamped += len(times)
        # every record is followed (or carried) in its partition by a bound after its raw CreateTime
        bound_after = None
        for m, b in zip(reversed(msgs), reversed(bounds), strict=True):
            if b is not None:
                bound_after = b[1]
            raw_ms = created.get(_header(m, "event-id"))
            if raw_ms is not None:
                assert bound_after * 1000 >= raw_ms
                checked += 1
    total = sum(len(v) for v in by_tp.values())
    assert checked > total / 2
    assert stamped < total / 10  # a few per batch, not one per record


def _header(m, name: str) -> str | None:
    for k, v in m.headers() or ():
        if k == name:
            return v.decode()
    return None


def _raw_msgs(broker):
    topics = [event_topic("raw", "spot", et, "binance") for et in (EventType.TRADE, EventType.BOOK_DELTA)]
    return ps.read_topics(broker.bootstrap, topics, group="raw-topics")


def _processed(envs, before_s: float | None, unstamped_topic: str | None = None):
    items = []
    for e in envs:
        r = encode(e)
        topic = event_topic("processed", "spot", event_type_from_pb(e.event_type), "binance")
        headers = list(r.headers)
        if before_s is not None and topic != unstamped_topic:
            headers.append((RAW_BEFORE_HEADER, raw_before_value("ticklake-normalizer", before_s)))
        items.append((topic, r.key, r.value, headers))
    return items


def _run_with_unread_raw(broker, name: str, before_offset_s: float | None, unstamped_topic: str | None = None):
    """A raw record the normalizer's group has not consumed (created now), then processed input
    whose trades run 8 s of event time ahead of the deltas (the idle-partition case of
    test_feature_idleness), stamped `before_offset_s` from now; the rows after 3 s of pumping."""
    raw = event_topic("raw", "spot", EventType.BOOK_DELTA, "binance")
    produce(broker.bootstrap, [(raw, b"BTCUSDT", b"not yet normalized", None)])
    envs = [envelope(EventType.BOOK_SNAPSHOT, 0, **SPOT)]
    envs += [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40)]
    envs += [envelope(EventType.TRADE, 250 * k + 227, **SPOT) for k in range(16)]
    envs += [envelope(EventType.TRADE, 12_000 + k, **SPOT) for k in range(3)]
    before = None if before_offset_s is None else time.time() + before_offset_s
    produce(broker.bootstrap, _processed(envs, before, unstamped_topic))
    fp = FeatureProcessor(
        connection(broker.bootstrap), PAIR, processor_name=name, idle_timeout_ms=1000, batch_max_ms=100
    )
    fp.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            fp.run_once()
    finally:
        fp.close()
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    return ps.read_topics(broker.bootstrap, [feature_topic("spot", "binance")])


def test_a_stamp_before_the_unread_raw_record_lets_the_idle_partitions_be_skipped(broker):
    """Input stamped 10 s before the raw record still unread: everything behind it was
    consumed upstream, so whatever still reaches the quiet partitions comes from raw records
    created later: the windows close without waiting for the normalizer (with wall-clock
    stamps they wait: test_feature_idleness's far-behind test and test_no_stamp_holds_as_before)."""
    rows = [decode_row(m.value()) for m in _run_with_unread_raw(broker, "stamped", -10.0)]
    # every partition quiet: the end of input, cleared upstream, closes what is buffered
    assert sorted(r["exchange_ts"] - BASE_TS for r in rows) == [s * 1_000_000 for s in (0, 1, 2, 3, 12)]


def test_a_stamp_after_the_unread_raw_record_keeps_them_held(broker):
    """Stamped after the raw record the normalizer has not consumed: nothing closes."""
    assert not _run_with_unread_raw(broker, "stamped-late", +1.0)


def test_a_partition_whose_last_record_is_unstamped_falls_back_to_the_wall_clock(broker):
    """One partition's records lack the header (an older normalizer, a batch cut by the
    processor's record cap): the processor's own clock stamps the proposal, after the unread
    raw record, so nothing closes."""
    trades = event_topic("processed", "spot", EventType.TRADE, "binance")
    assert not _run_with_unread_raw(broker, "half-stamped", -10.0, unstamped_topic=trades)


def test_no_stamp_holds_as_before(broker):
    assert not _run_with_unread_raw(broker, "unstamped", None)


def test_every_pair_of_every_batch_is_stamped_a_new_one_too():
    """A (topic, key) pair first written in a batch where the known pairs' records come after
    it (a symbol's first book snapshot) gets its bound in that batch: the earlier early exit
    on the pairs seen before stamped it only at the next full pass (every 64th batch), and
    the feature processor fell back to its own clock meanwhile."""
    from streaming.processors.txn_loop import OutRecord

    svc = NormalizerService(connection("127.0.0.1:1"), Normalizer(synthetic_catalog()), [])
    trade, delta, snap = (
        event_topic("processed", "spot", et, "binance")
        for et in (EventType.TRADE, EventType.BOOK_DELTA, EventType.BOOK_SNAPSHOT)
    )
    pairs = [(trade, b"A"), (delta, b"A"), (trade, b"B")]
    svc._mark_raw_before([OutRecord(t, b"v", k) for t, k in pairs * 3], 1000.0)  # the first batch
    batch = [OutRecord(snap, b"v", b"A"), *(OutRecord(t, b"v", k) for t, k in pairs * 3)]
    svc._mark_raw_before(batch, 1001.0)
    stamped = [(r.topic, r.key) for r in batch if parse_raw_before(r.headers) is not None]
    assert sorted(stamped) == sorted([(snap, b"A"), *pairs])
    assert all(parse_raw_before(r.headers) == ("ticklake-normalizer", 1001.0) for r in batch if r.headers)


def test_a_probe_waits_for_a_proposal_that_would_close_a_window():
    """The gate probes only once a proposal whose clearance would close a buffered window is
    older than the append margin; a pending proposal that closes nothing (the previous
    window's) does not trigger one."""
    from streaming.processors.feature_processor import probe_could_close

    w = 1_000_000
    buffered = [5 * w, 6 * w]  # windows [5 s, 6 s) and [6 s, 7 s) open
    held = 5 * w + 100
    stale, useful, later = (10.0, 5 * w + 500), (10.4, 6 * w + 50), (10.5, 7 * w + 1)
    assert probe_could_close([stale], held, 7 * w, buffered) == float("inf")
    assert probe_could_close([stale, useful, later], held, 7 * w, buffered) == 10.4
    assert probe_could_close([stale, useful], held, 6 * w - 1, buffered) == float("inf")  # capped below the end
    assert probe_could_close([stale, useful], held, 7 * w, []) == float("inf")
    assert probe_could_close([stale, later], 6 * w, 8 * w, buffered) == 10.5  # [5,6) closed already


def test_the_background_probe_answers_once_what_the_synchronous_one_finds(broker):
    """BackgroundClearance (the feature processor's probe, on its own thread) on a real broker:
    the same clearance and the same "nothing after" answer as the probe asked in the caller's
    thread, handed over once; a committed record at the start offset makes it not clear; an
    error other than the broker's reaches the caller."""
    from streaming.kafka.upstream import BackgroundClearance, UpstreamClearance
    from streaming.processors.feature_processor import NORMALIZER_GROUP

    raw = event_topic("raw", "spot", EventType.TRADE, "binance")
    processed = event_topic("processed", "spot", EventType.TRADE, "binance")
    conn = connection(broker.bootstrap)
    produce(broker.bootstrap, [(processed, b"BTC-USDT", encode(envelope(EventType.TRADE, 5, **SPOT)).value, None)])
    [m] = ps.read_topics(broker.bootstrap, [processed], group="test-bg-probe")
    tp = (m.topic(), m.partition())
    upstream = UpstreamClearance(conn, NORMALIZER_GROUP, [raw])
    probe = BackgroundClearance(upstream)
    try:
        assert probe.answer() is None  # nothing asked yet
        before = time.time()
        for starts, clear in (({tp: m.offset() + 1}, True), ({tp: m.offset()}, False)):
            probe.ask(starts)
            with pytest.raises(RuntimeError, match="already running"):
                probe.ask(starts)
            deadline = time.monotonic() + 30
            while probe.busy and time.monotonic() < deadline:
                time.sleep(0.005)
            got = probe.answer()
            assert got is not None and got.starts == starts
            assert got.clear is clear and clear is upstream.nothing_after(starts)
            # nothing raw: clear up to the probe's start less the append margin
            assert got.until is not None and before - 1 < got.until < time.time()
            assert probe.answer() is None  # handed over once

        class Broken(UpstreamClearance):
            def cleared_until(self):
                raise ValueError("a bug in the probe")

        broken = BackgroundClearance(Broken(conn, NORMALIZER_GROUP, [raw]))
        broken.ask({tp: 0})
        broken._thread.join(30)
        with pytest.raises(ValueError, match="a bug in the probe"):
            broken.answer()
        broken.close()
    finally:
        probe.close()

"""When an input partition of the feature processor counts as idle, on a real broker.

The close frontier skips idle partitions; declaring one idle too early makes its next
records late (dead-lettered, their window missing or short), and the hour's parity check
(streaming vs batch features) fails. These tests pin the two ways that happened in the
acceptance test (tests/test_platform_acceptance.py) at replay speed max."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from features.compute import compute_features
from features.inputs import events_from_envelopes
from features.records import decode_row, rows_to_table
from runtime import kafka_config as kc
from schemas.model import EventType, Exchange, Market, event_type_from_pb
from schemas.serde import encode
from schemas.topics import dlq_topic, event_topic, feature_topic
from streaming.processors.feature_processor import FeatureProcessor, live_partitions
from tests.support import processing as ps
from tests.support.envelopes import BASE_TS, envelope
from workloads.kafka import connection, produce
from workloads.synthetic import SyntheticMarket

PAIR = [(Market.SPOT, Exchange.BINANCE)]
SORT = [("symbol", "ascending"), ("exchange_ts", "ascending")]
SPOT = {"market": Market.SPOT, "symbol": "BTC-USDT", "native": "BTCUSDT"}


def _topic(env) -> str:
    return event_topic("processed", "spot", event_type_from_pb(env.event_type), "binance")


def _produce(bootstrap: str, envs) -> None:
    records = [(_topic(e), encode(e)) for e in envs]
    produce(bootstrap, [(t, r.key, r.value, r.headers) for t, r in records])


def _streamed(bootstrap: str):
    rows = [decode_row(m.value()) for m in ps.read_topics(bootstrap, [feature_topic("spot", "binance")])]
    return rows_to_table(rows).sort_by(SORT)


def _batch(envs):
    return compute_features(events_from_envelopes(envs))[0].sort_by(SORT)


def _pump(fp: FeatureProcessor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fp.run_once()


def test_quiet_in_wall_time_is_not_idle_until_quiet_in_event_time_too():
    """The rule itself: a partition read to its end and silent for the idle timeout is idle
    only once the active partitions are an idle timeout of event time past it."""
    deltas, trades, empty = ("d", 0), ("t", 0), ("e", 0)
    seen = {deltas: 90.0, trades: 100.0, empty: 90.0}
    caught_up = {deltas, trades, empty}
    maxts = {deltas: BASE_TS + 3_932_000, trades: BASE_TS + 5_702_000}
    assert live_partitions([deltas, trades, empty], seen, 100.0, 2.0, caught_up, maxts) == [deltas, trades]
    maxts[trades] = BASE_TS + 5_933_000  # 2.001 s past the deltas: now idle
    assert live_partitions([deltas, trades, empty], seen, 100.0, 2.0, caught_up, maxts) == [trades]
    assert live_partitions([deltas, trades, empty], seen, 103.0, 2.0, caught_up, maxts) == []  # all quiet
    assert live_partitions([deltas, trades], seen, 100.0, 2.0, {trades}, maxts) == [deltas, trades]


def test_a_caught_up_partition_behind_its_source_by_the_lateness_is_idle_at_once():
    """A book-snapshot partition that just took a snapshot holds the frontier at the
    snapshot's watermark. Once the other partitions of its source (same market and exchange)
    are more than the allowed lateness past it, it is idle without the wall-clock wait, if it
    is read to its end; a partition with something to read, or behind another source only,
    keeps holding (another shard may run seconds behind at replay speed max)."""
    from streaming.processors.feature_processor import source_of

    snap = (event_topic("processed", "spot", EventType.BOOK_SNAPSHOT, "binance"), 0)
    deltas = (event_topic("processed", "spot", EventType.BOOK_DELTA, "binance"), 0)
    okx = (event_topic("processed", "spot", EventType.BOOK_DELTA, "okx"), 0)
    okx_snap = (event_topic("processed", "spot", EventType.BOOK_SNAPSHOT, "okx"), 0)
    parts = [snap, deltas, okx, okx_snap]
    seen = dict.fromkeys(parts, 99.9)  # everything arrived 0.1 s ago: nothing quiet in wall time
    maxts = {snap: BASE_TS, deltas: BASE_TS + 500_000, okx: BASE_TS + 900_000, okx_snap: BASE_TS + 400_000}

    def live(caught_up, behind_us=500_000, among=parts):
        return live_partitions(among, seen, 100.0, 2.0, caught_up, maxts, behind_us, source_of)

    assert live(set(parts)) == parts  # each snapshot 0.5 s behind its source: not more than the lateness
    maxts[deltas] += 1
    assert live(set(parts)) == [deltas, okx, okx_snap]
    assert live(set(parts), behind_us=600_000) == parts
    assert live({deltas, okx, okx_snap}) == parts  # something left to read: holds
    maxts[deltas] -= 1
    maxts[okx] = BASE_TS + 2_000_000  # far past binance's snapshot, but another source
    assert live(set(parts)) == [snap, deltas, okx]
    assert live_partitions(parts, seen, 100.0, 2.0, set(parts), maxts) == parts  # without the rule
    empty = (deltas[0], 1)  # never had a record: behind any source that has one
    seen[empty] = 99.9
    assert live({*parts, empty}, among=[*parts, empty]) == [snap, deltas, okx]
    assert live(set(parts), among=[*parts, empty]) == [snap, deltas, okx, empty]  # not read to its end


def test_a_snapshot_partition_does_not_hold_the_frontier_for_the_idle_timeout(broker):
    """The latency p99's driver (docs/decisions.md): after a book snapshot its partition held
    every window ending in the next second for the idle timeout of wall time. With an idle
    timeout far longer than the run, the windows after a snapshot still close once the deltas
    and trades are the allowed lateness past it (nothing upstream), identical to the batch
    features and with nothing late."""
    envs = [envelope(EventType.BOOK_SNAPSHOT, 0, **SPOT)]
    envs += [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(30)]  # to 2.932 s
    envs += [envelope(EventType.TRADE, 250 * k + 227, **SPOT) for k in range(12)]  # to 2.977 s
    envs.append(envelope(EventType.BOOK_SNAPSHOT, 2_950, **SPOT))  # a resync near the end
    fp = FeatureProcessor(
        connection(broker.bootstrap), PAIR, processor_name="snapshot-hold", idle_timeout_ms=600_000, batch_max_ms=100
    )
    fp.start()
    try:
        _produce(broker.bootstrap, envs)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and fp.engine.frontier < BASE_TS + 2_000_000:
            fp.run_once()
    finally:
        fp.close()
    assert fp.engine.frontier >= BASE_TS + 2_000_000  # without the rule: the snapshot's 0 s less the lateness
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    streamed = _streamed(broker.bootstrap)
    assert streamed.column("exchange_ts").cast("int64").to_pylist() == [BASE_TS, BASE_TS + 1_000_000]
    assert streamed.equals(_batch(envs).slice(0, 2))


def test_transactional_input_ends_after_one_idle_timeout_without_a_wall_clock_escape(broker):
    """Input written in transactions ends with a commit marker: an offset that is never
    delivered. The caught-up test reads the client's end-of-partition events (their position
    passes markers), so the end of input closes the last windows after one idle timeout,
    with no silence-based escape that could also skip a partition with records to read."""
    envs = SyntheticMarket(seed=11).events(4000, 1000)  # 4 s of three instruments
    conn = connection(broker.bootstrap)
    p = Producer(kc.transactional_producer_config(conn, "test-upstream-txn"))
    p.init_transactions(30)
    for part in (envs[: len(envs) // 2], envs[len(envs) // 2 :]):
        p.begin_transaction()
        for e in part:
            r = encode(e)
            p.produce(_topic(e), value=r.value, key=r.key, headers=r.headers)
        p.commit_transaction(30)
    fp = FeatureProcessor(conn, PAIR, processor_name="txn-input", idle_timeout_ms=1000)
    fp.run(idle_exit_s=8.0)
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    assert _streamed(broker.bootstrap).equals(_batch(envs))


@pytest.mark.parametrize(("ahead_ms", "behind_to", "windows"), [(5702, 60, 6), (12_000, 125, 13)], ids=["1.77s", "8s"])
def test_a_partition_behind_waits_until_the_normalizer_has_read_its_backlog(broker, ahead_ms, behind_to, windows):
    """The acceptance test's missing window (1.77 s) and a skew beyond the idle timeout (8 s),
    replayed on a real broker. At speed max the normalizer, working through raw.* a chunk at
    a time, wrote BTC-USDT's trade of 23:58:35.702 before the book deltas of 23:58:34 (a
    second without trades). The delta partition, read to its end and behind its source by
    more than the allowed lateness (and, at 8 s, quiet in both clocks), yet its deltas are
    still in raw.*: the frontier may skip it only once the normalizer's group has consumed
    every raw record created before that decision. Declared idle on silence alone, the
    deltas written a moment later were late and that 1 s window was never published."""
    from confluent_kafka import Consumer, TopicPartition

    from streaming.processors.feature_processor import NORMALIZER_GROUP

    raw = event_topic("raw", "spot", EventType.BOOK_DELTA, "binance")
    produce(broker.bootstrap, [(raw, b"BTCUSDT", b"not yet normalized", None)])
    first = [envelope(EventType.BOOK_SNAPSHOT, 0, **SPOT)]
    first += [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40)]
    first += [envelope(EventType.TRADE, 250 * k + 227, **SPOT) for k in range(16)]
    ahead = [envelope(EventType.TRADE, ahead_ms + k, **SPOT) for k in range(3)]
    behind = [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40, behind_to)]
    fp = FeatureProcessor(
        connection(broker.bootstrap), PAIR, processor_name=f"behind-{ahead_ms}", idle_timeout_ms=1000, batch_max_ms=100
    )
    fp.start()
    try:
        _produce(broker.bootstrap, first + ahead)
        _pump(fp, 3.0)  # everything read and quiet, but raw.* still holds a record
        assert not _streamed(broker.bootstrap).num_rows
        _produce(broker.bootstrap, behind)
        normalizer = Consumer(kc.consumer_config(connection(broker.bootstrap), NORMALIZER_GROUP))
        parts = {(t, p) for t, p in fp.upstream.partitions() if t == raw}
        normalizer.commit(
            offsets=[TopicPartition(t, p, 1 if p == _partition_of(broker.bootstrap, raw) else 0) for t, p in parts],
            asynchronous=False,
        )
        normalizer.close()
        _pump(fp, 8.0)
    finally:
        fp.close()
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    streamed = _streamed(broker.bootstrap)
    assert streamed.column("exchange_ts").cast("int64").to_pylist() == [BASE_TS + s * 1_000_000 for s in range(windows)]
    assert streamed.equals(_batch(first + ahead + behind))


def _partition_of(bootstrap: str, topic: str) -> int:
    [m] = ps.read_topics(bootstrap, [topic], group="test-partition-of")
    return m.partition()

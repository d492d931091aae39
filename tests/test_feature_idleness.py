"""When an input partition of the feature processor counts as idle, on a real broker.

The close frontier skips idle partitions; declaring one idle too early makes its next
records late (dead-lettered, their window missing or short), and the hour's parity check
(streaming vs batch features) fails. These tests pin the two ways that happened in the
acceptance test (tests/test_platform_acceptance.py) at replay speed max."""

from __future__ import annotations

import time

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


def test_a_partition_written_behind_another_keeps_its_window_open(broker):
    """The acceptance test's missing window, replayed on a real broker. At speed max the
    normalizer wrote BTC-USDT's trade of 23:58:35.702 before the book deltas of 23:58:34 (a
    second without trades). The delta partition, read to its end and silent for the idle
    timeout, was declared idle; the trade moved the frontier past 23:58:35 and the deltas of
    23:58:34, written a moment later, were late: that 1 s window was never published. The
    deltas are only 1.77 s of event time behind the trade (< the idle timeout): not idle."""
    first = [envelope(EventType.BOOK_SNAPSHOT, 0, **SPOT)]
    first += [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40)]  # to 3.932 s
    first += [envelope(EventType.TRADE, 250 * k + 227, **SPOT) for k in range(16)]  # to 3.977 s
    ahead = [envelope(EventType.TRADE, 5702 + k, **SPOT) for k in range(3)]  # none in second 4
    behind = [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40, 60)]
    fp = FeatureProcessor(
        connection(broker.bootstrap), PAIR, processor_name="behind", idle_timeout_ms=2000, batch_max_ms=100
    )
    fp.start()
    try:
        _produce(broker.bootstrap, first)
        _pump(fp, 3.0)  # read to the end, then quiet
        _produce(broker.bootstrap, ahead)
        _pump(fp, 1.0)  # the trades run ahead; the deltas have been silent for > 2 s
        _produce(broker.bootstrap, behind)
        _pump(fp, 8.0)  # end of input: quiet, upstream clear, fetched since: all closed
    finally:
        fp.close()
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    streamed = _streamed(broker.bootstrap)
    assert streamed.column("exchange_ts").cast("int64").to_pylist() == [BASE_TS + s * 1_000_000 for s in range(6)]
    assert streamed.equals(_batch(first + ahead + behind))


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


def test_a_partition_far_behind_waits_until_the_normalizer_has_read_its_backlog(broker):
    """Skew beyond the idle timeout: the normalizer, working through raw.* a chunk at a time,
    wrote trades 8 s of event time ahead of the deltas. The delta partition is quiet in both
    clocks, yet its deltas are still in raw.*; the frontier may skip it only once the
    normalizer's group has consumed every raw record created before that decision."""
    from confluent_kafka import Consumer, TopicPartition

    from streaming.processors.feature_processor import NORMALIZER_GROUP

    raw = event_topic("raw", "spot", EventType.BOOK_DELTA, "binance")
    produce(broker.bootstrap, [(raw, b"BTCUSDT", b"not yet normalized", None)])
    first = [envelope(EventType.BOOK_SNAPSHOT, 0, **SPOT)]
    first += [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40)]
    first += [envelope(EventType.TRADE, 250 * k + 227, **SPOT) for k in range(16)]
    ahead = [envelope(EventType.TRADE, 12_000 + k, **SPOT) for k in range(3)]
    behind = [envelope(EventType.BOOK_DELTA, 100 * k + 32, **SPOT) for k in range(40, 125)]
    fp = FeatureProcessor(
        connection(broker.bootstrap), PAIR, processor_name="far-behind", idle_timeout_ms=1000, batch_max_ms=100
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
    assert streamed.column("exchange_ts").cast("int64").to_pylist() == [BASE_TS + s * 1_000_000 for s in range(13)]
    assert streamed.equals(_batch(first + ahead + behind))


def _partition_of(bootstrap: str, topic: str) -> int:
    [m] = ps.read_topics(bootstrap, [topic], group="test-partition-of")
    return m.partition()

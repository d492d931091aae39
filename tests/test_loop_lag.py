"""A transactional loop's lag counts records it has not processed, not transaction markers.

Seen on an idle local stack: the feature processor's status line said "lag 9" after an OKX
replay had finished. Its inputs (processed.*) are written in transactions, so each ends in a
commit marker that occupies an offset and is never delivered: the committed position (last
record + 1) stayed one below the high watermark of each of the nine partitions.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from runtime import kafka_config as kc
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from streaming.processors.txn_loop import OutRecord, TransactionalLoop

pytestmark = pytest.mark.broker


class _Copy(TransactionalLoop):
    name = "lag-test-copy"

    def __init__(self, conn, topic: str, out: str):
        super().__init__(
            conn, group_id=f"g-{topic}", transactional_id=f"tx-{topic}", input_topics=[topic], batch_max_records=4
        )
        self.out = out

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        return [OutRecord(self.out, m.value(), m.key()) for m in msgs]


def test_transaction_markers_are_not_lag(kafka_broker):
    topic, out = f"lag-in-{time.time_ns()}", f"lag-out-{time.time_ns()}"
    create_topics(
        admin_client(kafka_broker.bootstrap), {topic: TopicSpec(3, 3_600_000), out: TopicSpec(1, 3_600_000)}, 1
    )
    conn = kc.connection_from_env(bootstrap_servers=kafka_broker.bootstrap)
    p = Producer(kc.transactional_producer_config(conn, f"up-{topic}"))
    p.init_transactions(30)
    for _ in range(2):  # two upstream transactions over partitions 0 and 1 (2 stays empty)
        p.begin_transaction()
        for i in range(5):
            p.produce(topic, value=b"x%d" % i, partition=i % 2)
        p.commit_transaction(30)
    loop = _Copy(conn, topic, out)
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while loop.stats.records_in == 0 and time.monotonic() < deadline:
            loop.run_once()
        assert loop.stats.records_in == 4  # a batch of 4 of the 10 records: real lag remains
        assert sum(n for _, _, n in loop.lag()) >= 6
        while loop.stats.records_in < 10 and time.monotonic() < deadline:
            loop.run_once()
        assert loop.stats.records_in == 10
        loop.run_once()  # a quiet round: the client has fetched past the trailing markers
        probe = Consumer(kc.consumer_config(conn, f"g-{topic}", read_committed=True))
        try:
            committed = {
                tp.partition: tp.offset
                for tp in probe.committed([TopicPartition(topic, i) for i in range(3)], timeout=30)
            }
        finally:
            probe.close()
        high = {i: loop.consumer.get_watermark_offsets(TopicPartition(topic, i), cached=True)[1] for i in (0, 1)}
        # every record processed and committed; the markers keep the high watermark above it
        assert all(committed[i] < high[i] for i in (0, 1)), (committed, high)
        lag = {p: n for _, p, n in loop.lag()}
        assert lag[0] == lag[1] == 0 and sum(lag.values()) == 0, lag
    finally:
        loop.close()


def test_lake_sink_lag_is_one_definition_and_clears_when_idle(tmp_path, ticklake_home):
    """The lake sink reads processed.* topics written in transactions (markers at the end of
    each partition). Its per-partition lag and its lake-lag gauge are now one computation
    (runtime.metrics.loop_lag) refreshed by every round, idle ones included: the gauge used to
    be set only after a batch with records (at most every 5 s), so a sink that caught up kept
    showing the lag of an earlier batch on an idle stack (fails on the previous code)."""
    from prometheus_client import REGISTRY

    from runtime import metrics as m
    from schemas.serde import encode
    from streaming.kafka.broker import EmbeddedBroker
    from streaming.lake.sink import SERVICE_NAME, LakeSink, SinkConfig
    from streaming.lake.state import latest_sink_state
    from tests.support.lake import create_sink_topics, open_home_catalog, sink_topics
    from workloads.kafka import processed_topic
    from workloads.synthetic import SyntheticMarket

    events = SyntheticMarket(seed=11).events(600, spacing_us=1_500_000)
    topics = sink_topics()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:  # the sink reads fixed topic names
        create_sink_topics(b.bootstrap, topics, partitions=2)
        conn = kc.connection_from_env(bootstrap_servers=b.bootstrap)
        p = Producer(kc.transactional_producer_config(conn, "lag-up-lake"))
        p.init_transactions(30)
        for part in (events[:300], events[300:]):  # two upstream transactions, as the normalizer writes
            p.begin_transaction()
            for env in part:
                rec = encode(env)
                p.produce(processed_topic(env), key=rec.key, value=rec.value, headers=rec.headers)
            p.commit_transaction(30)
        sink = LakeSink(
            conn,
            open_home_catalog(ticklake_home),
            SinkConfig(topics=topics, batch_max_records=100, batch_max_ms=200, allowed_lateness_us=5_000_000),
        )
        sink.start()
        try:
            deadline = time.monotonic() + 120
            while sink.stats.records_in < len(events):
                assert time.monotonic() < deadline, f"sink stuck at {sink.stats}"
                sink.run_once()
            # Idle rounds for longer than the 5 s refresh interval: every input is in the lake.
            idle_until = time.monotonic() + 5.5
            while time.monotonic() < idle_until:
                assert sink.run_once() == 0
            lag = sink.lag()
            assert lag and all(n == 0 for _, _, n in lag), lag
            assert sink.lag_snapshot.get() == lag
            catalog = open_home_catalog(ticklake_home)
            for topic in topics:
                gauge = REGISTRY.get_sample_value("ticklake_lake_consumer_lag", {"topic": topic})
                assert gauge in (None, 0.0), (topic, gauge)  # None: the topic got no records
                name = sink.topic_table[topic].name
                stored = latest_sink_state(catalog.load_table(f"market.{name}")).offsets.get(topic, {})
                for part, off in stored.items():
                    _, high = sink.consumer.get_watermark_offsets(TopicPartition(topic, part), cached=True)
                    assert off < high, (topic, part, off, high)  # the markers stay above the stored offsets
            scraped = REGISTRY.get_sample_value(
                m.CONSUMER_LAG_NAME, {"service": SERVICE_NAME, "topic": lag[0][0], "partition": str(lag[0][1])}
            )
            assert scraped == 0.0
        finally:
            sink.close()

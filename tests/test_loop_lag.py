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

"""A transactional loop's poll ends by the time its `poll_due` hook names, records or not.

The feature processor uses it for its next upstream clearance probe: a window's close then
waits for the moment the probe can clear its proposal, not for the end of the batch being
polled then (docs/decisions.md, "Latency rows: where the time beyond the floor goes").
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Message, Producer

from runtime import kafka_config as kc
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from streaming.processors.txn_loop import OutRecord, TransactionalLoop

pytestmark = pytest.mark.broker


class _Due(TransactionalLoop):
    name = "due-test"

    def __init__(self, conn, topic: str):
        super().__init__(
            conn, group_id=f"g-{topic}", transactional_id=f"tx-{topic}", input_topics=[topic], batch_max_ms=3000
        )
        self.due: float | None = None
        self.asked = 0

    def poll_due(self) -> float | None:
        self.asked += 1
        due, self.due = self.due, None
        return due

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        return []


def _started(kafka_broker, prefix: str) -> tuple[_Due, kc.KafkaConnection, str]:
    """A started loop on a new one-partition topic, with the connection and the topic."""
    topic = f"{prefix}-{time.time_ns()}"
    create_topics(admin_client(kafka_broker.bootstrap), {topic: TopicSpec(1, 3_600_000)}, 1)
    conn = kc.connection_from_env(bootstrap_servers=kafka_broker.bootstrap)
    loop = _Due(conn, topic)
    loop.start()
    return loop, conn, topic


def test_the_poll_returns_by_the_due_time_and_the_hook_is_asked_each_poll(kafka_broker):
    loop, conn, topic = _started(kafka_broker, "due-in")
    try:
        loop.due = time.monotonic() + 0.3
        t0 = time.monotonic()
        assert loop._poll_batch() == []
        assert 0.25 <= time.monotonic() - t0 < 1.5  # not batch_max_ms (3 s)
        loop.due = time.monotonic() - 1.0  # already past: returns at once
        t0 = time.monotonic()
        assert loop._poll_batch() == []
        assert time.monotonic() - t0 < 0.5
        p = Producer(kc.producer_config(conn))
        p.produce(topic, value=b"x")
        p.flush(10)
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:  # no due: the batch limits alone
            got = loop._poll_batch()
        assert [m.value() for m in got] == [b"x"]
        assert loop.asked >= 3
    finally:
        loop.close()


class _Calls:
    """The loop's real consumer, noting each consume call's (asked, timeout, returned)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def consume(self, num, timeout):
        got = self.inner.consume(num, timeout)
        self.calls.append((num, timeout, len(got)))
        return got

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_poll_waits_for_the_first_record_only_and_takes_everything_queued(kafka_broker):
    """Asking librdkafka for a whole batch while fewer records were there blocked until the
    call's timeout: every hop of the pipeline waited it out at any rate below a full batch per
    timeout. The wait is now for one record; the batch is still everything queued, read until
    a read comes back short (not cut at the first record)."""
    loop, conn, topic = _started(kafka_broker, "first-in")
    try:
        # Never committed: assigned at offset 0, not the logical beginning (a ListOffsets
        # round, which the embedded broker held for seconds after a killed transaction).
        assert [(tp.partition, tp.offset) for tp in loop.consumer.assignment()] == [(0, 0)]
        p = Producer(kc.producer_config(conn))
        for i in range(300):
            p.produce(topic, value=str(i).encode())
        p.flush(10)
        spy = loop.consumer = _Calls(loop.consumer)
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while len(got) < 300 and time.monotonic() < deadline:
            got += loop._poll_batch()
        assert [m.value() for m in got] == [str(i).encode() for i in range(300)]
        # Each poll that got records asked for one record while it had none, then for the rest.
        asks = [num for num, _, n in spy.calls if n]
        assert asks and asks[0] == 1 and any(num > 1 for num in asks)
        polls = sum(1 for num, _, n in spy.calls if num == 1 and n)
        assert polls <= 10, spy.calls  # batches of what was queued, not record by record (300)
    finally:
        loop.close()

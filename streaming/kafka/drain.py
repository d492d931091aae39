"""Has a consumer read everything? A probe that asks the broker for records, not offsets.

The embedded broker answers ListOffsets(latest) wrongly, and transactional topics carry
commit markers that occupy offsets but are never delivered, so "committed offset ==
end offset" is not a reliable test. Instead a throw-away read_committed consumer fetches
from each partition's consumer position: a partition that delivers a record there is
pending, one that reports end of partition (or delivers nothing within the probe time) is
drained. Used to decide that a finished replay has reached the lake.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, TopicPartition

from runtime import kafka_config as kc

TP = tuple[str, int]


def pending_partitions(conn: kc.KafkaConnection, starts: Mapping[TP, int], *, probe_s: float = 3.0) -> dict[TP, int]:
    """Partitions holding at least one committed record at or after their start offset,
    with the offset of the first such record."""
    if not starts:
        return {}
    cfg = kc.consumer_config(
        conn,
        f"ticklake-drain-probe-{uuid.uuid4().hex[:8]}",
        read_committed=True,
        session_timeout_ms=6000,
        fetch_wait_max_ms=10,
    )
    cfg["enable.partition.eof"] = True
    cfg["enable.auto.commit"] = False
    consumer = Consumer(cfg)
    pending: dict[TP, int] = {}
    settled: set[TP] = set()
    try:
        consumer.assign([TopicPartition(t, p, max(0, o)) for (t, p), o in starts.items()])
        deadline = time.monotonic() + probe_s
        while len(settled) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                tp = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        settled.add(tp)
                    continue
                if tp in starts and msg.offset() >= starts[tp]:
                    pending.setdefault(tp, msg.offset())
                    settled.add(tp)
    finally:
        consumer.close()
    return pending

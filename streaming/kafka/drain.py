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
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from runtime import kafka_config as kc
from streaming.kafka.io import TP


def first_records(
    conn: kc.KafkaConnection,
    group_id: str,
    starts: Mapping[TP, int],
    *,
    probe_s: float,
    poll_s: float = 0.2,
    read_committed: bool = True,
    **consumer_options: Any,
) -> Iterator[tuple[TP, Message | None]]:
    """Each partition's first record at or after its start offset, or None where the
    partition ends there, as they come, until every partition answered or `probe_s` passed
    (a partition silent until then is not yielded). A fresh throw-away consumer per probe (a
    client reports a partition's end once per end offset, so a reused one would stay silent
    about partitions it already saw at their end), assigned absolute offsets (the client
    looks a logical one up with ListOffsets, which can stall here), committing nothing;
    `poll_s` is one consume call's wait. Close the iterator when stopping early."""
    cfg = kc.consumer_config(conn, group_id, read_committed=read_committed, fetch_wait_max_ms=10, **consumer_options)
    cfg["enable.partition.eof"] = True
    cfg["enable.auto.commit"] = False
    consumer = Consumer(cfg)
    settled: set[TP] = set()
    try:
        consumer.assign([TopicPartition(t, p, max(0, o)) for (t, p), o in starts.items()])
        deadline = time.monotonic() + probe_s
        while len(settled) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, poll_s):
                tp = (msg.topic(), msg.partition())
                if tp in settled or tp not in starts:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        settled.add(tp)
                        yield tp, None
                    continue
                if msg.offset() >= starts[tp]:
                    settled.add(tp)
                    yield tp, msg
    finally:
        consumer.close()


def pending_partitions(conn: kc.KafkaConnection, starts: Mapping[TP, int], *, probe_s: float = 3.0) -> dict[TP, int]:
    """Partitions holding at least one committed record at or after their start offset,
    with the offset of the first such record."""
    if not starts:
        return {}
    group = f"ticklake-drain-probe-{uuid.uuid4().hex[:8]}"
    firsts = first_records(conn, group, starts, probe_s=probe_s, session_timeout_ms=6000)
    return {tp: msg.offset() for tp, msg in firsts if msg is not None}

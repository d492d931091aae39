"""Small Kafka reading helpers the processors and the recompute runbook share.

They only use what the embedded broker implements: metadata, fetch from an explicit
offset, committed offsets and the high watermark of a fetch. Anything needing timestamps
(offsets_for_times) is done by reading records (see streaming/processors/recompute.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from runtime import kafka_config as kc

if TYPE_CHECKING:
    from confluent_kafka import Producer

TP = tuple[str, int]


class KafkaClients(Protocol):
    consumer: Consumer | None
    producer: Producer | None


def release_clients(owner: KafkaClients) -> None:
    """Close a stream loop's clients in the order every loop needs: the consumer leaves its
    group first (no record is taken that nobody will process), then the producer delivers
    what it queued (dead letters) within 10 s. Safe after a failed start and when called twice."""
    if owner.consumer is not None:
        owner.consumer.close()
        owner.consumer = None
    if owner.producer is not None:
        owner.producer.flush(10)
        owner.producer = None


def plain_consumer(conn: kc.KafkaConnection, group_id: str, **overrides: Any) -> Consumer:
    """A manual-assignment, read_committed consumer (assign() only, never subscribe)."""
    cfg = kc.consumer_config(
        conn, group_id, read_committed=True, session_timeout_ms=6000, fetch_wait_max_ms=10, **overrides
    )
    return Consumer(cfg)


def partitions_for(consumer: Consumer, topics: Iterable[str], timeout: float = 10.0) -> list[TP]:
    out: list[TP] = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise KafkaException(
                KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} does not exist (create it first)")
            )
        out += [(topic, p) for p in sorted(md.partitions)]
    return out


def committed_offsets(consumer: Consumer, tps: Iterable[TP], timeout: float = 10.0) -> dict[TP, int | None]:
    """Committed position per partition of the consumer's group; None when never committed."""
    res = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout)
    return {(r.topic, r.partition): (r.offset if r.offset >= 0 else None) for r in res}


def watermarks(consumer: Consumer, tp: TP, timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) as the broker answers ListOffsets. Tansu's high is the offset after the first
    record of the partition's last batch, short of the log's end by the rest of that batch:
    log_bounds reads the end itself."""
    return consumer.get_watermark_offsets(TopicPartition(*tp), timeout=timeout)


def log_bounds(consumer: Consumer, tp: TP, timeout: float = 2.0) -> tuple[int, int]:
    """(low, end): ListOffsets' low, and the offset after the partition's last record as a Fetch
    answer's high watermark states it (for a read_committed consumer, the last stable offset):
    the last batch is fetched from the offset ListOffsets gave, and the answer carries the end.
    Takes the consumer's assignment for the probe. ListOffsets' high as the end when no Fetch
    answer comes in `timeout`."""
    low, latest = watermarks(consumer, tp)
    if latest <= max(low, 0):
        return low, latest
    topic, part = tp
    consumer.assign([TopicPartition(topic, part, latest - 1)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.1):
                check(m)
            # Past the assigned offset (a record or a transaction marker read): a Fetch was
            # answered since the assign, so the cached high watermark is that answer's.
            pos = consumer.position([TopicPartition(topic, part)])[0].offset
            if pos >= latest:
                return low, max(consumer.get_watermark_offsets(TopicPartition(topic, part), cached=True)[1], pos)
        return low, latest
    finally:
        consumer.unassign()


def check(msg: Message) -> Message | None:
    """The message, None for a partition EOF event; raise on a real error."""
    err = msg.error()
    if err is None:
        return msg
    if err.code() == KafkaError._PARTITION_EOF:
        return None
    raise KafkaException(err)


def read_range(
    consumer: Consumer, tp: TP, start: int, end: int, *, timeout: float = 30.0, batch: int = 2000
) -> Iterator[Message]:
    """Yield the records of one partition with start <= offset < end (control records, which
    occupy offsets but are never delivered, are skipped by the client)."""
    if end <= start:
        return
    topic, part = tp
    consumer.assign([TopicPartition(topic, part, start)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            msgs = consumer.consume(batch, 0.2)
            progressed = False
            for m in msgs:
                m = check(m)
                if m is None:
                    continue
                progressed = True
                if m.offset() >= end:
                    return
                yield m
                if m.offset() >= end - 1:
                    return
            if progressed:
                deadline = time.monotonic() + timeout
                continue
            pos = consumer.position([TopicPartition(topic, part)])[0].offset
            if pos >= end:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{part}] stalled at {pos}, wanted up to {end}")
    finally:
        consumer.unassign()


def read_all(
    consumer: Consumer,
    tps: Iterable[TP],
    *,
    idle_s: float = 1.0,
    timeout: float = 60.0,
    start: dict[TP, int] | None = None,
) -> list[Message]:
    """Every record currently in `tps` (from `start` or the beginning): reads until each
    partition reached the high watermark seen at the start, or nothing arrives for idle_s.
    (The embedded broker reports a read_committed high watermark of 0 while a transaction
    is open on the partition, so such partitions are read until idle.)"""
    tps = list(tps)
    ends = {tp: log_bounds(consumer, tp)[1] for tp in tps}
    begin = {tp: (start or {}).get(tp, OFFSET_BEGINNING) for tp in tps}
    consumer.assign([TopicPartition(t, p, begin[(t, p)]) for t, p in tps])
    out: list[Message] = []
    pending = {tp for tp in tps if ends[tp] == 0 or ends[tp] > max(0, begin[tp])}
    last = time.monotonic()
    deadline = last + timeout
    try:
        while pending and time.monotonic() < deadline:
            msgs = consumer.consume(2000, 0.2)
            for m in msgs:
                m = check(m)
                if m is None:
                    continue
                out.append(m)
                last = time.monotonic()
            for tp in list(pending):
                pos = consumer.position([TopicPartition(*tp)])[0].offset
                if ends[tp] > 0 and pos >= ends[tp]:
                    pending.discard(tp)
            if not msgs and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.unassign()
    return out

"""Has an upstream consumer group read everything its input held at a given moment?

The feature processor may skip a quiet input partition (idleness) only if no record older
than the ones it has already seen can still arrive there. Its own input cannot tell: the
normalizer upstream works through raw.* in fetch-sized chunks, so at replay speed max it
writes trades seconds of event time ahead of book deltas, and a delta partition can be
read to its end and silent while older deltas are still in raw.*. The exact question is
one stage up: has the normalizer's group consumed (and committed, which in its
transactions also makes the output visible) every raw record created before time T? If
so, whatever still reaches the quiet partition comes from raw records created after T,
i.e. after (in a venue connection's order) every record the processor had seen at T.

The embedded broker answers ListOffsets(latest) wrongly (it reports 1 for a partition of
four records written in one batch), so, like streaming/kafka/drain.py, this asks for records:
a consumer assigned at the group's committed offsets reads the first record of each
partition (or its end-of-partition event) and compares its timestamp (CreateTime: the
collector's produce time) with T. Plain Kafka, no Dagster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from runtime import kafka_config as kc
from streaming.kafka.io import TP


class UpstreamClearance:
    """`cleared(t)`: has `group` consumed every record of `topics` created before `t`?"""

    def __init__(self, conn: kc.KafkaConnection, group: str, topics: Iterable[str], *, probe_s: float = 1.0):
        self.conn = conn
        self.group = group
        self.topics = list(topics)
        self.probe_s = probe_s
        self._group_view: Consumer | None = None

    def _view(self) -> Consumer:
        if self._group_view is None:
            # Never subscribes or commits: only reads the group's committed offsets.
            self._group_view = Consumer(kc.consumer_config(self.conn, self.group))
        return self._group_view

    def partitions(self) -> list[TP]:
        md = self._view().list_topics(timeout=10).topics
        return [(t, p) for t in self.topics if t in md and md[t].error is None for p in sorted(md[t].partitions)]

    def cleared(self, before_wall_s: float) -> bool:
        """True when every record created before `before_wall_s` (unix seconds) has been
        consumed by the group; False if one is pending or the probe did not settle."""
        tps = self.partitions()
        if not tps:
            return True
        committed = self._view().committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        before_ms = int(before_wall_s * 1000)
        return self._probe(
            {(r.topic, r.partition): max(r.offset, 0) for r in committed},
            lambda m: m.timestamp()[1] >= before_ms,
            read_committed=False,
        )

    def nothing_after(self, starts: dict[TP, int]) -> bool:
        """True when none of `starts`' partitions holds a committed record at or after its
        offset (a downstream reader's check that it has seen what the group committed)."""
        return self._probe(starts, lambda m: False, read_committed=True)

    def _probe(self, starts: dict[TP, int], ok: Callable[[Message], bool], *, read_committed: bool) -> bool:
        """Read the first record (or the end) of each partition from its start offset; True
        when every partition ended there or its first record is `ok`. Absolute offsets: the
        client looks a logical one (beginning) up with ListOffsets, which can stall here."""
        if not starts:
            return True
        cfg = kc.consumer_config(
            self.conn,
            f"{self.group}-clearance-{uuid.uuid4().hex[:8]}",
            read_committed=read_committed,
            fetch_wait_max_ms=10,
        )
        cfg["enable.partition.eof"] = True
        # A fresh reader per probe: a client reports a partition's end once per end offset,
        # so a reused one would stay silent about partitions it already saw at their end.
        reader = Consumer(cfg)
        settled: set[TP] = set()
        try:
            reader.assign([TopicPartition(t, p, max(o, 0)) for (t, p), o in starts.items()])
            deadline = time.monotonic() + self.probe_s
            while len(settled) < len(starts) and time.monotonic() < deadline:
                for m in reader.consume(1000, 0.1):
                    tp = (m.topic(), m.partition())
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            settled.add(tp)
                        continue
                    if tp in settled or m.offset() < starts.get(tp, 0):
                        continue
                    if not ok(m):
                        return False
                    settled.add(tp)
        finally:
            reader.close()
        return len(settled) >= len(starts)

    def close(self) -> None:
        if self._group_view is not None:
            self._group_view.close()
            self._group_view = None

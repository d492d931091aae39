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

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from runtime import kafka_config as kc
from streaming.kafka.drain import first_records
from streaming.kafka.io import TP

log = logging.getLogger(__name__)

#: How long a raw record may take from its CreateTime (the collector's produce() call) to
#: the broker's log: the collectors' linger.ms (runtime.kafka_config.PRODUCER_DEFAULTS, 20
#: ms) and one produce round trip, with room. A wall-clock bound, like the clearance's use of
#: CreateTime itself (docs/decisions.md, "Feature processor idleness").
APPEND_MARGIN_S = 0.1
#: How long one probe's consume call waits. consume() returns when this passes or 1000
#: records arrived, so a probe costs at least one of these; end-of-partition events come
#: after the first fetch round.
PROBE_POLL_S = 0.005
#: Header the normalizer puts on the last record of each (output topic, key) of a batch:
#: b"<transactional id>|<ms>", a time before which every raw record it had consumed by then
#: was created (the wall time its batch started, as a running maximum). Each partition's last
#: record of a batch carries it, so a reader whose last record taken from every partition
#: carries one knows a bound on the CreateTime of the raw records behind everything it took
#: (the feature processor stamps its clearance proposals with it; docs/decisions.md,
#: "Clearance proposals stamped with the raw records' time").
RAW_BEFORE_HEADER = "raw-created-before"


def raw_before_value(writer: str, before_s: float) -> bytes:
    return f"{writer}|{int(before_s * 1000)}".encode()


def parse_raw_before(headers: list[tuple[str, bytes]] | None) -> tuple[str, float] | None:
    """(writer, unix seconds) of a RAW_BEFORE_HEADER among `headers`; None without one (or malformed)."""
    for k, v in headers or ():
        if k == RAW_BEFORE_HEADER and v:
            writer, _, ms = v.decode(errors="replace").rpartition("|")
            try:
                return writer, int(ms) / 1000
            except ValueError:
                return None
    return None


class UpstreamClearance:
    """`cleared_until()`: before which time has `group` consumed every record of `topics`?"""

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

    def cleared_until(self) -> float | None:
        """Unix seconds T such that the group has consumed every record created before T;
        None if the probe did not settle. Per partition: the CreateTime of the first record
        at the group's committed offset (every record created before it was consumed), or,
        when the group is at the partition's end, the probe's start less
        APPEND_MARGIN_S (a record created just before the probe may still sit in its
        producer's linger buffer). One probe answers for every T: a caller keeps the
        frontiers it proposed at several times and closes up to the newest one cleared,
        instead of asking about one time and waiting for a later probe."""
        start = time.time()
        tps = self.partitions()
        bound = start - APPEND_MARGIN_S
        if not tps:
            return bound
        committed = self._view().committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        firsts: list[int] = []

        def note(m: Message) -> bool:
            firsts.append(m.timestamp()[1])
            return True

        if not self._probe({(r.topic, r.partition): max(r.offset, 0) for r in committed}, note, read_committed=False):
            return None
        return min([bound, *(ms / 1000 for ms in firsts)])

    def nothing_after(self, starts: dict[TP, int]) -> bool:
        """True when none of `starts`' partitions holds a committed record at or after its
        offset (a downstream reader's check that it has seen what the group committed)."""
        return self._probe(starts, lambda m: False, read_committed=True)

    def _probe(self, starts: dict[TP, int], ok: Callable[[Message], bool], *, read_committed: bool) -> bool:
        """Read the first record (or the end) of each partition from its start offset
        (drain.first_records); True when every partition ended there or its first record is `ok`."""
        if not starts:
            return True
        group = f"{self.group}-clearance-{uuid.uuid4().hex[:8]}"
        settled = 0
        with contextlib.closing(
            first_records(
                self.conn, group, starts, probe_s=self.probe_s, poll_s=PROBE_POLL_S, read_committed=read_committed
            )
        ) as firsts:
            for _tp, m in firsts:
                if m is not None and not ok(m):
                    return False
                settled += 1
        return settled >= len(starts)

    def close(self) -> None:
        if self._group_view is not None:
            self._group_view.close()
            self._group_view = None


@dataclass(frozen=True, slots=True)
class ClearanceAnswer:
    """One probe's findings: `until` (cleared_until's answer; None when it did not settle)
    and whether nothing committed sits at or after `starts` in any of its partitions,
    checked after `until` was found, as the clearance argument needs."""

    until: float | None
    starts: dict[TP, int]
    clear: bool


class BackgroundClearance:
    """UpstreamClearance's probe (cleared_until, then nothing_after) on a worker thread, one
    at a time, so the caller's loop keeps taking records while it runs.

    A probe is two short-lived consumers, 10-30 ms of client set-up and fetch round trips,
    nearly all of it waiting. Asked from the feature processor's loop itself, it stopped that
    loop for as long at every probe, which at a steady input is every window close (a
    book-snapshot partition is idle nearly always): ~8 % of its time on a backlog
    (docs/decisions.md, "The upstream clearance probe off the loop's thread"). The answer
    is about the moment it was found, so it holds whenever the caller takes it: records
    taken since only move the caller's positions past `starts`.

    A KafkaException in the probe is a broker hiccup: logged, answered "not clear", asked
    again later. Any other exception is re-raised by the next answer() (crash-only)."""

    def __init__(self, clearance: UpstreamClearance) -> None:
        self.clearance = clearance
        self._thread: threading.Thread | None = None
        self._answer: ClearanceAnswer | None = None
        self._error: BaseException | None = None
        self.started_at = 0.0
        #: how long the last probe took (the caller's next poll returns about then)
        self.last_took_s = 0.02

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ask(self, starts: dict[TP, int]) -> None:
        """Start a probe of `starts` (partition -> the offset from which a committed record
        would mean "not clear"); the caller checks `busy` first."""
        if self.busy:
            raise RuntimeError("a clearance probe is already running")
        self.started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._probe, args=(dict(starts),), name="upstream-clearance", daemon=True
        )
        self._thread.start()

    def _probe(self, starts: dict[TP, int]) -> None:
        t0 = time.monotonic()
        try:
            until = self.clearance.cleared_until()
            clear = until is not None and self.clearance.nothing_after(starts)
        except KafkaException as exc:
            log.warning("upstream clearance probe failed: %s", exc)
            until, clear = None, False
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by answer()
            self._error = exc
            return
        self.last_took_s = time.monotonic() - t0
        self._answer = ClearanceAnswer(until, starts, clear)

    def answer(self) -> ClearanceAnswer | None:
        """The finished probe's answer, once; None while one runs or none was asked."""
        if self.busy:
            return None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        got, self._answer = self._answer, None
        return got

    def close(self) -> None:
        """Wait for a running probe (its consumers close with it), then close the clearance."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.clearance.close()

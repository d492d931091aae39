"""The lowest offset each partition is being fetched from, for the broker's store.

Tansu 0.6 answers every Fetch by listing all the record batches of the partition in its
object store and keeping those at or past the fetch offset (its dynostore engine). The cost of
a fetch therefore grows with the partition's log: on the local persistent store a list of
thousands of keys went over HTTP for every fetch of a few new records, and the broker used
both cores at 300 records/s after a minute (docs/decisions.md, "Broker: fetch cost grows with
the log"). The broker proxy sees every Fetch before the broker does, so it records here the
offsets each forwarded Fetch asks for until its answer comes back, and the store
(streaming/kafka/broker_store.py) lists a partition's batches from the lowest offset any
Fetch in flight asks for: the batches the broker keeps of that listing are the same.

Safe by construction: a Fetch is registered before it reaches the broker and released only
once its answer is back, so the broker's listing for it happens while the floor is at most
its offset. The broker lists a partition's batches for ListOffsets too (earliest, latest,
by time), which needs the whole log: any request other than those known not to read the log
(broker_proxy.NO_LOG_READS), and a Fetch whose partitions could not be read (an unknown
version, an incremental fetch session), is registered as unknown and turns filtering off
while it is in flight. A registration never released (a connection torn down) keeps a floor
too low or filtering off, which costs speed, never records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

#: (topic, partition): the topic by name (Fetch v12 and older) or by its id as a UUID string
#: in canonical form (v13 and later)
Partition = tuple[str, int]


class FetchFloors:
    """Fetch offsets in flight per partition, and the number of requests in flight that may
    read a partition's log in ways a floor does not describe."""

    def __init__(self) -> None:
        self._open: dict[Partition, Counter[int]] = {}
        self._unknown = 0

    def begin(self, offsets: Mapping[Partition, int] | None) -> Mapping[Partition, int] | None:
        """Register a Fetch about to be forwarded, or with None a request whose reads of the
        log are unknown (filtering is off until its `end`); the returned token goes to `end`
        once its answer is back."""
        if offsets is None:
            self._unknown += 1
            return None
        token = dict(offsets)
        for tp, offset in token.items():
            self._open.setdefault(tp, Counter())[offset] += 1
        return token

    def end(self, token: Mapping[Partition, int] | None) -> None:
        if token is None:
            self._unknown = max(0, self._unknown - 1)
            return
        for tp, offset in token.items():
            counts = self._open.get(tp)
            if counts is None or counts[offset] <= 0:
                continue
            counts[offset] -= 1
            if counts[offset] == 0:
                del counts[offset]
            if not counts:
                del self._open[tp]

    def floor(self, refs: tuple[str, ...], partition: int) -> int | None:
        """The lowest offset a Fetch in flight asks of this partition, known by any of `refs`
        (its name, its id); None when nothing may be left out of a listing: no Fetch of it
        is registered, or a request registered as unknown is in flight."""
        if self._unknown:
            return None
        found = [min(c) for ref in refs if (c := self._open.get((ref, partition)))]
        return min(found) if found else None

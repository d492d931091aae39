"""Duplicate removal by event_id over a bounded window of input offsets.

The window is "the ids seen in the last N offsets of this input partition", not "the last
N ids" nor "the last T seconds": an offset window can be rebuilt exactly after a restart
by re-reading the N offsets before the committed position, so a restarted normalizer
drops exactly the records the crashed one would have dropped (its output is then the same
bytes, which is what makes aborted-but-visible output harmless on the embedded broker).
Duplicates of one venue event share the key (symbol) and so the partition.
"""

from __future__ import annotations

from collections import deque


class OffsetWindowDedup:
    def __init__(self, span: int = 200_000) -> None:
        if span < 1:
            raise ValueError("span must be >= 1")
        self.span = span
        self._ids: set[str] = set()
        self._order: deque[tuple[int, str]] = deque()
        self.duplicates = 0

    def _evict(self, offset: int) -> None:
        order, ids = self._order, self._ids
        floor = offset - self.span
        while order and order[0][0] < floor:
            ids.discard(order.popleft()[1])

    def first_time(self, offset: int, event_id: str) -> bool:
        """True the first time `event_id` appears within the span ending at `offset`."""
        self._evict(offset)
        if event_id in self._ids:
            self.duplicates += 1
            return False
        self._ids.add(event_id)
        self._order.append((offset, event_id))
        return True

    def __len__(self) -> int:
        return len(self._ids)

"""A bounded window of recently published event ids.

During a planned rotation or an IP failover two connections carry the same symbols for a
moment, so the same venue event arrives twice. Both copies hash to the same event_id
(schemas/ids.py hashes only what the venue said), so remembering the last N ids is
enough to publish each once. Bounded so a 24 h run cannot grow without limit; N only has
to cover the overlap, a few seconds of traffic.
"""

from __future__ import annotations

from collections import deque


class RecentIds:
    """Ids remembered with the position they were first seen at, forgotten in position order.

    What a position is belongs to the subclass: here the count of ids published so far, in
    the normalizer (streaming/processors/dedup.py) the input offset. Membership, the repeat
    count and the eviction are this one implementation."""

    def __init__(self, size: int, what: str) -> None:
        if size < 1:
            raise ValueError(f"{what} must be >= 1")
        self._seen: set[str] = set()
        self._order: deque[tuple[int, str]] = deque()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: str) -> bool:
        return key in self._seen

    def _remember(self, position: int, key: str) -> bool:
        """True and remember ``key`` the first time it is offered, False (counted) for a repeat."""
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        self._order.append((position, key))
        return True

    def _forget_before(self, floor: int) -> None:
        order, seen = self._order, self._seen
        while order and order[0][0] < floor:
            seen.discard(order.popleft()[1])


class DedupWindow(RecentIds):
    """The last ``capacity`` distinct ids offered."""

    def __init__(self, capacity: int = 200_000) -> None:
        super().__init__(capacity, "capacity")
        self.capacity = capacity
        self._count = 0

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is offered within the window, False for a repeat."""
        if not self._remember(self._count, key):
            return False
        self._count += 1
        self._forget_before(self._count - self.capacity)
        return True

"""A bounded window of recently published event ids.

During a planned rotation or an IP failover two connections carry the same symbols for a
moment, so the same venue event arrives twice. Both copies hash to the same event_id
(schemas/ids.py hashes only what the venue said), so remembering the last N ids is
enough to publish each once. Bounded so a 24 h run cannot grow without limit; N only has
to cover the overlap, a few seconds of traffic.
"""

from __future__ import annotations

from collections import deque


class DedupWindow:
    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: str) -> bool:
        return key in self._seen

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is offered within the window, False for a repeat."""
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return True

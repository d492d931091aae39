"""Duplicate removal by event_id over a bounded window of input offsets.

The window is "the ids seen in the last N offsets of this input partition", not "the last
N ids" nor "the last T seconds": an offset window can be rebuilt exactly after a restart
by re-reading the N offsets before the committed position, so a restarted normalizer
drops exactly the records the crashed one would have dropped (its output is then the same
bytes, which is what makes aborted-but-visible output harmless on the embedded broker).
Duplicates of one venue event share the key (symbol) and so the partition.
"""

from __future__ import annotations

from collectors.dedup import RecentIds


class OffsetWindowDedup(RecentIds):
    """The ids of the last ``span`` offsets of one input partition."""

    def __init__(self, span: int = 200_000) -> None:
        super().__init__(span, "span")
        self.span = span

    def first_time(self, offset: int, event_id: str) -> bool:
        """True the first time `event_id` appears within the span ending at `offset`."""
        # RecentIds' _forget_before + _remember inline (once per record in the normalizer).
        order = self._order
        if order and order[0][0] < offset - self.span:
            self._forget_before(offset - self.span)
        if event_id in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(event_id)
        order.append((offset, event_id))
        return True

"""The L2 book the feature spec replays, on scaled integers.

features/ sits below collectors/ in the import order (schemas, features <- collectors,
streaming), so it cannot use collectors/book.py; and the spec only reads the book at
window ends, so a plain dict per side with top-N selected on read is all it needs. The
book also has to travel in checkpoints (to_state/from_state), which a dict makes trivial.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

Level = tuple[int, int]


def _rescale(levels: dict[int, int], factor_px: int, factor_qty: int) -> dict[int, int]:
    return {px * factor_px: q * factor_qty for px, q in levels.items()}


class Book:
    __slots__ = ("asks", "bids", "price_scale", "ready", "seq", "size_scale")

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.seq = 0
        self.price_scale = 0
        self.size_scale = 0
        self.ready = False  # True once a snapshot was applied

    def _align(self, price_scale: int, size_scale: int) -> tuple[int, int]:
        """Bring the book to at least the incoming scales (exact up-scaling only) and return
        the factors the incoming levels need to match the book."""
        if price_scale > self.price_scale or size_scale > self.size_scale:
            fp = 10 ** max(0, price_scale - self.price_scale)
            fq = 10 ** max(0, size_scale - self.size_scale)
            self.bids = _rescale(self.bids, fp, fq)
            self.asks = _rescale(self.asks, fp, fq)
            self.price_scale = max(self.price_scale, price_scale)
            self.size_scale = max(self.size_scale, size_scale)
        return 10 ** (self.price_scale - price_scale), 10 ** (self.size_scale - size_scale)

    def snapshot(
        self, bids: Iterable[Level], asks: Iterable[Level], seq: int, price_scale: int, size_scale: int
    ) -> None:
        self.bids = {px: q for px, q in bids if q}
        self.asks = {px: q for px, q in asks if q}
        self.seq = seq
        self.price_scale = price_scale
        self.size_scale = size_scale
        self.ready = True

    def apply(self, bids: Iterable[Level], asks: Iterable[Level], seq: int, price_scale: int, size_scale: int) -> bool:
        """Apply a delta; False (ignored) before the first snapshot or when the delta is
        already contained in the snapshot (seq <= book seq)."""
        if not self.ready:
            return False
        if seq and self.seq and seq <= self.seq:
            return False
        fp, fq = self._align(price_scale, size_scale)
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for px, q in levels:
                px *= fp
                if q:
                    side[px] = q * fq
                else:
                    side.pop(px, None)
        if seq:
            self.seq = seq
        return True

    def top_bids(self, n: int) -> list[Level]:
        return [(px, self.bids[px]) for px in heapq.nlargest(n, self.bids)]

    def top_asks(self, n: int) -> list[Level]:
        return [(px, self.asks[px]) for px in heapq.nsmallest(n, self.asks)]

    def to_state(self) -> dict:
        return {
            "b": sorted(self.bids.items()),
            "a": sorted(self.asks.items()),
            "seq": self.seq,
            "ps": self.price_scale,
            "ss": self.size_scale,
            "ready": self.ready,
        }

    @classmethod
    def from_state(cls, d: dict) -> Book:
        b = cls()
        b.bids = {int(px): int(q) for px, q in d["b"]}
        b.asks = {int(px): int(q) for px, q in d["a"]}
        b.seq, b.price_scale, b.size_scale, b.ready = d["seq"], d["ps"], d["ss"], d["ready"]
        return b

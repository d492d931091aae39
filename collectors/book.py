"""L2 order book on scaled integers.

Each side is a dict ``price -> qty`` (O(1) updates of an existing level, which is most of
the traffic) plus a sorted list of prices kept with ``bisect`` so best price and top-N are
a slice away. Both lists are ordered so the BEST price sits at the END: bids ascending,
asks stored negated ascending. Inserting/removing near the top of the book (where venues
change things) then moves only a few list slots, and reading the top never searches.
Measured against the C ``order-book`` package in ``bench/bench_book.py``.

Prices and quantities are the venue's decimal strings already converted with the
instrument's scales (``schemas.scaled``); the book never sees floats. A quantity of 0
deletes a level, deleting a level that is not there is normal (venues do it).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable

Level = tuple[int, int]


class L2Book:
    """One instrument's book plus the sequence bookkeeping its venue sync rules need."""

    __slots__ = ("bids", "asks", "_bpx", "_akey", "seq", "synced", "price_scale", "size_scale", "exchange_ts")

    def __init__(self, price_scale: int = 0, size_scale: int = 0) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self._bpx: list[int] = []  # bid prices ascending; best bid = last
        self._akey: list[int] = []  # negated ask prices ascending; best ask = -last
        self.seq = 0  # venue id of the last applied snapshot/update
        self.synced = False  # True once a snapshot was applied and no gap since
        self.price_scale = price_scale
        self.size_scale = size_scale
        self.exchange_ts = 0  # µs, venue time of the last applied message

    # -- whole-book operations -------------------------------------------------------------

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self._bpx.clear()
        self._akey.clear()
        self.seq = 0
        self.synced = False

    def apply_snapshot(self, bids: Iterable[Level], asks: Iterable[Level], seq: int = 0) -> None:
        """Replace the whole book. Zero-quantity levels in a snapshot are ignored."""
        b = {px: q for px, q in bids if q}
        a = {px: q for px, q in asks if q}
        self.bids, self.asks = b, a
        self._bpx = sorted(b)
        self._akey = sorted(-px for px in a)
        self.seq = seq
        self.synced = True

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply absolute level quantities (qty 0 deletes) for both sides."""
        book, keys = self.bids, self._bpx
        for px, q in bids:
            if q:
                if px not in book:
                    insort(keys, px)
                book[px] = q
            elif book.pop(px, None) is not None:
                del keys[bisect_left(keys, px)]
        book, keys = self.asks, self._akey
        for px, q in asks:
            if q:
                if px not in book:
                    insort(keys, -px)
                book[px] = q
            elif book.pop(px, None) is not None:
                del keys[bisect_left(keys, -px)]

    # -- single-level operations (the per-update API the benchmark measures) ----------------

    def set_bid(self, px: int, qty: int) -> None:
        book = self.bids
        if qty:
            if px not in book:
                insort(self._bpx, px)
            book[px] = qty
        elif book.pop(px, None) is not None:
            keys = self._bpx
            del keys[bisect_left(keys, px)]

    def set_ask(self, px: int, qty: int) -> None:
        book = self.asks
        if qty:
            if px not in book:
                insort(self._akey, -px)
            book[px] = qty
        elif book.pop(px, None) is not None:
            keys = self._akey
            del keys[bisect_left(keys, -px)]

    def truncate(self, depth: int) -> None:
        """Keep only the best ``depth`` levels per side (venues with a fixed-depth feed)."""
        for book, keys in ((self.bids, self._bpx), (self.asks, self._akey)):
            extra = len(keys) - depth
            if extra > 0:
                for k in keys[:extra]:
                    del book[k if book is self.bids else -k]
                del keys[:extra]

    # -- views -------------------------------------------------------------------------------

    def best_bid(self) -> Level | None:
        if self._bpx:
            px = self._bpx[-1]
            return px, self.bids[px]
        return None

    def best_ask(self) -> Level | None:
        if self._akey:
            px = -self._akey[-1]
            return px, self.asks[px]
        return None

    def best_bid_px(self) -> int | None:
        return self._bpx[-1] if self._bpx else None

    def best_ask_px(self) -> int | None:
        return -self._akey[-1] if self._akey else None

    def top_bids(self, n: int) -> list[Level]:
        """Best ``n`` bids, best (highest) first."""
        book = self.bids
        return [(px, book[px]) for px in reversed(self._bpx[-n:])] if n > 0 else []

    def top_asks(self, n: int) -> list[Level]:
        """Best ``n`` asks, best (lowest) first."""
        book = self.asks
        return [(-k, book[-k]) for k in reversed(self._akey[-n:])] if n > 0 else []

    def crossed(self) -> bool:
        """Best bid at or above best ask: the book cannot be the venue's."""
        return bool(self._bpx and self._akey) and self._bpx[-1] >= -self._akey[-1]

    def depth(self) -> tuple[int, int]:
        return len(self._bpx), len(self._akey)

    def __len__(self) -> int:
        return len(self._bpx) + len(self._akey)

    def __repr__(self) -> str:
        return (
            f"L2Book(bids={len(self._bpx)}, asks={len(self._akey)}, best={self.best_bid()}"
            f"/{self.best_ask()}, seq={self.seq}, synced={self.synced})"
        )

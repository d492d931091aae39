"""L2 order book on scaled integers, with writes at dict speed and ordering settled on read.

Why this shape. A venue stream is mostly writes (Binance BTCUSDT: 79 % of level updates
insert or delete a price) and the top of the book is read once per message at most. So a
write is one C dict assignment and nothing else: ``set_bid``/``set_ask`` ARE the side
dicts' ``__setitem__`` (``bid_qty[px] = q`` is the same store without the call), and
``apply`` is two ``dict.update`` calls. A quantity of 0 is stored as-is and means "no
level" (a tombstone) to every read.

Order is settled by the first read after writes, from two facts a dict gives for free:
between reads only writes touch it, so it only grows, and it iterates in insertion order.
The keys added since the last read are therefore the last ``len(d) - n`` of
``reversed(d)``. And reads only look at the top, so only the top is kept sorted: a short
list of the prices at or better than a floor (bids ascending, asks negated ascending, so
the best is LAST and the top moves few slots). A new price at or better than the floor is
inserted there; one worse than the floor stays in the dict only (in a fully sorted book,
one ``insort`` per new price was most of a Binance stream's time). After a read there is
no tombstone above the best (they are popped) and the best price is cached, so while the
dict's length is unchanged and that price is still live nothing moved above it: a best
read is a length check and one lookup. When the top list runs out of live levels (or a
top-N read wants more than it holds) it is rebuilt from the dict (``heapq.nlargest``).
Tombstones below the top are dropped by a read once the dict could hold twice the side's
levels, and by ``apply`` only far past that (a book nobody reads stays bounded).

Prices and quantities are the venue's decimal strings already converted with the
instrument's scales (``schemas.scaled``); the book never sees floats. Deleting a level
that is not there is normal (venues do it). Measured against the C ``order-book``
package in ``bench/bench_book.py``.

This is the one book of the project: collectors (venue sync), features (the spec's
book, carried in checkpoints via ``to_state``/``from_state``) and the pragma publisher
(books rebuilt from published events at the largest scale seen, ``apply_scaled``).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable
from heapq import nlargest, nsmallest
from itertools import islice

Level = tuple[int, int]

#: Levels kept sorted at the top of each side after a rebuild (more when a top-N read
#: asks for more); a rebuild costs one pass over the side, so it should be rare.
REGION = 64
#: Entries (live or tombstones) a side's dict may grow by past twice its size at the last
#: rebuild before it is rebuilt to drop tombstones.
_SLACK = 256
_ALL = float("-inf")  # floor of a top list that holds the whole side


class L2Book:
    """One instrument's book plus the sequence bookkeeping its venue sync rules need.

    ``set_bid(px, qty)`` / ``set_ask(px, qty)`` set one level (qty 0 deletes); they are
    bound once, so a caller may keep them across snapshots and clears (the side dicts are
    never replaced, only refilled).
    """

    __slots__ = (
        "_b",
        "_a",
        "_bk",
        "_ak",
        "_nb",
        "_na",
        "_capb",
        "_capa",
        "_fb",
        "_fa",
        "_bb",
        "_ba",
        "bid_qty",
        "ask_qty",
        "set_bid",
        "set_ask",
        "seq",
        "synced",
        "price_scale",
        "size_scale",
        "exchange_ts",
    )

    def __init__(self, price_scale: int = 0, size_scale: int = 0) -> None:
        self._b: dict[int, int] = {}  # bid px -> qty (0: tombstone)
        self._a: dict[int, int] = {}  # ask px -> qty (0: tombstone)
        self._bk: list[int] = []  # top bid prices >= _fb, ascending; best bid = last
        self._ak: list[int] = []  # top negated ask prices >= _fa, ascending; best ask = -last
        self._fb: float = _ALL  # floor of _bk: every key of _b at or above it is in _bk
        self._fa: float = _ALL  # floor of _ak, negated like its keys
        self._bb: int | None = None  # best bid price when last settled (None: no bids)
        self._ba: int | None = None  # best ask price when last settled (None: no asks)
        self._nb = 0  # len(_b) when last settled
        self._na = 0
        self._capb = _SLACK  # rebuild a side when its dict grows past this
        self._capa = _SLACK
        #: Writable level maps (px -> qty). Store only, 0 to delete, never ``del`` or pop:
        #: reads rely on the dict only growing between them. Read through the book's
        #: views (these hold tombstones).
        self.bid_qty: dict[int, int] = self._b
        self.ask_qty: dict[int, int] = self._a
        self.set_bid: Callable[[int, int], None] = self._b.__setitem__
        self.set_ask: Callable[[int, int], None] = self._a.__setitem__
        self.seq = 0  # venue id of the last applied snapshot/update
        self.synced = False  # True once a snapshot was applied and no gap since
        self.price_scale = price_scale
        self.size_scale = size_scale
        self.exchange_ts = 0  # µs, venue time of the last applied message

    # -- writes --------------------------------------------------------------------------------

    def clear(self) -> None:
        self._fill((), ())
        self.seq = 0
        self.synced = False

    def apply_snapshot(
        self,
        bids: Iterable[Level],
        asks: Iterable[Level],
        seq: int = 0,
        price_scale: int | None = None,
        size_scale: int | None = None,
    ) -> None:
        """Replace the whole book (zero-quantity levels in a snapshot are not levels); the
        scales, when given, become the book's."""
        self._fill(bids, asks)
        self.seq = seq
        self.synced = True
        if price_scale is not None:
            self.price_scale = price_scale
        if size_scale is not None:
            self.size_scale = size_scale

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply absolute level quantities (qty 0 deletes) for both sides. Reads drop the
        tombstones; a side written far past its bound without a read is rebuilt here, so a
        book that is never read cannot grow without limit (doing it at the reads' bound was
        measured to cost more than the smaller dict saves)."""
        b, a = self._b, self._a
        b.update(bids)
        a.update(asks)
        if len(b) > 16 * self._capb:
            self._rebuild_bids(REGION)
        if len(a) > 16 * self._capa:
            self._rebuild_asks(REGION)

    def rescale(self, price_scale: int, size_scale: int) -> tuple[int, int]:
        """Raise the book to at least the given scales (exact up-scaling only, a scale never
        drops) and return the factors that bring levels AT the given scales to the book's."""
        ps, ss = self.price_scale, self.size_scale
        if price_scale > ps or size_scale > ss:
            fp = 10 ** max(0, price_scale - ps)
            fq = 10 ** max(0, size_scale - ss)
            bids = [(px * fp, q * fq) for px, q in self._b.items()]
            asks = [(px * fp, q * fq) for px, q in self._a.items()]
            self._fill(bids, asks)
            self.price_scale = ps = max(ps, price_scale)
            self.size_scale = ss = max(ss, size_scale)
        return 10 ** (ps - price_scale), 10 ** (ss - size_scale)

    def apply_scaled(self, bids: Iterable[Level], asks: Iterable[Level], price_scale: int, size_scale: int) -> None:
        """``apply`` for levels at their own scales (a feed whose scales may still grow): the
        book is kept at the largest scales seen."""
        fp, fq = self.rescale(price_scale, size_scale)
        if fp == 1 and fq == 1:
            self.apply(bids, asks)
        else:
            self.apply([(px * fp, q * fq) for px, q in bids], [(px * fp, q * fq) for px, q in asks])

    def truncate(self, depth: int) -> None:
        """Keep only the best ``depth`` levels per side (venues with a fixed-depth feed)."""
        self._fill(self.top_bids(depth), self.top_asks(depth))

    def _fill(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        b, a = self._b, self._a
        b.clear()
        b.update((px, q) for px, q in bids if q)
        a.clear()
        a.update((px, q) for px, q in asks if q)
        self._rebuild_bids(REGION)
        self._rebuild_asks(REGION)

    # -- settling (the first read after writes) ----------------------------------------------

    def _rebuild_bids(self, want: int) -> None:
        """Drop the tombstones and sort the best ``want`` (at least REGION) bids again."""
        d = self._b
        for px in [px for px, q in d.items() if not q]:
            del d[px]
        want = max(want, REGION)
        if len(d) <= want:
            self._bk, self._fb = sorted(d), _ALL
        else:
            self._bk = keys = nlargest(want, d)
            keys.reverse()
            self._fb = keys[0]
        self._nb = len(d)
        self._capb = 2 * len(d) + _SLACK
        self._bb = self._bk[-1] if self._bk else None

    def _rebuild_asks(self, want: int) -> None:
        d = self._a
        for px in [px for px, q in d.items() if not q]:
            del d[px]
        want = max(want, REGION)
        if len(d) <= want:
            self._ak, self._fa = sorted(-px for px in d), _ALL
        else:
            self._ak = keys = [-px for px in nsmallest(want, d)]
            keys.reverse()
            self._fa = keys[0]
        self._na = len(d)
        self._capa = 2 * len(d) + _SLACK
        self._ba = -self._ak[-1] if self._ak else None

    def _settle_bids(self) -> None:
        d, keys, floor = self._b, self._bk, self._fb
        m = len(d)
        if m != self._nb:
            k = m - self._nb
            for px in (next(reversed(d)),) if k == 1 else list(islice(reversed(d), k)):
                if not d[px]:
                    del d[px]
                elif px >= floor:
                    insort(keys, px)
            if len(keys) > 4 * REGION:  # the top grew (prices moved up): sort less of it
                del keys[: len(keys) - 2 * REGION]
                self._fb = keys[0]
            if len(d) > self._capb:  # tombstones could outnumber the levels: drop them
                for px in [px for px, q in d.items() if not q]:
                    del d[px]
                keys[:] = [px for px in keys if px in d]
                self._capb = 2 * len(d) + _SLACK
        while keys and not d[keys[-1]]:
            del d[keys.pop()]
        self._nb = len(d)
        if keys:
            self._bb = keys[-1]
        elif d:
            self._rebuild_bids(REGION)
        else:
            self._bb = None

    def _settle_asks(self) -> None:
        d, keys, floor = self._a, self._ak, self._fa
        m = len(d)
        if m != self._na:
            k = m - self._na
            for px in (next(reversed(d)),) if k == 1 else list(islice(reversed(d), k)):
                if not d[px]:
                    del d[px]
                elif -px >= floor:
                    insort(keys, -px)
            if len(keys) > 4 * REGION:
                del keys[: len(keys) - 2 * REGION]
                self._fa = keys[0]
            if len(d) > self._capa:
                for px in [px for px, q in d.items() if not q]:
                    del d[px]
                keys[:] = [k for k in keys if -k in d]
                self._capa = 2 * len(d) + _SLACK
        while keys and not d[-keys[-1]]:
            del d[-keys.pop()]
        self._na = len(d)
        if keys:
            self._ba = -keys[-1]
        elif d:
            self._rebuild_asks(REGION)
        else:
            self._ba = None

    # -- reads ---------------------------------------------------------------------------------

    def best_bid(self) -> Level | None:
        d = self._b
        if len(d) == self._nb:  # no new price since the last read
            px = self._bb
            if px is None:
                return None
            q = d[px]
            if q:
                return px, q
        self._settle_bids()
        px = self._bb
        return None if px is None else (px, d[px])

    def best_ask(self) -> Level | None:
        d = self._a
        if len(d) == self._na:
            px = self._ba
            if px is None:
                return None
            q = d[px]
            if q:
                return px, q
        self._settle_asks()
        px = self._ba
        return None if px is None else (px, d[px])

    def best_bid_px(self) -> int | None:
        lv = self.best_bid()
        return lv[0] if lv else None

    def best_ask_px(self) -> int | None:
        lv = self.best_ask()
        return lv[0] if lv else None

    def top_bids(self, n: int) -> list[Level]:
        """Best ``n`` bids, best (highest) first."""
        out: list[Level] = []
        if n <= 0:
            return out
        self._settle_bids()
        d = self._b
        for px in reversed(self._bk):
            q = d[px]
            if q:
                out.append((px, q))
                if len(out) == n:
                    return out
        if self._fb != _ALL:  # levels below the sorted top are wanted: sort more of the side
            self._rebuild_bids(2 * n)
            return self.top_bids(n)
        return out

    def top_asks(self, n: int) -> list[Level]:
        """Best ``n`` asks, best (lowest) first."""
        out: list[Level] = []
        if n <= 0:
            return out
        self._settle_asks()
        d = self._a
        for k in reversed(self._ak):
            q = d[-k]
            if q:
                out.append((-k, q))
                if len(out) == n:
                    return out
        if self._fa != _ALL:
            self._rebuild_asks(2 * n)
            return self.top_asks(n)
        return out

    @property
    def bids(self) -> dict[int, int]:
        """The bid levels as a new dict ``px -> qty`` (a copy: write with set_bid/apply)."""
        return {px: q for px, q in self._b.items() if q}

    @property
    def asks(self) -> dict[int, int]:
        """The ask levels as a new dict ``px -> qty`` (a copy: write with set_ask/apply)."""
        return {px: q for px, q in self._a.items() if q}

    def crossed(self) -> bool:
        """Best bid at or above best ask: the book cannot be the venue's."""
        b, a = self.best_bid(), self.best_ask()
        return b is not None and a is not None and b[0] >= a[0]

    def depth(self) -> tuple[int, int]:
        return sum(1 for q in self._b.values() if q), sum(1 for q in self._a.values() if q)

    def __len__(self) -> int:
        return sum(self.depth())

    def __repr__(self) -> str:
        nb, na = self.depth()
        return (
            f"L2Book(bids={nb}, asks={na}, best={self.best_bid()}/{self.best_ask()}, seq={self.seq}, "
            f"synced={self.synced})"
        )

    # -- state in/out (checkpoints) ------------------------------------------------------------

    def to_state(self) -> dict:
        """JSON-ready state; ``from_state`` restores an equal book. (The key names are the
        feature processor's checkpoint format, kept so existing checkpoints restore.)"""
        state = {
            "b": sorted(self.bids.items()),
            "a": sorted(self.asks.items()),
            "seq": self.seq,
            "ps": self.price_scale,
            "ss": self.size_scale,
            "ready": self.synced,
        }
        if self.exchange_ts:
            state["ts"] = self.exchange_ts
        return state

    @classmethod
    def from_state(cls, d: dict) -> L2Book:
        book = cls(int(d["ps"]), int(d["ss"]))
        book._fill([(int(px), int(q)) for px, q in d["b"]], [(int(px), int(q)) for px, q in d["a"]])
        book.seq, book.synced, book.exchange_ts = int(d["seq"]), bool(d["ready"]), int(d.get("ts", 0))
        return book

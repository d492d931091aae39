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


class _Side:
    """One side of the book: its level map and its sorted top, written once for both sides.

    The top list holds ``sign * px`` ascending (``sign`` +1 for bids, -1 for asks), so the
    best price is always the LAST key times ``sign``, and "at or better than the floor" is
    ``sign * px >= floor`` on either side."""

    __slots__ = ("qty", "sign", "keys", "floor", "best", "n", "cap")

    def __init__(self, sign: int) -> None:
        self.qty: dict[int, int] = {}  # px -> qty (0: tombstone)
        self.sign = sign
        self.keys: list[int] = []  # sign * px of the top prices >= floor, ascending; best = last
        self.floor: float = _ALL  # every key of qty at or better than it is in keys
        self.best: int | None = None  # best price when last settled (None: an empty side)
        self.n = 0  # len(qty) when last settled
        self.cap = _SLACK  # rebuild when qty grows past this

    def fill(self, levels: Iterable[Level]) -> None:
        d = self.qty
        d.clear()
        d.update((px, q) for px, q in levels if q)
        self.rebuild(REGION)

    def rebuild(self, want: int) -> None:
        """Drop the tombstones and sort the best ``want`` (at least REGION) prices again."""
        d, s = self.qty, self.sign
        for px in [px for px, q in d.items() if not q]:
            del d[px]
        want = max(want, REGION)
        if len(d) <= want:
            self.keys, self.floor = sorted(d) if s > 0 else sorted(-px for px in d), _ALL
        else:
            self.keys = keys = nlargest(want, d) if s > 0 else [-px for px in nsmallest(want, d)]
            keys.reverse()
            self.floor = keys[0]
        self.n = len(d)
        self.cap = 2 * len(d) + _SLACK
        self.best = s * self.keys[-1] if self.keys else None

    def settle(self) -> None:
        """Take the prices written since the last read into the top (the first read after writes)."""
        d, keys, floor, s = self.qty, self.keys, self.floor, self.sign
        m = len(d)
        if m != self.n:
            k = m - self.n
            for px in (next(reversed(d)),) if k == 1 else list(islice(reversed(d), k)):
                if not d[px]:
                    del d[px]
                elif (key := s * px) >= floor:
                    insort(keys, key)
            if len(keys) > 4 * REGION:  # the top grew (prices moved up): sort less of it
                del keys[: len(keys) - 2 * REGION]
                self.floor = keys[0]
            if len(d) > self.cap:  # tombstones could outnumber the levels: drop them
                for px in [px for px, q in d.items() if not q]:
                    del d[px]
                keys[:] = [key for key in keys if s * key in d]
                self.cap = 2 * len(d) + _SLACK
        while keys:
            px = s * keys[-1]
            if d[px]:
                break
            del d[px]
            keys.pop()
        self.n = len(d)
        if keys:
            self.best = px
        elif d:
            self.rebuild(REGION)
        else:
            self.best = None

    def best_level(self) -> Level | None:
        d = self.qty
        if len(d) == self.n:  # no new price since the last read
            px = self.best
            if px is None:
                return None
            q = d[px]
            if q:
                return px, q
        self.settle()
        px = self.best
        return None if px is None else (px, d[px])

    def top(self, n: int) -> list[Level]:
        """Best ``n`` levels, best first."""
        out: list[Level] = []
        if n <= 0:
            return out
        self.settle()
        d, s = self.qty, self.sign
        for key in reversed(self.keys):
            q = d[s * key]
            if q:
                out.append((s * key, q))
                if len(out) == n:
                    return out
        if self.floor != _ALL:  # levels below the sorted top are wanted: sort more of the side
            self.rebuild(2 * n)
            return self.top(n)
        return out

    def levels(self) -> dict[int, int]:
        return {px: q for px, q in self.qty.items() if q}

    def depth(self) -> int:
        return sum(1 for q in self.qty.values() if q)


class L2Book:
    """One instrument's book plus the sequence bookkeeping its venue sync rules need.

    ``set_bid(px, qty)`` / ``set_ask(px, qty)`` set one level (qty 0 deletes); they are
    bound once, so a caller may keep them across snapshots and clears (the side dicts are
    never replaced, only refilled). ``best_bid()`` / ``best_ask()`` return the best level
    ``(px, qty)`` or None; they are the sides' own methods, bound once like the writes, so
    a read per message costs one call.
    """

    __slots__ = (
        "_bids",
        "_asks",
        "bid_qty",
        "ask_qty",
        "set_bid",
        "set_ask",
        "best_bid",
        "best_ask",
        "seq",
        "synced",
        "price_scale",
        "size_scale",
        "exchange_ts",
    )

    def __init__(self, price_scale: int = 0, size_scale: int = 0) -> None:
        self._bids = _Side(1)
        self._asks = _Side(-1)
        #: Writable level maps (px -> qty). Store only, 0 to delete, never ``del`` or pop:
        #: reads rely on the dict only growing between them. Read through the book's
        #: views (these hold tombstones).
        self.bid_qty: dict[int, int] = self._bids.qty
        self.ask_qty: dict[int, int] = self._asks.qty
        self.set_bid: Callable[[int, int], None] = self.bid_qty.__setitem__
        self.set_ask: Callable[[int, int], None] = self.ask_qty.__setitem__
        self.best_bid: Callable[[], Level | None] = self._bids.best_level
        self.best_ask: Callable[[], Level | None] = self._asks.best_level
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
        b, a = self.bid_qty, self.ask_qty
        b.update(bids)
        a.update(asks)
        if len(b) > 16 * self._bids.cap:
            self._bids.rebuild(REGION)
        if len(a) > 16 * self._asks.cap:
            self._asks.rebuild(REGION)

    def rescale(self, price_scale: int, size_scale: int) -> tuple[int, int]:
        """Raise the book to at least the given scales (exact up-scaling only, a scale never
        drops) and return the factors that bring levels AT the given scales to the book's."""
        ps, ss = self.price_scale, self.size_scale
        if price_scale > ps or size_scale > ss:
            fp = 10 ** max(0, price_scale - ps)
            fq = 10 ** max(0, size_scale - ss)
            bids = [(px * fp, q * fq) for px, q in self.bid_qty.items()]
            asks = [(px * fp, q * fq) for px, q in self.ask_qty.items()]
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
        self._bids.fill(bids)
        self._asks.fill(asks)

    # -- reads ---------------------------------------------------------------------------------

    def best_bid_px(self) -> int | None:
        lv = self.best_bid()
        return lv[0] if lv else None

    def best_ask_px(self) -> int | None:
        lv = self.best_ask()
        return lv[0] if lv else None

    def top_bids(self, n: int) -> list[Level]:
        """Best ``n`` bids, best (highest) first."""
        return self._bids.top(n)

    def top_asks(self, n: int) -> list[Level]:
        """Best ``n`` asks, best (lowest) first."""
        return self._asks.top(n)

    @property
    def bids(self) -> dict[int, int]:
        """The bid levels as a new dict ``px -> qty`` (a copy: write with set_bid/apply)."""
        return self._bids.levels()

    @property
    def asks(self) -> dict[int, int]:
        """The ask levels as a new dict ``px -> qty`` (a copy: write with set_ask/apply)."""
        return self._asks.levels()

    def crossed(self) -> bool:
        """Best bid at or above best ask: the book cannot be the venue's."""
        b, a = self.best_bid(), self.best_ask()
        return b is not None and a is not None and b[0] >= a[0]

    def depth(self) -> tuple[int, int]:
        return self._bids.depth(), self._asks.depth()

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

"""One feed's L2 book rebuilt from processed BOOK_SNAPSHOT / BOOK_DELTA envelopes.

Snapshots and deltas travel on different topics (processed.<m>.orderbook.snapshot.<x> and
...delta.<x>), so a consumer of both sees them in an arbitrary interleaving: at start-up
the deltas of the first seconds are usually read before the snapshot they follow. The
book therefore sequences by the venue ids the envelopes carry, the way a venue's own sync
procedure does: deltas seen before the first snapshot are held (bounded), a snapshot
replaces the book and the held deltas newer than it are applied after it, in sequence
order; a delta older than the book is stale and skipped, and so is a snapshot older
than the book it would replace. The collectors already enforced gap rules upstream, so no
continuity check is repeated here.

Every applied change is yielded to the caller (``BookChange``) right after it is applied,
so the publisher reads the price/depth of each state in order even when a late snapshot
releases several states at once (the caller must exhaust the iterator). Scales: levels are
kept at the largest scale seen (``L2Book.apply_scaled``, exact up-scaling), since a
collector infers scales until its first snapshot locks them.

Quantities are kept in the base asset (schemas/units.py): contract sizes of OKX
SWAP/FUTURES and Bybit inverse are converted level by level as they arrive, and the book's
size_scale is the base scale, so published depth means the same on every venue.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from orderbook import L2Book
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.units import base_levels, unit_of_envelope

#: Deltas held per feed while waiting for a snapshot.
DEFAULT_MAX_PENDING = 20_000
#: Called with each envelope right before the book applies it (on_envelope's docstring).
BeforeApply = Callable[[pb.Envelope], None] | None


@dataclass(frozen=True, slots=True)
class BookChange:
    """The book after one applied envelope (`env` is the envelope that produced it)."""

    env: pb.Envelope
    seq: int
    exchange_ts: int


def _newer(env: pb.Envelope, book: L2Book) -> bool:
    """Is ``env`` after the book's state? Venue ids when both sides have one; otherwise venue
    time (OKX without seqId, venues with no ids), where equal times count as newer because
    a venue may stamp a snapshot and its first update alike."""
    if env.seq and book.seq:
        # >=: Binance's first delta after a snapshot may end exactly at the snapshot id
        # (U <= lastUpdateId <= u); levels are absolute, so applying it again is harmless.
        return env.seq >= book.seq
    return env.exchange_ts >= book.exchange_ts


def _base(env: pb.Envelope, payload) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """The payload's (px, qty) levels with qty in the base asset, and the base size scale."""
    unit = unit_of_envelope(env)
    bids, bs = base_levels(payload.bids, unit, env.size_scale, env.price_scale)
    asks, _ = base_levels(payload.asks, unit, env.size_scale, env.price_scale)
    return bids, asks, bs


def _levels(env: pb.Envelope, payload, before: BeforeApply) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """The levels to apply (_base), once `before` has seen the book still in its previous
    state: the one order a snapshot and a delta share."""
    if before is not None:
        before(env)
    return _base(env, payload)


class FeedBook:
    __slots__ = ("_tie", "book", "dropped_pending", "max_pending", "pending", "stale")

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.book = L2Book()
        self.pending: list[tuple[int, int, int, pb.Envelope]] = []  # heap of (seq, ts, arrival, delta)
        self.max_pending = max_pending
        self.dropped_pending = 0
        self.stale = 0
        self._tie = 0

    @property
    def synced(self) -> bool:
        return self.book.synced

    @property
    def price_scale(self) -> int:
        return self.book.price_scale

    @property
    def size_scale(self) -> int:
        return self.book.size_scale

    def on_envelope(self, env: pb.Envelope, before: BeforeApply = None) -> Iterator[BookChange]:
        """Apply a snapshot or delta, yielding after each applied state (several when a
        snapshot releases held deltas; none when the envelope was held or stale).
        ``before(env)`` is called right before each envelope is applied, while the book is
        still the previous state (the publisher's event-time depth throttle reads it there)."""
        which = env.WhichOneof("payload")
        if which == "book_snapshot":
            yield from self._snapshot(env, before)
        elif which == "book_delta":
            yield from self._delta(env, before)
        else:
            raise ValueError(f"not a book envelope: {which}")

    def _snapshot(self, env: pb.Envelope, before: BeforeApply = None) -> Iterator[BookChange]:
        b = self.book
        if b.synced and env.seq and b.seq and env.seq < b.seq:
            self.stale += 1  # the book is already past this snapshot
            return
        bids, asks, bs = _levels(env, env.book_snapshot, before)
        b.apply_snapshot(bids, asks, env.seq, env.price_scale, bs)
        b.exchange_ts = env.exchange_ts
        yield BookChange(env, b.seq, b.exchange_ts)
        held, self.pending = self.pending, []
        while held:
            yield from self._delta(heapq.heappop(held)[-1], before)

    def _delta(self, env: pb.Envelope, before: BeforeApply = None) -> Iterator[BookChange]:
        b = self.book
        if not b.synced:
            if len(self.pending) >= self.max_pending:
                heapq.heappop(self.pending)  # the oldest id goes: it is the least likely to be needed
                self.dropped_pending += 1
            self._tie += 1
            heapq.heappush(self.pending, (env.seq, env.exchange_ts, self._tie, env))
            return
        if not _newer(env, b):
            self.stale += 1
            return
        bids, asks, bs = _levels(env, env.book_delta, before)
        b.apply_scaled(bids, asks, env.price_scale, bs)
        if env.seq:
            b.seq = env.seq
        b.exchange_ts = max(b.exchange_ts, env.exchange_ts)
        yield BookChange(env, b.seq, b.exchange_ts)

    def reset(self) -> None:
        """Forget the book (partition revoked: another instance owns the feed now)."""
        self.book = L2Book()
        self.pending = []

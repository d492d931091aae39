"""L2Book against a naive reference model, plus its edge cases."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook import L2Book


class RefBook:
    """Obviously-correct model: dicts, sorted on every read."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def set(self, side: str, px: int, qty: int) -> None:
        book = self.bids if side == "b" else self.asks
        if qty:
            book[px] = qty
        else:
            book.pop(px, None)

    def top_bids(self, n: int):
        return sorted(self.bids.items(), key=lambda kv: -kv[0])[:n]

    def top_asks(self, n: int):
        return sorted(self.asks.items())[:n]


ops = st.lists(st.tuples(st.sampled_from("ba"), st.integers(1, 60), st.integers(0, 5)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 80))
def test_matches_reference_per_level(updates, n):
    book, ref = L2Book(), RefBook()
    for side, px, qty in updates:
        (book.set_bid if side == "b" else book.set_ask)(px, qty)
        ref.set(side, px, qty)
        # reading the top after every update is part of the contract
        assert book.best_bid() == (ref.top_bids(1)[0] if ref.bids else None)
        assert book.best_ask() == (ref.top_asks(1)[0] if ref.asks else None)
    assert book.top_bids(n) == ref.top_bids(n)
    assert book.top_asks(n) == ref.top_asks(n)
    assert book.depth() == (len(ref.bids), len(ref.asks))
    assert book.crossed() == bool(ref.bids and ref.asks and max(ref.bids) >= min(ref.asks))


@settings(max_examples=200, deadline=None)
@given(ops, ops)
def test_batch_apply_equals_level_by_level(snapshot_ops, updates):
    snap_b = {px: q for s, px, q in snapshot_ops if s == "b"}
    snap_a = {px: q for s, px, q in snapshot_ops if s == "a"}
    a, b = L2Book(), L2Book()
    a.apply_snapshot(snap_b.items(), snap_a.items(), seq=7)
    b.apply_snapshot(snap_b.items(), snap_a.items(), seq=7)
    a.apply([(px, q) for s, px, q in updates if s == "b"], [(px, q) for s, px, q in updates if s == "a"])
    for s, px, q in updates:
        (b.set_bid if s == "b" else b.set_ask)(px, q)
    assert a.top_bids(1000) == b.top_bids(1000)
    assert a.top_asks(1000) == b.top_asks(1000)
    assert a.seq == 7 and a.synced


def test_views_order_and_deletes():
    book = L2Book(price_scale=2, size_scale=3)
    book.apply_snapshot([(10000, 5), (9990, 7), (9980, 0)], [(10010, 1), (10030, 2), (10020, 3)], seq=42)
    assert book.top_bids(5) == [(10000, 5), (9990, 7)]  # qty 0 in a snapshot is not a level
    assert book.top_asks(2) == [(10010, 1), (10020, 3)]
    assert book.best_bid_px() == 10000 and book.best_ask_px() == 10010
    book.set_bid(9990, 0)
    book.set_bid(1, 0)  # deleting a missing level is normal
    book.set_ask(10010, 0)
    assert book.top_bids(5) == [(10000, 5)]
    assert book.best_ask() == (10020, 3)
    assert not book.crossed()
    book.set_bid(10020, 9)
    assert book.crossed()  # bid at the best ask
    assert book.top_bids(0) == [] and book.top_asks(-1) == []


def test_truncate_keeps_best_levels():
    book = L2Book()
    book.apply_snapshot([(p, 1) for p in range(1, 11)], [(p, 1) for p in range(11, 21)])
    book.truncate(3)
    assert [p for p, _ in book.top_bids(10)] == [10, 9, 8]
    assert [p for p, _ in book.top_asks(10)] == [11, 12, 13]
    assert set(book.bids) == {8, 9, 10} and set(book.asks) == {11, 12, 13}


def test_clear_and_resnapshot():
    book = L2Book()
    book.apply_snapshot([(5, 1)], [(6, 1)], seq=3)
    book.clear()
    assert not book.synced and book.seq == 0 and book.best_bid() is None and len(book) == 0
    book.apply_snapshot([(4, 2)], [(9, 2)], seq=11)
    assert book.best_bid() == (4, 2) and book.seq == 11


def test_large_random_stream_against_reference():
    rng = random.Random(7)
    book, ref = L2Book(), RefBook()
    for _ in range(20000):
        side = rng.choice("ba")
        px = rng.randrange(1_000_000, 1_002_000) if side == "b" else rng.randrange(1_001_000, 1_003_000)
        qty = rng.choice([0, 0, rng.randrange(1, 10**8)])
        (book.set_bid if side == "b" else book.set_ask)(px, qty)
        ref.set(side, px, qty)
    assert book.top_bids(500) == ref.top_bids(500)
    assert book.top_asks(500) == ref.top_asks(500)

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


# Prices over a range much wider than the sorted top (orderbook.book.REGION), reads at random
# moments: exercises the floor, the top rebuilt from the dict, tombstones and their compaction.
wide_ops = st.lists(
    st.tuples(st.sampled_from("ba"), st.integers(1, 700), st.integers(0, 3), st.booleans()), max_size=1500
)


@settings(max_examples=150, deadline=None)
@given(wide_ops, st.integers(1, 700))
def test_wide_book_with_sparse_reads_matches_reference(updates, n):
    book, ref = L2Book(), RefBook()
    book.apply_snapshot([(p, 1) for p in range(1, 701, 3)], [(p, 2) for p in range(2, 701, 5)])
    for px in range(1, 701, 3):
        ref.set("b", px, 1)
    for px in range(2, 701, 5):
        ref.set("a", px, 2)
    for side, px, qty, read in updates:
        (book.bid_qty if side == "b" else book.ask_qty)[px] = qty
        ref.set(side, px, qty)
        if read:
            assert book.best_bid() == (ref.top_bids(1)[0] if ref.bids else None)
            assert book.best_ask() == (ref.top_asks(1)[0] if ref.asks else None)
    assert book.top_bids(n) == ref.top_bids(n)
    assert book.top_asks(n) == ref.top_asks(n)
    assert book.bids == ref.bids and book.asks == ref.asks
    assert book.depth() == (len(ref.bids), len(ref.asks))


def test_unread_writes_stay_bounded_and_exact():
    """Deletes of missing levels (venues send them) written without a read leave tombstones;
    apply drops them once the dict is far past its bound, so it never holds every price."""
    rng = random.Random(3)
    book, ref = L2Book(), RefBook()
    book.apply_snapshot([(10, 1)], [(20, 1)])
    ref.set("b", 10, 1)
    written = set()
    for _ in range(400):
        ups = [(rng.randrange(1, 10**6), rng.choice([0] * 19 + [1])) for _ in range(50)]
        book.apply(ups, [])
        for px, q in ups:
            ref.set("b", px, q)
            written.add(px)
    assert len(book.bid_qty) < len(written) / 2
    assert book.top_bids(100_000) == ref.top_bids(100_000)


def test_setters_survive_snapshot_clear_and_rescale():
    book = L2Book()
    sb = book.set_bid
    book.apply_snapshot([(5, 1)], [(9, 1)], seq=1, price_scale=1, size_scale=0)
    sb(6, 2)
    assert book.best_bid() == (6, 2)
    assert book.rescale(2, 1) == (1, 1) and book.best_bid() == (60, 20)
    sb(61, 1)
    book.clear()
    sb(7, 1)
    assert book.best_bid() == (7, 1)


def test_rescale_keeps_the_largest_scales_exactly():
    book = L2Book()
    book.apply_snapshot([(100, 5)], [(101, 7)], seq=3, price_scale=1, size_scale=0)
    # levels one price decimal finer raise the book; the book's levels are multiplied, never rounded
    book.apply_scaled([(1005, 3)], [], price_scale=2, size_scale=0)
    assert (book.price_scale, book.size_scale) == (2, 0)
    assert book.top_bids(5) == [(1005, 3), (1000, 5)] and book.best_ask() == (1010, 7)
    # coarser levels are brought up to the book's scales; qty 0 deletes at the book's price
    book.apply_scaled([(100, 0)], [(102, 4)], price_scale=1, size_scale=0)
    book.apply_scaled([], [(1010, 25)], price_scale=2, size_scale=1)
    assert book.size_scale == 1
    assert book.top_bids(5) == [(1005, 30)] and book.top_asks(5) == [(1010, 25), (1020, 40)]
    assert book.seq == 3 and book.synced


def test_state_round_trip_through_json():
    import json

    book = L2Book()
    book.apply_snapshot([(p, p) for p in range(1, 300)], [(p, 1) for p in range(300, 600)], seq=9, price_scale=2)
    book.apply([(5, 0), (700, 1)], [(300, 0)])
    book.exchange_ts = 1_700_000_000_000_000
    back = L2Book.from_state(json.loads(json.dumps(book.to_state())))
    assert back.to_state() == book.to_state()
    assert back.top_bids(1000) == book.top_bids(1000) and back.top_asks(1000) == book.top_asks(1000)
    assert (back.seq, back.synced, back.price_scale, back.exchange_ts) == (9, True, 2, book.exchange_ts)
    # the feature processor's checkpoints written before this module restore as they were
    old = {"b": [[1, 2]], "a": [[3, 4]], "seq": 5, "ps": 1, "ss": 2, "ready": True}
    assert L2Book.from_state(old).to_state() == {**old, "b": [(1, 2)], "a": [(3, 4)]}


def test_interior_tombstones_are_dropped_by_reads():
    """Deletes below the best leave tombstones that reads do not see; once they could
    outnumber the levels, a read drops them (the dict stays near the level count)."""
    rng = random.Random(11)
    book, ref = L2Book(), RefBook()
    book.apply_snapshot([(p, 1) for p in range(100_000, 104_000)], [(p, 1) for p in range(104_000, 108_000)])
    for p in range(100_000, 104_000):
        ref.set("b", p, 1)
        ref.set("a", p + 4_000, 1)
    for i in range(40_000):
        side = rng.choice("ba")
        px = rng.randrange(60_000, 104_000) if side == "b" else rng.randrange(104_000, 148_000)
        q = rng.choice([0, 0, 0, 1])
        (book.set_bid if side == "b" else book.set_ask)(px, q)
        ref.set(side, px, q)
        if i % 100 == 0:
            bb, ba = max(ref.bids), min(ref.asks)
            assert (book.best_bid(), book.best_ask()) == ((bb, ref.bids[bb]), (ba, ref.asks[ba]))
    assert len(book.bid_qty) + len(book.ask_qty) < 3 * (len(ref.bids) + len(ref.asks)) + 4 * 256
    assert book.top_bids(10**6) == ref.top_bids(10**6) and book.top_asks(10**6) == ref.top_asks(10**6)

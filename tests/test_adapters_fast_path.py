"""The Binance adapters' fast paths (``_agg_trade``, ``_depth``, ``_book_ticker`` checking
the common case inline) must produce exactly what their checked paths (``*_checked``: the
field-by-field validation that words every refusal) produce: the same
envelope bytes and event ids, the same dead letters, requests, resyncs, counters and books, on
the genuine captures and on the same frames with fields removed, retyped or out of range.

The reference is computed here, at test time, by an adapter whose handlers are the checked
ones; the captures are read from the shared samples (workloads/samples.py), never copied."""

from __future__ import annotations

import pickle
import random
from typing import Any

import orjson
import pytest

from collectors.capture import REST, WS, Record
from collectors.exchanges.binance import BinanceAdapter, BinanceSpotAdapter, BinanceUsdmAdapter
from collectors.exchanges.common import parse_scaled
from schemas.scaled import ScaleError, to_scaled
from tests.fuzz import engine
from tests.support.adapters import records, rest_request_for
from workloads.samples import (
    BINANCE_SPOT_CF,
    BINANCE_SPOT_HFT,
    BINANCE_SPOT_TARDIS,
    BINANCE_USDM_CF,
    BINANCE_USDM_TARDIS,
)

#: values a field is replaced with (plus deleting it): wrong types, bounds, odd strings
ODD: list[Any] = [None, "", "1.5", "0.10", 1.5, -1, -2, 0, 2**63, 2**63 - 1, True, False, [], {}, "abc", "12", 12]
ODD += ["1e3", "-1", "\u0663", " 12", "1_0", [["1.0", "2.0"]], [["1.0"]], [["1.0", "2.0", "3"]], "x" * 70]


class Counting:
    """Counts the frames each handler's checked path took (the rest took the fast path)."""

    def __init__(self) -> None:
        self.checked = {"aggTrade": 0, "depthUpdate": 0, "bookTicker": 0}

    def wrap(self, ad: BinanceAdapter) -> BinanceAdapter:
        for name, e in (("_agg_trade", "aggTrade"), ("_depth", "depthUpdate"), ("_book_ticker", "bookTicker")):
            setattr(ad, f"{name}_checked", self._counted(e, getattr(ad, f"{name}_checked")))
        return ad

    def _counted(self, e: str, fn: Any) -> Any:
        def counted(*a: Any) -> None:
            self.checked[e] += 1
            fn(*a)

        return counted


def checked_only(ad: BinanceAdapter) -> BinanceAdapter:
    """The reference: every aggTrade, depth diff and bookTicker through the checked path."""
    for name, e in (("_agg_trade", "aggTrade"), ("_depth", "depthUpdate"), ("_book_ticker", "bookTicker")):
        checked = getattr(ad, f"{name}_checked")
        setattr(ad, name, checked)  # spot bookTicker (no "e") is called by name
        ad._dispatch[e] = checked
    return ad


def clone(ad: BinanceAdapter) -> BinanceAdapter:
    """A deep copy of an adapter and its books (a pickle round trip: ~5x faster than copy.deepcopy
    on synced books of a million levels' depth)."""
    twin = pickle.loads(pickle.dumps(ad, pickle.HIGHEST_PROTOCOL))
    # its handlers (the checked ones of checked_only's adapter too) are the twin's own
    assert all(h.__self__ is twin and h.__name__ == ad._dispatch[e].__name__ for e, h in twin._dispatch.items())
    return twin


def outcome(res: Any) -> tuple:
    return (
        [e.SerializeToString() for e in res.events],
        [(d.reason, d.raw, d.native_symbol) for d in res.dead_letters],
        list(res.requests),
        list(res.sends),
        list(res.resyncs),
        res.reconnect,
    )


def final(ad: BinanceAdapter) -> tuple:
    return (
        {k: s.stats.as_dict() for k, s in ad.states.items()},
        dict(ad.ignored),
        ad.dead_letter_count,
        {
            k: (s.px.scale, s.px.locked, s.sz.scale, s.sz.locked, s.book.seq, s.book.synced, s.book.exchange_ts)
            for k, s in ad.states.items()
        },
        {k: (list(s.book.top_bids(10**6)), list(s.book.top_asks(10**6))) for k, s in ad.states.items()},
        {k: [(d, f, r) for d, f, r in s.buffer] for k, s in ad.states.items()},
    )


def variants(rec: Record) -> list[bytes]:
    """The frame with each field of its event deleted or replaced by each odd value, then itself."""
    msg = orjson.loads(rec.payload)
    data = msg.get("data", msg) if type(msg) is dict else None
    out = []
    if type(data) is dict and data.get("e", "bookTicker") in ("aggTrade", "depthUpdate", "bookTicker"):
        for key in list(data):
            for v in [*ODD, "<del>"]:
                m = orjson.loads(rec.payload)
                d = m.get("data", m)
                if v == "<del>":
                    del d[key]
                else:
                    d[key] = v
                out.append(orjson.dumps(m))
    return [*out, rec.payload]


def run(ad: BinanceAdapter, recs: list[Record], frames_of) -> list[tuple]:
    got = []
    for rec in recs:
        if rec.kind == REST:
            got.append(outcome(ad.on_rest(rest_request_for(rec), 200, rec.payload, rec.recv_ts_us)))
        elif rec.kind == WS:
            for f in frames_of(rec):
                got.append(outcome(ad.on_frame(f, rec.recv_ts_us)))
    got.append(final(ad))
    return got


def assert_same(cls: type[BinanceAdapter], recs: list[Record], frames_of) -> Counting:
    want = run(checked_only(cls(snapshot_depth=10**6)), recs, frames_of)
    counting = Counting()
    got = run(counting.wrap(cls(snapshot_depth=10**6)), recs, frames_of)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"output {i} differs"
    return counting


def kinds(recs: list[Record]) -> dict[str, int]:
    n: dict[str, int] = {}
    for r in recs:
        if r.kind == WS:
            m = orjson.loads(r.payload)
            d = m.get("data", m)
            e = d.get("e", "bookTicker" if "B" in d and "A" in d else "")
            n[e] = n.get(e, 0) + 1
    return n


@pytest.mark.parametrize(
    ("cls", "path", "limit"),
    [
        (BinanceUsdmAdapter, BINANCE_USDM_CF, None),
        (BinanceUsdmAdapter, BINANCE_USDM_TARDIS, None),
        (BinanceSpotAdapter, BINANCE_SPOT_CF, None),
        (BinanceSpotAdapter, BINANCE_SPOT_HFT, 6000),
        (BinanceSpotAdapter, BINANCE_SPOT_TARDIS, None),
    ],
)
def test_fast_paths_equal_the_checked_paths_on_genuine_frames(cls, path, limit):
    recs = records(path)[:limit]
    counting = assert_same(cls, recs, lambda rec: [rec.payload])
    n = kinds(recs)
    # the genuine frames take the fast paths (not: diffs buffered before a snapshot, trades
    # before the first snapshot locks the scales, as in the short tardis fixtures)
    for e in ("aggTrade", "depthUpdate", "bookTicker"):
        if n.get(e, 0) > 50:
            assert counting.checked[e] < n[e] * 0.1, (e, counting.checked[e], n[e])


@pytest.mark.parametrize(
    ("cls", "path"), [(BinanceUsdmAdapter, BINANCE_USDM_CF), (BinanceSpotAdapter, BINANCE_SPOT_CF)]
)
def test_fast_paths_equal_the_checked_paths_on_altered_fields(cls, path):
    """Every field of aggTrade, depth and bookTicker frames deleted or replaced by odd values, each
    variant fed to both adapters as they stand at that frame: the first such frame (book not
    synced yet) and the first one of a synced book. Compared: the frame's outcome (events,
    dead letters, resync requests) and the adapters' whole state after it."""
    recs = records(path)
    fast, ref = cls(snapshot_depth=10**6), checked_only(cls(snapshot_depth=10**6))  # deep-copied below
    done: set[tuple[str, bool]] = set()
    tried = 0
    for rec in recs:
        if rec.kind == WS:
            m = orjson.loads(rec.payload)
            d = m.get("data", m)
            st = fast.states.get(d.get("s"))
            e = d.get("e", "bookTicker" if "B" in d and "A" in d else "")
            key = (e, st is not None and st.book.synced)
            if e in ("aggTrade", "depthUpdate", "bookTicker") and key not in done:
                done.add(key)
                for frame in variants(rec):
                    f2, r2 = clone(fast), clone(ref)
                    assert outcome(f2.on_frame(frame, rec.recv_ts_us)) == outcome(r2.on_frame(frame, rec.recv_ts_us))
                    assert final(f2) == final(r2), frame
                    tried += 1
        assert run(fast, [rec], lambda r: [r.payload]) == run(ref, [rec], lambda r: [r.payload])
    want = {("depthUpdate", False), ("depthUpdate", True), ("bookTicker", True)}
    if cls is BinanceUsdmAdapter:
        want |= {("aggTrade", True)}
    assert want <= done and tried > 150


@pytest.mark.parametrize("seed", range(4))
def test_fast_paths_equal_the_checked_paths_on_fuzzed_frames(seed):
    """The fuzzer's mutations (tests/fuzz/engine.py) of a third of the frames, seeded."""
    for cls, path in ((BinanceUsdmAdapter, BINANCE_USDM_CF), (BinanceSpotAdapter, BINANCE_SPOT_HFT)):
        rnd = random.Random(seed)
        recs = records(path)[:3000]
        mutated = {id(r): engine.mutate_payload(r.payload, rnd) for r in recs if rnd.random() < 0.3}
        assert_same(cls, recs, lambda rec, m=mutated: [m.get(id(rec), rec.payload)])


def test_parse_scaled_equals_to_scaled_on_capture_strings_and_odd_ones():
    """``parse_scaled``'s shortcuts (exact decimals, plain integers) give what the deciding
    ``schemas.scaled.to_scaled`` gives, or refuse where it refuses, at every scale."""
    texts: set[str] = set()
    for rec in records(BINANCE_USDM_CF)[:400]:
        d = orjson.loads(rec.payload)
        d = d.get("data", d) if type(d) is dict else {}
        for side in ("b", "a", "bids", "asks"):
            if type(d.get(side)) is list:
                texts.update(v for lv in d[side] for v in lv if type(v) is str)
        texts.update(v for k, v in d.items() if k in ("p", "q") and type(v) is str)
    assert len(texts) > 500
    texts |= {"0", "00", "007", "9223372036854775807", "9223372036854775808", "1" * 30, "", ".", "1.", ".5", "1.5."}
    texts |= {"+1", "-1", " 1", "1 ", "1_0", "\u0663", "\u00b2", "1e3", "1.50", "0.000", "12.3400", "1.2.3", "nan"}
    for t in sorted(texts):
        for scale in range(19):
            try:
                want: Any = to_scaled(t, scale)
            except ScaleError:
                want = ScaleError
            try:
                got: Any = parse_scaled(t, scale)
            except ScaleError:
                got = ScaleError
            assert got == want, (t, scale)

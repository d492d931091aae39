"""L2 book level updates/s: orderbook.L2Book beside the C `order-book` package.

Both books get the same update stream, taken from genuine captures (the hftbacktest
BTCUSDT spot depth diffs after their REST snapshot, and the Bybit XRPUSDT ob500 deltas),
as scaled integers, and apply it level by level:

  - without reading the book, and
  - reading the best bid and best ask after every level update,

plus the adapters' own path (one ``apply`` per venue message, then best bid/ask). The
two books must agree on the top of book at the end, so both did the same work. Level by
level, each book is driven through its own per-level write, a mapping store: the C
book's side mapping (a delete is ``del``, after a membership test since deleting a missing
level is normal) and ours ``bid_qty``/``ask_qty`` (a store of 0 deletes). The "floor"
rows time the same loops on a bare dict (and, for the reads, two calls of a method that
does nothing): no pure-Python book goes below them, so they show which part of a ratio is
the interpreter's.
`order-book` is GPL and an anchor only: it is imported here and nowhere else.

    python bench/bench_book.py [--rounds 5] [--smoke]

--smoke (CI): the first 300 messages of each stream, one round; without the '.[bench]'
extra the C side is left out. Figures are also printed as machine-readable lines
(bench/figures.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collectors.capture import REST, read  # noqa: E402
from orderbook import L2Book  # noqa: E402
from schemas.scaled import to_scaled as parse_scaled  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


def binance_stream():
    """(snapshot bids, asks, [message: [(side, px, qty), ...]]) from the hftbacktest capture."""
    snap, msgs, scale = None, [], 8
    for rec in read(SAMPLES / "binance" / "hftbacktest_spot_btcusdt_20240808.gz"):
        m = json.loads(rec.payload)
        if rec.kind == REST:
            snap = m
            continue
        d = m.get("data", {})
        if d.get("e") != "depthUpdate" or snap is None or d["u"] <= snap["lastUpdateId"]:
            continue
        msgs.append(
            [(0, parse_scaled(p, scale), parse_scaled(q, scale)) for p, q in d["b"]]
            + [(1, parse_scaled(p, scale), parse_scaled(q, scale)) for p, q in d["a"]]
        )
    bids = [(parse_scaled(p, scale), parse_scaled(q, scale)) for p, q in snap["bids"]]
    asks = [(parse_scaled(p, scale), parse_scaled(q, scale)) for p, q in snap["asks"]]
    return bids, asks, msgs


def bybit_stream():
    rows = [json.loads(r.payload) for r in read(SAMPLES / "bybit" / "nautilus_2024-12-01_XRPUSDT_ob500.data.zip")]
    ps, ss = 4, 0
    snap = rows[0]["data"]
    msgs = [
        [(0, parse_scaled(p, ps), parse_scaled(q, ss)) for p, q in r["data"]["b"]]
        + [(1, parse_scaled(p, ps), parse_scaled(q, ss)) for p, q in r["data"]["a"]]
        for r in rows[1:]
    ]
    return (
        [(parse_scaled(p, ps), parse_scaled(q, ss)) for p, q in snap["b"]],
        [(parse_scaled(p, ps), parse_scaled(q, ss)) for p, q in snap["a"]],
        msgs,
    )


# -- the two books under the same drivers -------------------------------------------------------


def ours_levels(bids, asks, updates, read_top):
    book = L2Book()
    book.apply_snapshot(bids, asks)
    B, A, bb, ba = book.bid_qty, book.ask_qty, book.best_bid, book.best_ask
    gc.disable()
    t = time.process_time()
    if read_top:
        for s, p, q in updates:
            (A if s else B)[p] = q
            bb()
            ba()
    else:
        for s, p, q in updates:
            (A if s else B)[p] = q
    dt = time.process_time() - t
    gc.enable()
    return dt, (book.best_bid(), book.best_ask())


class _Nop:
    def read(self) -> None:
        return None


def floor_levels(bids, asks, updates, read_top):
    """What no pure-Python per-level book can beat: the same loop storing into a bare dict
    (no order kept), and for the reads two calls of a method that does nothing."""
    B, A = dict(bids), dict(asks)
    nop = _Nop().read
    gc.disable()
    t = time.process_time()
    if read_top:
        for s, p, q in updates:
            (A if s else B)[p] = q
            nop()
            nop()
    else:
        for s, p, q in updates:
            (A if s else B)[p] = q
    dt = time.process_time() - t
    gc.enable()
    return dt, None


def c_levels(bids, asks, updates, read_top):
    import order_book

    ob = order_book.OrderBook()
    B, A = ob.bids, ob.asks
    for p, q in bids:
        B[p] = q
    for p, q in asks:
        A[p] = q
    gc.disable()
    t = time.process_time()
    if read_top:
        for s, p, q in updates:
            side = A if s else B
            if q:
                side[p] = q
            elif p in side:
                del side[p]
            B.index(0)
            A.index(0)
    else:
        for s, p, q in updates:
            side = A if s else B
            if q:
                side[p] = q
            elif p in side:
                del side[p]
    dt = time.process_time() - t
    gc.enable()
    top = (tuple(B.index(0)) if len(B) else None, tuple(A.index(0)) if len(A) else None)
    return dt, top


def ours_apply(bids, asks, msgs):
    """Level updates with no reads through the adapters' own call: one apply() per venue message."""
    book = L2Book()
    book.apply_snapshot(bids, asks)
    split = [([(p, q) for s, p, q in m if not s], [(p, q) for s, p, q in m if s]) for m in msgs]
    apply = book.apply
    gc.disable()
    t = time.process_time()
    for b, a in split:
        apply(b, a)
    dt = time.process_time() - t
    gc.enable()
    return dt, (book.best_bid(), book.best_ask())


def ours_messages(bids, asks, msgs):
    """The adapters' path: one apply() per venue message, then best bid/ask; per-message latency."""
    book = L2Book()
    book.apply_snapshot(bids, asks)
    split = [([(p, q) for s, p, q in m if not s], [(p, q) for s, p, q in m if s]) for m in msgs]
    lat = []
    pc = time.perf_counter_ns
    gc.disable()
    t0 = time.process_time()
    for b, a in split:
        t = pc()
        book.apply(b, a)
        book.best_bid()
        book.best_ask()
        lat.append(pc() - t)
    dt = time.process_time() - t0
    gc.enable()
    return dt, lat, (book.best_bid(), book.best_ask())


def c_messages(bids, asks, msgs):
    import order_book

    ob = order_book.OrderBook()
    B, A = ob.bids, ob.asks
    for p, q in bids:
        B[p] = q
    for p, q in asks:
        A[p] = q
    lat = []
    pc = time.perf_counter_ns
    gc.disable()
    t0 = time.process_time()
    for m in msgs:
        t = pc()
        for s, p, q in m:
            side = A if s else B
            if q:
                side[p] = q
            elif p in side:
                del side[p]
        B.index(0)
        A.index(0)
        lat.append(pc() - t)
    dt = time.process_time() - t0
    gc.enable()
    return dt, lat, (tuple(B.index(0)), tuple(A.index(0)))


def best(fn, rounds, *args):
    runs = [fn(*args) for _ in range(rounds)]
    return min(runs, key=lambda r: r[0])


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _have_c() -> bool:
    try:
        import order_book  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    from figures import emit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="300 messages per stream, one round: plumbing only")
    ap.add_argument(
        "--c-read-limit",
        type=int,
        default=20_000,
        help="updates given to order-book when reading the top after each (it re-sorts on read)",
    )
    args = ap.parse_args()
    if args.smoke:
        args.rounds = 1
    have_c = _have_c()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    except (AttributeError, OSError):
        pass
    print(f"L2 book benchmark  (python {sys.version.split()[0]}, one core, best of {args.rounds})")
    print(f"{'stream':<28}{'mode':<34}{'ours upd/s':>14}{'order-book upd/s':>18}{'ours/C':>9}")
    for name, (bids, asks, msgs) in (
        ("binance BTCUSDT diffs", binance_stream()),
        ("bybit XRPUSDT ob500", bybit_stream()),
    ):
        if args.smoke:
            msgs = msgs[:300]
        updates = stream = [u for m in msgs for u in m]
        # short streams are timed over more rounds (never by repeating updates: a replayed
        # insert would hit an existing level and flatter both books)
        rounds = 1 if args.smoke else max(args.rounds, min(200, 100_000 // len(updates)))
        c_name = "C order-book (same updates)" if have_c else None
        nan = float("nan")

        def fig(mode: str) -> str:
            return f"L2 book {name}: {mode.strip()}"

        def row(mode: str, rate_o: float, rate_c: float | None, target: str, floor: str | None = None) -> None:
            print(f"{name:<28}{mode:<34}{rate_o:>14,.0f}{rate_c or nan:>18,.0f}{rate_o / (rate_c or nan):>9.2f}")
            emit(fig(mode), rate_o, "updates/s", c_name, rate_c, target, floor=floor and fig(floor))

        # each floor row bounds the target rows that name it: same loop, same updates, same C baseline
        store_floor, read_floor = "floor: bare dict store, same loop", "floor: store + two no-op calls"

        d_o, top_o = best(ours_levels, rounds, bids, asks, stream, False)
        d_c = None
        if have_c:
            d_c, top_c = best(c_levels, rounds, bids, asks, stream, False)
            assert top_o == top_c, (top_o, top_c)
        row("level updates, no reads", len(stream) / d_o, d_c and len(stream) / d_c, "≥ 1× C", store_floor)
        d_f, _ = best(floor_levels, rounds, bids, asks, stream, False)
        row("  " + store_floor, len(stream) / d_f, d_c and len(stream) / d_c, "")
        d_m, top_m = best(ours_apply, rounds, bids, asks, msgs)
        if have_c:
            assert top_m == top_c, (top_m, top_c)
        row("level updates, no reads, apply()", len(stream) / d_m, d_c and len(stream) / d_c, "≥ 1× C", store_floor)
        d_o, top_o = best(ours_levels, rounds, bids, asks, stream, True)
        lim = stream[: args.c_read_limit]
        rate_c = None
        if have_c:
            d_c, _ = best(c_levels, max(1, rounds // 2), bids, asks, lim, True)
            rate_c = len(lim) / d_c
        row("level updates + best bid/ask each", len(stream) / d_o, rate_c, "≥ 10× C", read_floor)
        d_f, _ = best(floor_levels, rounds, bids, asks, stream, True)
        row("  " + read_floor, len(stream) / d_f, rate_c, "")
        d_o, lat_o, top_o = best(ours_messages, rounds, bids, asks, msgs)
        lat_c, d_c = [0], None
        if have_c:
            d_c, lat_c, top_c = best(c_messages, rounds, bids, asks, msgs)
            assert top_o == top_c, (top_o, top_c)
        n = len(updates)
        row("per message: apply + best bid/ask", n / d_o, d_c and n / d_c, "")
        print(
            f"{'':<28}{'  message latency p50 / p99 (us)':<34}"
            f"{pct(lat_o, 0.5) / 1e3:>6.1f} /{pct(lat_o, 0.99) / 1e3:>6.1f}"
            f"{pct(lat_c, 0.5) / 1e3:>10.1f} /{pct(lat_c, 0.99) / 1e3:>6.1f}"
        )
        print(
            f"{'':<28}{'  messages, levels/message':<34}{len(msgs):>14,}{statistics.mean(len(m) for m in msgs):>18.1f}"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (both books, one process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The feature spec: events (features.inputs.INPUT_SCHEMA) -> 1-second rows (features.spec).

Pure and deterministic: the same events in any row order give bit-identical output, so
streaming (window by window, state carried between calls), the local batch asset (an
hour at a time) and Spark (`applyInArrow`, one symbol per call) agree exactly. What makes
that hold:

* events are sorted by (instrument, exchange_ts, kind, seq, event_id) before anything
  else, so arrival order never matters;
* integer quantities stay integers (decimal256 for price*size), floats are produced only
  by correctly rounded int/int division, math.log/sqrt of those, and math.fsum (whose
  result does not depend on summation order);
* everything that spans windows (the book, the last mid, the 60 s of squared returns)
  lives in FeatureState, which a caller passes back in for the next windows and which
  serializes losslessly to JSON for checkpoints.

A window gets a row when the instrument has at least one trade or book event in it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from features.inputs import INPUT_SCHEMA
from features.spec import (
    DEPTH_BPS,
    FEATURE_SCHEMA,
    SPEC_VERSION,
    TOP_LEVELS,
    VOL_WINDOW_US,
    WINDOW_US,
    feature_event_id,
)
from orderbook import L2Book

KIND_RANK = {"book_snapshot": 0, "book_delta": 1, "trade": 2}
_KEYS = ["exchange", "market", "symbol", "window_start"]

InstrumentKey = tuple[str, str, str]


@dataclass(slots=True)
class SymbolState:
    book: L2Book = field(default_factory=L2Book)
    last_mid: float | None = None
    returns: deque = field(default_factory=deque)  # (window_start, squared log return)
    last_window: int = -1  # newest window already computed

    def to_state(self) -> dict:
        return {
            "book": self.book.to_state(),
            "last_mid": self.last_mid,
            "ret": [list(x) for x in self.returns],
            "last_window": self.last_window,
        }

    @classmethod
    def from_state(cls, d: dict) -> SymbolState:
        return cls(
            L2Book.from_state(d["book"]),
            d["last_mid"],
            deque((int(w), float(r)) for w, r in d["ret"]),
            int(d["last_window"]),
        )


@dataclass(slots=True)
class FeatureState:
    symbols: dict[InstrumentKey, SymbolState] = field(default_factory=dict)

    def get(self, key: InstrumentKey) -> SymbolState:
        st = self.symbols.get(key)
        if st is None:
            st = self.symbols[key] = SymbolState()
        return st

    def to_state(self) -> dict:
        return {"v": SPEC_VERSION, "symbols": [[list(k), s.to_state()] for k, s in sorted(self.symbols.items())]}

    @classmethod
    def from_state(cls, d: dict) -> FeatureState:
        if d.get("v") != SPEC_VERSION:
            raise ValueError(f"feature state of spec v{d.get('v')} cannot seed spec v{SPEC_VERSION}")
        return cls({tuple(k): SymbolState.from_state(s) for k, s in d["symbols"]})


class LateWindowError(ValueError):
    """Events for a window at or before one already computed with this state."""


def prepare(events: pa.Table) -> pa.Table:
    """Add window_start and the kind rank, and sort into the spec's canonical order."""
    if events.schema != INPUT_SCHEMA:
        events = events.select(INPUT_SCHEMA.names).cast(INPUT_SCHEMA)
    ts = events["exchange_ts"]
    if events.num_rows and pc.min(ts).as_py() < 0:
        raise ValueError("exchange_ts must be positive µs since the epoch")
    ws = pc.multiply(pc.divide(ts, WINDOW_US), WINDOW_US)  # integer division: floor for ts >= 0
    rank = pc.index_in(events["kind"], value_set=pa.array(list(KIND_RANK)))
    if pc.any(pc.is_null(rank)).as_py():
        bad = pc.unique(pc.filter(events["kind"], pc.is_null(rank))).to_pylist()
        raise ValueError(f"feature input has unsupported kinds {bad}")
    t = events.append_column("window_start", ws).append_column("rank", rank)
    return t.sort_by(
        [
            ("exchange", "ascending"),
            ("market", "ascending"),
            ("symbol", "ascending"),
            ("exchange_ts", "ascending"),
            ("rank", "ascending"),
            ("seq", "ascending"),
            ("event_id", "ascending"),
        ]
    )


def _scale_up(values: pa.ChunkedArray, scales: pa.ChunkedArray, target: list[int]) -> pa.Array:
    """values * 10**(target - scale) per row (exact; used only when scales are mixed)."""
    return pa.array([v * 10 ** (t - s) for v, s, t in zip(values.to_pylist(), scales.to_pylist(), target)], pa.int64())


def _mixed_scales(trades: pa.Table) -> bool:
    """Whether some (instrument, window) has trades at different scales. Instruments differ
    in scale as a rule, so a batch of several is not mixed on that account (asking the whole
    batch sent every multi-instrument batch down the per-row path)."""
    ps, ss = pc.min_max(trades["price_scale"]), pc.min_max(trades["size_scale"])
    if ps["min"] == ps["max"] and ss["min"] == ss["max"]:
        return False
    g = trades.group_by(_KEYS, use_threads=False).aggregate(
        [("price_scale", "min"), ("price_scale", "max"), ("size_scale", "min"), ("size_scale", "max")]
    )
    return not (g["price_scale_min"].equals(g["price_scale_max"]) and g["size_scale_min"].equals(g["size_scale_max"]))


def _trade_aggregates(trades: pa.Table) -> dict[tuple, dict]:
    """Per (instrument, window): count, volumes, OHLC and notional at the window's trade scales."""
    if trades.num_rows == 0:
        return {}
    ps, ss = trades["price_scale"], trades["size_scale"]
    px, qty = trades["px"], trades["qty"]
    if _mixed_scales(trades):  # rare (an instrument's tick changed inside a window): align it to its max scale
        keys = list(zip(*(trades[k].to_pylist() for k in _KEYS)))
        wps: dict = {}
        wss: dict = {}
        for k, p, s in zip(keys, ps.to_pylist(), ss.to_pylist()):
            wps[k] = max(wps.get(k, 0), p)
            wss[k] = max(wss.get(k, 0), s)
        px = _scale_up(px, ps, [wps[k] for k in keys])
        qty = _scale_up(qty, ss, [wss[k] for k in keys])
        ps = pa.array([wps[k] for k in keys], pa.int32())
        ss = pa.array([wss[k] for k in keys], pa.int32())
    side = trades["side"]
    zero = pa.scalar(0, pa.int64())
    t = pa.table(
        {
            **{k: trades[k] for k in _KEYS},
            "px": px,
            "qty": qty,
            "ps": ps,
            "ss": ss,
            "buy": pc.if_else(pc.equal(side, "buy"), qty, zero),
            "sell": pc.if_else(pc.equal(side, "sell"), qty, zero),
            "notional": pc.multiply(pc.cast(px, pa.decimal256(19, 0)), pc.cast(qty, pa.decimal256(19, 0))),
        }
    )
    agg = t.group_by(_KEYS, use_threads=False).aggregate(
        [
            ("px", "count"),
            ("qty", "sum"),
            ("buy", "sum"),
            ("sell", "sum"),
            ("px", "first"),
            ("px", "max"),
            ("px", "min"),
            ("px", "last"),
            ("notional", "sum"),
            ("ps", "max"),
            ("ss", "max"),
        ]
    )
    out: dict[tuple, dict] = {}
    for r in agg.to_pylist():
        out[(r["exchange"], r["market"], r["symbol"], r["window_start"])] = r
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _book_features(book: L2Book) -> dict:
    """Book columns at a window end, all computed from exact integers."""
    nulls = dict.fromkeys(
        (
            "best_bid_px",
            "best_bid_qty",
            "best_ask_px",
            "best_ask_qty",
            "spread_px",
            "mid_px",
            "microprice",
            "imbalance_10",
            "depth_bid_10bps",
            "depth_ask_10bps",
        )
    )
    nulls["book_seq"] = book.seq if book.synced else None
    bids, asks = book.top_bids(TOP_LEVELS), book.top_asks(TOP_LEVELS)
    if not book.synced or not bids or not asks:
        return nulls
    (bp, bq), (ap, aq) = bids[0], asks[0]
    unit = 10**book.price_scale
    two_mid = bp + ap  # 2*mid in price units: keeps the bps tests integer
    lo = two_mid * (10_000 - DEPTH_BPS)  # bid px * 20_000 >= lo  <=> px >= mid*(1-bps)
    hi = two_mid * (10_000 + DEPTH_BPS)
    sb = sum(q for _, q in bids)
    sa = sum(q for _, q in asks)
    return {
        "book_seq": book.seq,
        "best_bid_px": bp,
        "best_bid_qty": bq,
        "best_ask_px": ap,
        "best_ask_qty": aq,
        "spread_px": ap - bp,
        "mid_px": two_mid / (2 * unit),
        "microprice": _ratio(bp * aq + ap * bq, (bq + aq) * unit),
        "imbalance_10": _ratio(sb - sa, sb + sa),
        "depth_bid_10bps": sum(q for px, q in book.bids.items() if px * 20_000 >= lo),
        "depth_ask_10bps": sum(q for px, q in book.asks.items() if px * 20_000 <= hi),
    }


def _apply_book_event(book: L2Book, snapshot: bool, seq: int, bids, asks, price_scale: int, size_scale: int) -> None:
    """A snapshot replaces the book at its scales; a delta is ignored before the first
    snapshot and when the snapshot already contains it (seq <= book seq), else applied at
    the largest scales seen."""
    if snapshot:
        book.apply_snapshot(bids, asks, seq, price_scale, size_scale)
    elif book.synced and not (seq and book.seq and seq <= book.seq):
        book.apply_scaled(bids, asks, price_scale, size_scale)
        if seq:
            book.seq = seq


def _level_pairs(col: pa.ChunkedArray) -> list[list[tuple[int, int]]]:
    """A bids/asks column as one list of (px, qty) pairs per row, from the flat level
    columns (to_pylist would build a dict per level)."""
    arr = col.combine_chunks()
    px, qty = arr.values.flatten()
    pairs = list(zip(px.to_pylist(), qty.to_pylist()))
    off = arr.offsets.to_pylist()
    return [pairs[a:b] for a, b in zip(off, off[1:])]


def compute_features(events: pa.Table, state: FeatureState | None = None) -> tuple[pa.Table, FeatureState]:
    """Rows for every (instrument, window) present in `events`, in (instrument, window) order.

    `state` carries books and rolling values from earlier calls and is updated in place
    (and returned). Windows must be newer than any already computed with the same state;
    otherwise LateWindowError (the streaming caller routes such events to dlq.features).
    """
    state = state if state is not None else FeatureState()
    if events.num_rows == 0:
        return FEATURE_SCHEMA.empty_table(), state
    t = prepare(events)
    # group_by does not promise first-appearance order, so the windows are sorted explicitly:
    # the book events below are consumed in exactly this order.
    windows = (
        t.group_by(_KEYS, use_threads=False)
        .aggregate(
            [
                ("exchange_ts", "max"),
                ("exchange_ts", "count"),
                ("price_scale", "max"),
                ("size_scale", "max"),
            ]
        )
        .sort_by([(k, "ascending") for k in _KEYS])
        .to_pylist()
    )
    for w in windows:
        st = state.symbols.get((w["exchange"], w["market"], w["symbol"]))
        if st is not None and w["window_start"] <= st.last_window:
            raise LateWindowError(
                f"{w['symbol']} window {w['window_start']} is not after the last computed window {st.last_window}"
            )
    is_trade = pc.equal(t["kind"], "trade")
    trades = _trade_aggregates(t.filter(is_trade))
    book = t.filter(pc.invert(is_trade))
    # the book events column by column, in the canonical order (no dict per row or level)
    b_key = list(zip(*(book[k].to_pylist() for k in _KEYS)))
    b_snap = pc.equal(book["kind"], "book_snapshot").to_pylist()
    b_seq, b_ps, b_ss = (book[k].to_pylist() for k in ("seq", "price_scale", "size_scale"))
    b_bids, b_asks = _level_pairs(book["bids"]), _level_pairs(book["asks"])
    n_rows = len(b_key)
    bi = 0
    cols: dict[str, list] = {f.name: [] for f in FEATURE_SCHEMA}
    for w in windows:
        key = (w["exchange"], w["market"], w["symbol"])
        ws = w["window_start"]
        st = state.get(key)
        n_book = 0
        wkey = (*key, ws)
        while bi < n_rows and b_key[bi] == wkey:
            _apply_book_event(st.book, b_snap[bi], b_seq[bi], b_bids[bi], b_asks[bi], b_ps[bi], b_ss[bi])
            n_book += 1
            bi += 1
        bf = _book_features(st.book)
        tr = trades.get((*key, ws))
        ps = max(st.book.price_scale if st.book.synced else 0, tr["ps_max"] if tr else 0, w["price_scale_max"])
        ss = max(st.book.size_scale if st.book.synced else 0, tr["ss_max"] if tr else 0, w["size_scale_max"])
        # Book integers to the row scale (exact up-scaling; equal scales in practice).
        fpb, fqb = 10 ** (ps - st.book.price_scale), 10 ** (ss - st.book.size_scale)
        for c in ("best_bid_px", "best_ask_px", "spread_px"):
            if bf[c] is not None:
                bf[c] *= fpb
        for c in ("best_bid_qty", "best_ask_qty", "depth_bid_10bps", "depth_ask_10bps"):
            if bf[c] is not None:
                bf[c] *= fqb
        mid = bf["mid_px"]
        if mid is not None:
            if st.last_mid is not None and st.last_mid > 0 and mid > 0:
                r = math.log(mid / st.last_mid)
                st.returns.append((ws, r * r))
            st.last_mid = mid
        while st.returns and st.returns[0][0] <= ws - VOL_WINDOW_US:
            st.returns.popleft()
        rv = math.sqrt(math.fsum(r2 for _, r2 in st.returns)) if st.returns else None
        st.last_window = ws
        if tr:
            fpt, fqt = 10 ** (ps - tr["ps_max"]), 10 ** (ss - tr["ss_max"])
            notional = int(tr["notional_sum"]) * fpt * fqt
            vol, buy, sell = tr["qty_sum"] * fqt, tr["buy_sum"] * fqt, tr["sell_sum"] * fqt
            trade_cols = {
                "trade_count": tr["px_count"],
                "volume": vol,
                "buy_volume": buy,
                "sell_volume": sell,
                "vwap": _ratio(notional, vol * 10**ps),
                "open_px": tr["px_first"] * fpt,
                "high_px": tr["px_max"] * fpt,
                "low_px": tr["px_min"] * fpt,
                "close_px": tr["px_last"] * fpt,
                "trade_imbalance": _ratio(buy - sell, buy + sell),
            }
        else:
            trade_cols = {
                "trade_count": 0,
                "volume": 0,
                "buy_volume": 0,
                "sell_volume": 0,
                "vwap": None,
                "open_px": None,
                "high_px": None,
                "low_px": None,
                "close_px": None,
                "trade_imbalance": None,
            }
        row = {
            "event_id": feature_event_id(*key, ws),
            "exchange": key[0],
            "market": key[1],
            "symbol": key[2],
            "exchange_ts": ws,
            "window_end": ws + WINDOW_US,
            "last_event_ts": w["exchange_ts_max"],
            "price_scale": ps,
            "size_scale": ss,
            "event_count": w["exchange_ts_count"],
            "book_event_count": n_book,
            **bf,
            **trade_cols,
            "realized_vol_60s": rv,
            "spec_version": SPEC_VERSION,
        }
        for c, v in row.items():
            cols[c].append(v)
    return pa.Table.from_pydict(cols, schema=FEATURE_SCHEMA), state


def features_for_group(events: pa.Table, state: FeatureState | None = None) -> pa.Table:
    """Spark `applyInArrow` entry point: all events of one group (e.g. one symbol) in, its
    rows out, starting from `state` (the state the stream had when the group's events begin;
    empty when None: then a group must begin at a snapshot to have book features from its
    first window)."""
    out, _ = compute_features(events, state)
    return out

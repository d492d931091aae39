"""The one input shape of the feature spec: trades and book events of any venue in one table.

The streaming processor builds it from processed envelopes, the batch paths from the
lake's trades / book_snapshots / book_deltas tables; both land here so the spec sees the
same columns whichever runtime feeds it.

Quantities enter the spec in the base asset (schemas/units.py): contract sizes (OKX
SWAP/FUTURES, Bybit inverse) are converted here, trade by trade and level by level at the
level's own price, and `size_scale` becomes the base scale, so volumes and depth of every
venue mean the same thing. Rows without a stated unit (written before units) are base.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import (
    EventType,
    event_type_from_pb,
    exchange_from_pb,
    market_from_pb,
)
from schemas.tables import INSTRUMENT_FIELDS, LEVELS
from schemas.units import ContractUnit, unit_of_envelope, unit_of_row

#: Event types the spec consumes; everything else is ignored by the feature path.
FEATURE_EVENT_TYPES = (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)

INPUT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        *INSTRUMENT_FIELDS,
        pa.field("kind", pa.string(), nullable=False),  # EventType value
        pa.field("exchange_ts", pa.int64(), nullable=False),  # µs UTC
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("price_scale", pa.int32(), nullable=False),
        pa.field("size_scale", pa.int32(), nullable=False),
        pa.field("px", pa.int64(), nullable=False),  # trades; 0 for book events
        pa.field("qty", pa.int64(), nullable=False),
        pa.field("side", pa.string(), nullable=False),  # taker side: buy | sell | ""
        pa.field("bids", LEVELS, nullable=False),  # book events; [] for trades
        pa.field("asks", LEVELS, nullable=False),
    ]
)

_SIDE = {pb.SIDE_BUY: "buy", pb.SIDE_SELL: "sell", pb.SIDE_UNSPECIFIED: ""}
# enum number -> name, built once (the per-event Enum lookups were a measurable share of the cost)
_ET = {et.pb: et for et in EventType}
_EX = {int(v): exchange_from_pb(v).value for v in pb.Exchange.values() if v}
_MK = {int(v): market_from_pb(v).value for v in pb.Market.values() if v}
_KIND = {et.pb: et.value for et in FEATURE_EVENT_TYPES}
_FEATURE_CODES = frozenset(_KIND)
_TRADE, _SNAPSHOT = EventType.TRADE.pb, EventType.BOOK_SNAPSHOT.pb
#: qty_unit numbers whose sizes are base asset already (unit_of_envelope -> None)
_NO_UNIT = frozenset({pb.QTY_UNIT_UNSPECIFIED, pb.QTY_UNIT_BASE})


class _LevelColumns:
    """One side of the book (bids or asks) of a batch as flat columns: every level's px and
    qty in row order and each row's end offset, so the list column is built in one go
    (pa.ListArray over a struct of two int64 arrays) instead of a dict per level."""

    __slots__ = ("offsets", "px", "qty")

    def __init__(self, offsets: list[int] | None = None, px: list[int] | None = None, qty: list[int] | None = None):
        self.offsets: list[int] = [0] if offsets is None else offsets
        self.px: list[int] = [] if px is None else px
        self.qty: list[int] = [] if qty is None else qty

    def add(self, levels, unit: ContractUnit | None, size_scale: int, price_scale: int) -> None:
        """Append one row's levels (pb.Level messages or (px, qty) pairs)."""
        px, qty = self.px, self.qty
        start = len(px)
        for lvl in levels:
            px.append(lvl.px)
            qty.append(lvl.qty)
        if unit is not None:
            _to_base(unit, px, qty, start, len(px), size_scale, price_scale)
        self.offsets.append(len(px))

    def close_row(self) -> None:
        """An empty list for this row (trades)."""
        self.offsets.append(len(self.px))

    def array(self) -> pa.Array:
        items = pa.StructArray.from_arrays(
            [pa.array(self.px, pa.int64()), pa.array(self.qty, pa.int64())], fields=list(LEVELS.value_type)
        )
        return pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), items, type=LEVELS)


def _to_base(
    unit: ContractUnit, px: list[int], qty: list[int], start: int, end: int, size_scale: int, price_scale: int
) -> None:
    """qty[start:end] (contracts) as base asset, in place, each level at its own price: the one
    conversion of book levels for the envelope and the lake paths (schemas.units)."""
    for i in range(start, end):
        qty[i] = unit.to_base(qty[i], size_scale, px[i], price_scale)


class InputColumns:
    """The input table of processed envelopes while it is filled: one definition of it for the
    streaming engine (which appends each record as it is offered, window by window, and builds
    the table when windows close) and for events_from_envelopes (batch, local batch, the Spark
    parity paths). One list per scalar column in INPUT_SCHEMA's order (the enum-valued columns,
    exchange, market, kind and side, collect the enum numbers, named once per column in
    `table`), book levels in flat px/qty lists with row offsets (_LevelColumns); Arrow builds
    every column at once. (A dict per row and per book level, then pa.Table.from_pylist, was
    ~70 % of the feature processor's CPU; building the columns from ~30k envelopes buffered up
    to a second earlier, instead of as each is parsed, another 2-4 µs per event through the
    broker: docs/decisions.md, issue 13.)"""

    __slots__ = ("asks", "bids", "cols")

    def __init__(self) -> None:
        self.cols: list[list] = [[] for _ in INPUT_SCHEMA.names[:-2]]
        self.bids, self.asks = _LevelColumns(), _LevelColumns()

    def __len__(self) -> int:
        return len(self.cols[0])

    def append(self, env: pb.Envelope, code: int) -> None:
        """One envelope whose event type number `code` (env.event_type) is a feature input
        (in _FEATURE_CODES; the caller checked). Sizes in contracts become base-asset sizes
        here, level by level at the level's own price (_to_base)."""
        event_id, exchange, market, symbol, kind, exchange_ts, seq, price_scale, size_scale, px, qty, side = self.cols
        ss, ps = env.size_scale, env.price_scale
        unit = None if env.qty_unit in _NO_UNIT else unit_of_envelope(env)
        event_id.append(env.event_id)
        exchange.append(env.exchange)
        market.append(env.market)
        symbol.append(env.symbol)
        kind.append(code)
        exchange_ts.append(env.exchange_ts)
        seq.append(env.seq)
        price_scale.append(ps)
        bids, asks = self.bids, self.asks
        if code == _TRADE:
            t = env.trade
            size_scale.append(ss if unit is None else unit.base_scale(ss))
            px.append(t.px)
            qty.append(t.qty if unit is None else unit.to_base(t.qty, ss, t.px, ps))
            side.append(t.taker_side)
            bids.offsets.append(len(bids.px))
            asks.offsets.append(len(asks.px))
            return
        b = env.book_snapshot if code == _SNAPSHOT else env.book_delta
        px.append(0)
        qty.append(0)
        side.append(pb.SIDE_UNSPECIFIED)
        if unit is None:
            size_scale.append(ss)
            for levels, lv in ((bids, b.bids), (asks, b.asks)):
                lp, lq = levels.px, levels.qty
                for lvl in lv:
                    lp.append(lvl.px)
                    lq.append(lvl.qty)
                levels.offsets.append(len(lp))
        else:
            size_scale.append(unit.base_scale(ss))
            bids.add(b.bids, unit, ss, ps)
            asks.add(b.asks, unit, ss, ps)

    @staticmethod
    def table_of(parts: list[InputColumns]) -> pa.Table:
        """The rows of `parts` in order as one table: each part built apart and the Arrow
        columns concatenated (copying Arrow buffers is ~0.5 µs per event cheaper than
        extending the Python lists of ~12 windows closed at once, and gives the same table)."""
        if len(parts) == 1:
            return parts[0].table()
        return pa.concat_tables([p.table() for p in parts]).combine_chunks()

    def table(self) -> pa.Table:
        cols: list = list(self.cols)
        cols[1] = _named(cols[1], _EX, lambda c: exchange_from_pb(c).value)
        cols[2] = _named(cols[2], _MK, lambda c: market_from_pb(c).value)
        cols[4] = _named(cols[4], _KIND, lambda c: _ET[c].value)
        cols[11] = _named(cols[11], _SIDE, lambda c: "")
        arrays = [c if isinstance(c, pa.Array) else pa.array(c, f.type) for c, f in zip(cols, INPUT_SCHEMA)]
        return pa.Table.from_arrays([*arrays, self.bids.array(), self.asks.array()], schema=INPUT_SCHEMA)


def events_from_envelopes(envelopes: Iterable[pb.Envelope]) -> pa.Table:
    """The input table of processed envelopes (types the spec does not use are skipped; a
    number no EventType has raises), through InputColumns: the same appender the streaming
    processor fills record by record."""
    cols = InputColumns()
    add = cols.append
    for env in envelopes:
        code = env.event_type
        if code not in _FEATURE_CODES:
            if code not in _ET:
                event_type_from_pb(code)  # raises on a number no EventType has
            continue
        add(env, code)
    return cols.table()


def _named(codes: list[int], names: dict[int, str], other) -> pa.Array:
    """Enum numbers -> their names as a string column: one take from the names array;
    a number outside `names` is named by `other` (which raises where it always did)."""
    if not codes:
        return pa.array([], pa.string())
    if not set(codes) <= names.keys():
        return pa.array([names.get(c) or other(c) for c in codes], pa.string())
    table = pa.array([names.get(i, "") for i in range(max(names) + 1)], pa.string())
    return table.take(pa.array(codes, pa.int32()))


def rows_to_table(rows: Iterable[dict]) -> pa.Table:
    """Hand-written input rows (tests) as the input table."""
    return pa.Table.from_pylist(list(rows), schema=INPUT_SCHEMA)


def _lake_part(table: pa.Table | None, kind: EventType) -> pa.Table | None:
    if table is None or table.num_rows == 0:
        return None
    n = table.num_rows
    ts = table["exchange_ts"]
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(ts, pa.int64())
    empty_levels = pa.array([[]] * n, type=LEVELS)
    zeros = pa.array([0] * n, type=pa.int64())
    cols = {
        "event_id": table["event_id"],
        "exchange": table["exchange"],
        "market": table["market"],
        "symbol": table["symbol"],
        "kind": pa.array([kind.value] * n, pa.string()),
        "exchange_ts": ts,
        "seq": table["seq"],
        "price_scale": table["price_scale"],
        "size_scale": table["size_scale"],
    }
    if kind is EventType.TRADE:
        qty = table["qty"]
        if "base_qty" in table.column_names and table["base_qty"].null_count < n:
            # rows with a unit carry their base size; pre-unit rows (null) are base already
            qty = pc.coalesce(table["base_qty"], table["qty"])
            cols["size_scale"] = pc.coalesce(table["base_size_scale"], table["size_scale"])
        cols.update(px=table["px"], qty=qty, side=table["taker_side"], bids=empty_levels, asks=empty_levels)
    else:
        cols.update(px=zeros, qty=zeros, side=pa.array([""] * n, pa.string()), **_base_book(table))
    return pa.Table.from_pydict({k: cols[k] for k in INPUT_SCHEMA.names}, schema=INPUT_SCHEMA)


def _base_book(table: pa.Table) -> dict:
    """bids/asks (and size_scale) of lake book rows with contract sizes converted to base:
    the level columns taken apart into flat px/qty lists and rebuilt by the same
    _LevelColumns / _to_base as the envelope path."""
    names = table.column_names
    if (
        "qty_unit" not in names
        or not pc.any(pc.and_(pc.is_valid(table["qty_unit"]), pc.not_equal(table["qty_unit"], "base"))).as_py()
    ):
        return {"bids": table["bids"], "asks": table["asks"]}
    units = [
        unit_of_row(u, cv, ccy)
        for u, cv, ccy in zip(
            table["qty_unit"].to_pylist(),
            table["contract_value"].to_pylist(),
            table["contract_value_ccy"].to_pylist(),
        )
    ]
    size_scales, price_scales = table["size_scale"].to_pylist(), table["price_scale"].to_pylist()
    out = {}
    for name in ("bids", "asks"):
        col = table[name].combine_chunks()
        px_arr, qty_arr = col.values.flatten()
        levels = _LevelColumns(col.offsets.to_pylist(), px_arr.to_pylist(), qty_arr.to_pylist())
        for i, unit in enumerate(units):
            if unit is not None:
                lo, hi = levels.offsets[i], levels.offsets[i + 1]
                _to_base(unit, levels.px, levels.qty, lo, hi, size_scales[i], price_scales[i])
        out[name] = levels.array()
    scales = [ss if u is None else u.base_scale(ss) for u, ss in zip(units, size_scales)]
    return {**out, "size_scale": pa.array(scales, pa.int32())}


def events_from_lake(
    trades: pa.Table | None = None, book_snapshots: pa.Table | None = None, book_deltas: pa.Table | None = None
) -> pa.Table:
    """Concatenate the lake's trades / book_snapshots / book_deltas rows into the input shape."""
    parts = [
        p
        for p in (
            _lake_part(trades, EventType.TRADE),
            _lake_part(book_snapshots, EventType.BOOK_SNAPSHOT),
            _lake_part(book_deltas, EventType.BOOK_DELTA),
        )
        if p is not None
    ]
    if not parts:
        return INPUT_SCHEMA.empty_table()
    return pa.concat_tables(parts)

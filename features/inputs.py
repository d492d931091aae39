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
from schemas.units import base_levels, unit_of_envelope, unit_of_row

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


def _levels(levels, unit=None, size_scale: int = 0, price_scale: int = 0) -> list[dict]:
    if unit is None:
        return [{"px": lvl.px, "qty": lvl.qty} for lvl in levels]
    pairs, _ = base_levels(levels, unit, size_scale, price_scale)
    return [{"px": px, "qty": q} for px, q in pairs]


def envelope_row(env: pb.Envelope) -> dict | None:
    """One input row from a processed envelope (None for types the spec does not use)."""
    et = _ET.get(env.event_type) or event_type_from_pb(env.event_type)
    row = {
        "event_id": env.event_id,
        "exchange": _EX.get(env.exchange) or exchange_from_pb(env.exchange).value,
        "market": _MK.get(env.market) or market_from_pb(env.market).value,
        "symbol": env.symbol,
        "kind": et.value,
        "exchange_ts": env.exchange_ts,
        "seq": env.seq,
        "price_scale": env.price_scale,
        "size_scale": env.size_scale,
        "px": 0,
        "qty": 0,
        "side": "",
        "bids": [],
        "asks": [],
    }
    if et not in FEATURE_EVENT_TYPES:
        return None
    unit = unit_of_envelope(env)
    ss, ps = env.size_scale, env.price_scale
    if et is EventType.TRADE:
        t = env.trade
        qty = t.qty if unit is None else unit.to_base(t.qty, ss, t.px, ps)
        row["px"], row["qty"], row["side"] = t.px, qty, _SIDE.get(t.taker_side, "")
    else:
        b = env.book_snapshot if et is EventType.BOOK_SNAPSHOT else env.book_delta
        row["bids"], row["asks"] = _levels(b.bids, unit, ss, ps), _levels(b.asks, unit, ss, ps)
    if unit is not None:
        row["size_scale"] = unit.base_scale(ss)
    return row


def rows_to_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=INPUT_SCHEMA)


def events_from_envelopes(envelopes: Iterable[pb.Envelope]) -> pa.Table:
    return rows_to_table(r for r in (envelope_row(e) for e in envelopes) if r is not None)


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
    """bids/asks (and size_scale) of lake book rows with contract sizes converted to base."""
    names = table.column_names
    if (
        "qty_unit" not in names
        or not pc.any(pc.and_(pc.is_valid(table["qty_unit"]), pc.not_equal(table["qty_unit"], "base"))).as_py()
    ):
        return {"bids": table["bids"], "asks": table["asks"]}
    bids, asks, scales = [], [], []
    rows = table.select(
        ["qty_unit", "contract_value", "contract_value_ccy", "size_scale", "price_scale", "bids", "asks"]
    ).to_pylist()
    for r in rows:
        unit = unit_of_row(r["qty_unit"], r["contract_value"], r["contract_value_ccy"])
        ss, ps = r["size_scale"], r["price_scale"]
        bids.append(_levels([(lv["px"], lv["qty"]) for lv in r["bids"]], unit, ss, ps) if unit else r["bids"])
        asks.append(_levels([(lv["px"], lv["qty"]) for lv in r["asks"]], unit, ss, ps) if unit else r["asks"])
        scales.append(unit.base_scale(ss) if unit else ss)
    return {"bids": pa.array(bids, LEVELS), "asks": pa.array(asks, LEVELS), "size_scale": pa.array(scales, pa.int32())}


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

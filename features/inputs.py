"""The one input shape of the feature spec: trades and book events of any venue in one table.

The streaming processor builds it from processed envelopes, the batch paths from the
lake's trades / book_snapshots / book_deltas tables; both land here so the spec sees the
same columns whichever runtime feeds it.
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
from schemas.tables import LEVELS

#: Event types the spec consumes; everything else is ignored by the feature path.
FEATURE_EVENT_TYPES = (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)

INPUT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("market", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),          # EventType value
    pa.field("exchange_ts", pa.int64(), nullable=False),    # µs UTC
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("price_scale", pa.int32(), nullable=False),
    pa.field("size_scale", pa.int32(), nullable=False),
    pa.field("px", pa.int64(), nullable=False),             # trades; 0 for book events
    pa.field("qty", pa.int64(), nullable=False),
    pa.field("side", pa.string(), nullable=False),          # taker side: buy | sell | ""
    pa.field("bids", LEVELS, nullable=False),               # book events; [] for trades
    pa.field("asks", LEVELS, nullable=False),
])

_SIDE = {pb.SIDE_BUY: "buy", pb.SIDE_SELL: "sell", pb.SIDE_UNSPECIFIED: ""}
# enum number -> name, built once (the per-event Enum lookups were a measurable share of the cost)
_ET = {et.pb: et for et in EventType}
_EX = {int(v): exchange_from_pb(v).value for v in pb.Exchange.values() if v}
_MK = {int(v): market_from_pb(v).value for v in pb.Market.values() if v}


def _levels(levels) -> list[dict]:
    return [{"px": lvl.px, "qty": lvl.qty} for lvl in levels]


def envelope_row(env: pb.Envelope) -> dict | None:
    """One input row from a processed envelope (None for types the spec does not use)."""
    et = _ET.get(env.event_type) or event_type_from_pb(env.event_type)
    row = {
        "event_id": env.event_id, "exchange": _EX.get(env.exchange) or exchange_from_pb(env.exchange).value,
        "market": _MK.get(env.market) or market_from_pb(env.market).value, "symbol": env.symbol, "kind": et.value,
        "exchange_ts": env.exchange_ts, "seq": env.seq, "price_scale": env.price_scale,
        "size_scale": env.size_scale, "px": 0, "qty": 0, "side": "", "bids": [], "asks": [],
    }
    if et is EventType.TRADE:
        t = env.trade
        row["px"], row["qty"], row["side"] = t.px, t.qty, _SIDE.get(t.taker_side, "")
    elif et is EventType.BOOK_SNAPSHOT:
        row["bids"], row["asks"] = _levels(env.book_snapshot.bids), _levels(env.book_snapshot.asks)
    elif et is EventType.BOOK_DELTA:
        row["bids"], row["asks"] = _levels(env.book_delta.bids), _levels(env.book_delta.asks)
    else:
        return None
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
        "event_id": table["event_id"], "exchange": table["exchange"], "market": table["market"],
        "symbol": table["symbol"], "kind": pa.array([kind.value] * n, pa.string()),
        "exchange_ts": ts, "seq": table["seq"], "price_scale": table["price_scale"],
        "size_scale": table["size_scale"],
    }
    if kind is EventType.TRADE:
        cols.update(px=table["px"], qty=table["qty"], side=table["taker_side"],
                    bids=empty_levels, asks=empty_levels)
    else:
        cols.update(px=zeros, qty=zeros, side=pa.array([""] * n, pa.string()),
                    bids=table["bids"], asks=table["asks"])
    return pa.Table.from_pydict({k: cols[k] for k in INPUT_SCHEMA.names}, schema=INPUT_SCHEMA)


def events_from_lake(trades: pa.Table | None = None, book_snapshots: pa.Table | None = None,
                     book_deltas: pa.Table | None = None) -> pa.Table:
    """Concatenate the lake's trades / book_snapshots / book_deltas rows into the input shape."""
    parts = [p for p in (_lake_part(trades, EventType.TRADE),
                         _lake_part(book_snapshots, EventType.BOOK_SNAPSHOT),
                         _lake_part(book_deltas, EventType.BOOK_DELTA)) if p is not None]
    if not parts:
        return INPUT_SCHEMA.empty_table()
    return pa.concat_tables(parts)

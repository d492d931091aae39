"""Lake table specs: one Arrow schema per event type, and everything derived from it.

The Arrow schema is the single definition; the Iceberg schema, partition spec, sort
order, pandera model and the envelope <-> row conversion all come from the spec below.
Partitioning is hour(exchange_ts) + exchange + market (symbol is pruned by sort order and
file statistics; see ARCHITECTURE §3 for why symbol is not a partition).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from schemas.model import EventType

NAMESPACE = "market"
TS = pa.timestamp("us", tz="UTC")
#: Every table is partitioned by hour(exchange_ts) and every lake product is hourly: one hour in µs.
HOUR_US = 3_600_000_000
LEVEL = pa.struct([pa.field("px", pa.int64(), nullable=False), pa.field("qty", pa.int64(), nullable=False)])
LEVELS = pa.list_(pa.field("element", LEVEL, nullable=False))


def column(name: str, typ: pa.DataType, nullable: bool = False) -> pa.Field:
    """A lake column: required unless said otherwise (the lake schemas' default)."""
    return pa.field(name, typ, nullable=nullable)


#: The instrument of a row, in every lake table and every table derived from one: TableSpec
#: partitions on exchange and market and sorts on symbol.
INSTRUMENT_FIELDS: tuple[pa.Field, ...] = (
    column("exchange", pa.string()),
    column("market", pa.string()),
    column("symbol", pa.string()),
)

ENVELOPE_FIELDS: tuple[pa.Field, ...] = (
    column("event_id", pa.string()),
    *INSTRUMENT_FIELDS,
    column("native_symbol", pa.string()),
    column("exchange_ts", TS),
    column("ingest_ts", TS),
    column("seq", pa.int64()),
    column("price_scale", pa.int32()),
    column("size_scale", pa.int32()),
    column("ingest_latency_us", pa.int64()),
    column("tick_size", pa.int64()),
    column("lot_size", pa.int64()),
    column("shard", pa.string(), nullable=True),
)

#: Payload columns per event type; names equal the protobuf payload field names so the
#: conversion is mechanical (enums become lower-case strings, levels become list<struct>).
PAYLOAD_FIELDS: dict[EventType, tuple[pa.Field, ...]] = {
    EventType.TRADE: (
        column("trade_id", pa.string()),
        column("px", pa.int64()),
        column("qty", pa.int64()),
        column("taker_side", pa.string()),
        column("first_trade_id", pa.int64()),
        column("last_trade_id", pa.int64()),
    ),
    EventType.BOOK_SNAPSHOT: (
        column("bids", LEVELS),
        column("asks", LEVELS),
        column("depth", pa.int32()),
        column("reason", pa.string()),
        column("checksum", pa.int64()),
    ),
    EventType.BOOK_DELTA: (
        column("bids", LEVELS),
        column("asks", LEVELS),
        column("first_seq", pa.int64()),
        column("prev_seq", pa.int64()),
        column("checksum", pa.int64()),
    ),
    EventType.FUNDING: (
        column("rate", pa.int64()),
        column("next_funding_ts", pa.int64()),
        column("predicted_rate", pa.int64()),
        column("mark_px", pa.int64()),
    ),
    EventType.MARK_PRICE: (
        column("mark_px", pa.int64()),
        column("index_px", pa.int64()),
        column("estimated_settle_px", pa.int64()),
    ),
    EventType.LIQUIDATION: (
        column("side", pa.string()),
        column("px", pa.int64()),
        column("qty", pa.int64()),
        column("order_status", pa.string()),
    ),
    EventType.TICKER: (
        column("bid_px", pa.int64()),
        column("bid_qty", pa.int64()),
        column("ask_px", pa.int64()),
        column("ask_qty", pa.int64()),
        column("last_px", pa.int64()),
        column("volume_24h", pa.int64()),
        column("open_interest", pa.int64()),
    ),
}

#: The unit of every quantity in a row (schemas/units.py, docs/units.md): `qty x
#: contract_value` is in `contract_value_ccy`; qty_unit is base | linear_contract |
#: inverse_contract. Appended after the payload and nullable, because they were added to
#: existing Iceberg tables (schema evolution adds optional columns only); null means a row
#: written before units were recorded, whose sizes are read as base asset.
UNIT_FIELDS: tuple[pa.Field, ...] = (
    column("qty_unit", pa.string(), nullable=True),
    column("contract_value", pa.string(), nullable=True),
    column("contract_value_ccy", pa.string(), nullable=True),
)

#: Derived per trade (not in the protobuf payload, so not part of event_id): the size in the
#: base asset at base_size_scale, so bars and analytics sum comparable volumes across venues.
BASE_QTY_FIELDS: tuple[pa.Field, ...] = (
    column("base_qty", pa.int64(), nullable=True),
    column("base_size_scale", pa.int32(), nullable=True),
)
DERIVED_FIELDS: dict[EventType, tuple[pa.Field, ...]] = {EventType.TRADE: BASE_QTY_FIELDS}

#: Columns that are prices/sizes and must never be negative.
NON_NEGATIVE = frozenset(
    {
        "px",
        "qty",
        "mark_px",
        "index_px",
        "estimated_settle_px",
        "bid_px",
        "bid_qty",
        "ask_px",
        "ask_qty",
        "last_px",
        "volume_24h",
        "open_interest",
        "tick_size",
        "lot_size",
        "base_qty",
    }
)


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A lake table: its Arrow schema and layout. `event_type` is set for the per-event
    tables; derived tables (features_1s, bars_1m) have none."""

    name: str
    schema: pa.Schema
    event_type: EventType | None = None
    sort_by: tuple[str, ...] = ("symbol", "exchange_ts")
    partition_by: tuple[tuple[str, str], ...] = (
        ("exchange_ts", "hour"),
        ("exchange", "identity"),
        ("market", "identity"),
    )

    @property
    def identifier(self) -> str:
        return f"{NAMESPACE}.{self.name}"


TABLE_NAMES: dict[EventType, str] = {
    EventType.TRADE: "trades",
    EventType.BOOK_SNAPSHOT: "book_snapshots",
    EventType.BOOK_DELTA: "book_deltas",
    EventType.FUNDING: "funding",
    EventType.MARK_PRICE: "mark_prices",
    EventType.LIQUIDATION: "liquidations",
    EventType.TICKER: "tickers",
}

TABLES: dict[EventType, TableSpec] = {
    et: TableSpec(
        TABLE_NAMES[et], pa.schema(ENVELOPE_FIELDS + PAYLOAD_FIELDS[et] + UNIT_FIELDS + DERIVED_FIELDS.get(et, ())), et
    )
    for et in EventType
}
TABLES_BY_NAME: dict[str, TableSpec] = {t.name: t for t in TABLES.values()}


def table_for(event_type: EventType | str) -> TableSpec:
    return TABLES[EventType(event_type)]


def table_identifier(name_or_type: str) -> str:
    """Fully qualified identifier for a table name ('trades') or event type ('trade')."""
    if name_or_type in TABLES_BY_NAME:
        return TABLES_BY_NAME[name_or_type].identifier
    return table_for(name_or_type).identifier

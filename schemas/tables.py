"""Lake table specs: one Arrow schema per event type, and everything derived from it.

The Arrow schema is the single definition; the Iceberg schema, partition spec, sort
order, pandera model and the envelope <-> row conversion all come from the spec below.
Partitioning is hour(exchange_ts) + exchange + market (symbol is pruned by sort order and
file statistics; see ARCHITECTURE §3 for why symbol is not a partition).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor

from schemas.gen.ticklake.v1 import events_pb2 as pb
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

#: Lake type of each .proto scalar type of a payload field: enums become lower-case strings
#: (schemas/arrow_convert.py), uint32 (checksums) widens to int64, Arrow has no unsigned here.
_LAKE_TYPES: dict[int, pa.DataType] = {
    FieldDescriptor.TYPE_STRING: pa.string(),
    FieldDescriptor.TYPE_INT64: pa.int64(),
    FieldDescriptor.TYPE_UINT32: pa.int64(),
    FieldDescriptor.TYPE_ENUM: pa.string(),
}
#: Payload columns stored narrower than their .proto type: a book's level count.
_NARROWED: dict[str, pa.DataType] = {"depth": pa.int32()}


def _payload_column(fd: FieldDescriptor) -> pa.Field:
    if fd.message_type is not None:
        if fd.message_type.name != "PriceLevel" or not fd.is_repeated:
            raise TypeError(f"no lake column type for payload field {fd.full_name}")
        return column(fd.name, LEVELS)
    # Explicit presence (proto3 `optional`) is a nullable column: how a field added to a payload
    # later must be declared, since existing Iceberg tables only gain optional columns.
    return column(fd.name, _NARROWED.get(fd.name, _LAKE_TYPES[fd.type]), nullable=fd.has_presence)


#: Payload columns per event type: the payload message's fields, in .proto order, under
#: their .proto names (the .proto is their one definition; the conversion is mechanical).
PAYLOAD_FIELDS: dict[EventType, tuple[pa.Field, ...]] = {
    et: tuple(_payload_column(fd) for fd in pb.Envelope.DESCRIPTOR.fields_by_name[et.payload_field].message_type.fields)
    for et in EventType
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

"""Envelope <-> Arrow rows for the lake tables.

The mapping is mechanical (column names equal protobuf field names) so a new payload
field only needs adding to the .proto (schemas/tables.py derives its lake column).
Enums are stored as lower-case names without their prefix ("buy", "resync") so lake
queries read naturally.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import (
    EventType,
    Exchange,
    Market,
    event_type_from_pb,
)
from schemas.tables import ENVELOPE_FIELDS, PAYLOAD_FIELDS, TABLES
from schemas.units import QtyUnit, unit_name, unit_of_envelope

_ENUM_PREFIX = {"Side": "SIDE_", "SnapshotReason": "SNAPSHOT_REASON_"}


def _enum_to_str(fd: FieldDescriptor, value: int) -> str:
    name = fd.enum_type.values_by_number[value].name
    out = name.removeprefix(_ENUM_PREFIX[fd.enum_type.name]).lower()
    return "" if out == "unspecified" else out


def _str_to_enum(fd: FieldDescriptor, text: str) -> int:
    if not text:
        return 0
    return fd.enum_type.values_by_name[_ENUM_PREFIX[fd.enum_type.name] + text.upper()].number


def _payload_descriptor(et: EventType):
    return pb.Envelope.DESCRIPTOR.fields_by_name[et.payload_field].message_type


def _levels_array(levels_per_row: list, typ: pa.DataType) -> pa.Array:
    """list<struct<px,qty>> built from flat buffers: far cheaper than a dict per level."""
    offsets = [0]
    px: list[int] = []
    qty: list[int] = []
    for levels in levels_per_row:
        for lvl in levels:
            px.append(lvl.px)
            qty.append(lvl.qty)
        offsets.append(len(px))
    struct_type = typ.value_type
    values = pa.StructArray.from_arrays([pa.array(px, pa.int64()), pa.array(qty, pa.int64())], fields=list(struct_type))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=typ)


_EXCHANGE_NAMES = {e.pb: e.value for e in Exchange}
_MARKET_NAMES = {m.pb: m.value for m in Market}


def envelopes_to_table(event_type: EventType | str, envelopes: Iterable[pb.Envelope]) -> pa.Table:
    """Build the lake table rows for one event type (all envelopes must be of that type).

    Column-at-a-time comprehensions: this sits on the lake sink's hot path.
    """
    et = EventType(event_type)
    spec = TABLES[et]
    envs = envelopes if isinstance(envelopes, list) else list(envelopes)
    want = et.pb
    for env in envs:
        if env.event_type != want:
            raise ValueError(f"envelope {env.event_id} is {env.event_type}, table wants {et}")
    try:
        exchanges = [_EXCHANGE_NAMES[e.exchange] for e in envs]
        markets = [_MARKET_NAMES[e.market] for e in envs]
    except KeyError as exc:
        raise ValueError(f"envelope with unspecified exchange or market: {exc}") from exc
    cols: dict[str, object] = {
        "event_id": [e.event_id for e in envs],
        "exchange": exchanges,
        "market": markets,
        "symbol": [e.symbol for e in envs],
        "native_symbol": [e.native_symbol for e in envs],
        "exchange_ts": [e.exchange_ts for e in envs],
        "ingest_ts": [e.ingest_ts for e in envs],
        "seq": [e.seq for e in envs],
        "price_scale": [e.price_scale for e in envs],
        "size_scale": [e.size_scale for e in envs],
        "ingest_latency_us": [e.ingest_latency_us for e in envs],
        "tick_size": [e.tick_size for e in envs],
        "lot_size": [e.lot_size for e in envs],
        "shard": [e.shard or None for e in envs],
    }
    field_name = et.payload_field
    payloads = [getattr(e, field_name) for e in envs]
    pdesc = _payload_descriptor(et)
    for f in PAYLOAD_FIELDS[et]:
        fd = pdesc.fields_by_name[f.name]
        name = f.name
        if fd.is_repeated:
            cols[name] = _levels_array([getattr(p, name) for p in payloads], f.type)
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            names = {v.number: _enum_to_str(fd, v.number) for v in fd.enum_type.values}
            cols[name] = [names[getattr(p, name)] for p in payloads]
        else:
            cols[name] = [getattr(p, name) for p in payloads]
    cols["qty_unit"] = [unit_name(e.qty_unit) for e in envs]
    cols["contract_value"] = [e.contract_value or None for e in envs]
    cols["contract_value_ccy"] = [e.contract_value_ccy or None for e in envs]
    if et is EventType.TRADE:
        cols["base_qty"], cols["base_size_scale"] = _trade_base_qty(envs, payloads)
    arrays = [
        c if isinstance(c, pa.Array) else pa.array(c, type=fld.type)
        for c, fld in ((cols[fld.name], fld) for fld in spec.schema)
    ]
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _trade_base_qty(envs: list[pb.Envelope], trades: list) -> tuple[list[int], list[int]]:
    """Each trade's size in the base asset and its scale (schemas/units.py); a trade with
    no stated unit is base asset already."""
    qty, scale = [], []
    for e, t in zip(envs, trades, strict=True):
        unit = unit_of_envelope(e)
        if unit is None:
            qty.append(t.qty)
            scale.append(e.size_scale)
        else:
            qty.append(unit.to_base(t.qty, e.size_scale, t.px, e.price_scale))
            scale.append(unit.base_scale(e.size_scale))
    return qty, scale


def table_to_envelopes(event_type: EventType | str, table: pa.Table) -> list[pb.Envelope]:
    """Inverse of envelopes_to_table (used to replay lake rows, e.g. to rebuild an hour)."""
    et = EventType(event_type)
    pdesc = _payload_descriptor(et)
    pfields = [(f.name, pdesc.fields_by_name[f.name]) for f in PAYLOAD_FIELDS[et]]
    out: list[pb.Envelope] = []
    ts_cols = {f.name for f in ENVELOPE_FIELDS if pa.types.is_timestamp(f.type)}
    table = table.cast(pa.schema([pa.field(f.name, pa.int64() if f.name in ts_cols else f.type) for f in table.schema]))
    for row in table.to_pylist():
        env = pb.Envelope(
            event_id=row["event_id"],
            exchange=Exchange(row["exchange"]).pb,
            market=Market(row["market"]).pb,
            event_type=et.pb,
            symbol=row["symbol"],
            native_symbol=row["native_symbol"],
            exchange_ts=row["exchange_ts"],
            ingest_ts=row["ingest_ts"],
            seq=row["seq"],
            price_scale=row["price_scale"],
            size_scale=row["size_scale"],
            ingest_latency_us=row["ingest_latency_us"],
            tick_size=row["tick_size"],
            lot_size=row["lot_size"],
            shard=row["shard"] or "",
        )
        if row.get("qty_unit"):
            env.qty_unit = QtyUnit(row["qty_unit"]).pb
            env.contract_value = row.get("contract_value") or ""
            env.contract_value_ccy = row.get("contract_value_ccy") or ""
        payload = getattr(env, et.payload_field)
        for name, fd in pfields:
            v = row[name]
            if fd.is_repeated:
                getattr(payload, name).extend(pb.PriceLevel(px=lvl["px"], qty=lvl["qty"]) for lvl in v)
            elif fd.type == FieldDescriptor.TYPE_ENUM:
                setattr(payload, name, _str_to_enum(fd, v))
            else:
                setattr(payload, name, v)
        payload.SetInParent()
        out.append(env)
    return out


def group_by_event_type(envelopes: Sequence[pb.Envelope]) -> dict[EventType, list[pb.Envelope]]:
    groups: dict[EventType, list[pb.Envelope]] = {}
    for env in envelopes:
        groups.setdefault(event_type_from_pb(env.event_type), []).append(env)
    return groups

"""Envelope <-> Arrow rows for the lake tables.

The mapping is mechanical (column names equal protobuf field names) so a new payload
field only needs adding to the .proto and to PAYLOAD_FIELDS in schemas/tables.py.
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
    event_type_from_pb,
    exchange_from_pb,
    market_from_pb,
    Exchange,
    Market,
)
from schemas.tables import ENVELOPE_FIELDS, PAYLOAD_FIELDS, TABLES

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


def envelopes_to_table(event_type: EventType | str, envelopes: Iterable[pb.Envelope]) -> pa.Table:
    """Build the lake table rows for one event type (all envelopes must be of that type)."""
    et = EventType(event_type)
    spec = TABLES[et]
    cols: dict[str, list] = {f.name: [] for f in spec.schema}
    pdesc = _payload_descriptor(et)
    pfields = [(f.name, pdesc.fields_by_name[f.name]) for f in PAYLOAD_FIELDS[et]]
    want = et.pb
    for env in envelopes:
        if env.event_type != want:
            raise ValueError(f"envelope {env.event_id} is {env.event_type}, table wants {et}")
        cols["event_id"].append(env.event_id)
        cols["exchange"].append(exchange_from_pb(env.exchange).value)
        cols["market"].append(market_from_pb(env.market).value)
        cols["symbol"].append(env.symbol)
        cols["native_symbol"].append(env.native_symbol)
        cols["exchange_ts"].append(env.exchange_ts)
        cols["ingest_ts"].append(env.ingest_ts)
        cols["seq"].append(env.seq)
        cols["price_scale"].append(env.price_scale)
        cols["size_scale"].append(env.size_scale)
        cols["ingest_latency_us"].append(env.ingest_latency_us)
        cols["tick_size"].append(env.tick_size)
        cols["lot_size"].append(env.lot_size)
        cols["shard"].append(env.shard or None)
        payload = getattr(env, et.payload_field)
        for name, fd in pfields:
            v = getattr(payload, name)
            if fd.is_repeated:
                v = [{"px": lvl.px, "qty": lvl.qty} for lvl in v]
            elif fd.type == FieldDescriptor.TYPE_ENUM:
                v = _enum_to_str(fd, v)
            cols[name].append(v)
    return pa.Table.from_pydict(cols, schema=spec.schema)


def table_to_envelopes(event_type: EventType | str, table: pa.Table) -> list[pb.Envelope]:
    """Inverse of envelopes_to_table (used to replay lake rows, e.g. to rebuild an hour)."""
    et = EventType(event_type)
    pdesc = _payload_descriptor(et)
    pfields = [(f.name, pdesc.fields_by_name[f.name]) for f in PAYLOAD_FIELDS[et]]
    out: list[pb.Envelope] = []
    ts_cols = {f.name for f in ENVELOPE_FIELDS if pa.types.is_timestamp(f.type)}
    table = table.cast(pa.schema([pa.field(f.name, pa.int64() if f.name in ts_cols else f.type)
                                  for f in table.schema]))
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

"""A feature row as one self-describing record body (JSON), and back to Arrow.

JSON because feature consumers (online inference, ClickHouse, people with kcat) read it
without generated code, and because Python's float repr round-trips exactly, so a row
decoded from the topic equals the row the spec computed. Columns appear in schema order
and timestamps as integer µs, which makes the bytes of a row deterministic: a row
recomputed after a crash or in a replay is byte-identical to the first copy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pyarrow as pa

from features.spec import FEATURE_SCHEMA, SPEC_VERSION

CONTENT_TYPE = f"application/json; schema=ticklake.features_1s.v{SPEC_VERSION}"
_TS_COLS = [f.name for f in FEATURE_SCHEMA if pa.types.is_timestamp(f.type)]
_INT_SCHEMA = pa.schema([pa.field(f.name, pa.int64(), f.nullable) if f.name in _TS_COLS else f for f in FEATURE_SCHEMA])


def table_rows(table: pa.Table) -> list[dict]:
    """Rows with timestamps as integer µs (the wire representation)."""
    return table.cast(_INT_SCHEMA).to_pylist()


def encode_row(row: dict) -> bytes:
    return json.dumps([row[n] for n in FEATURE_SCHEMA.names], separators=(",", ":"), allow_nan=False).encode()


def decode_row(value: bytes) -> dict:
    vals = json.loads(value)
    if not isinstance(vals, list) or len(vals) != len(FEATURE_SCHEMA.names):
        raise ValueError("not a features_1s record")
    return dict(zip(FEATURE_SCHEMA.names, vals))


def rows_to_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=_INT_SCHEMA).cast(FEATURE_SCHEMA)

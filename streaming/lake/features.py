"""The feature spec over lake hours: which rows feed an hour, and how an hour is written back.

Shared by the local batch asset, the Spark asset and their parity check, so "the inputs of
hour H" has one definition: trades, book snapshots and book deltas with exchange_ts in
[H - lookback, H + 1 h). The spec carries state across windows (the book, the last mid,
60 s of returns), so rows at the start of H depend on events before H; `lookback_s`
replays that much history first and only rows of H are kept. With lookback 0 an hour is
computed from an empty state, which equals the streaming processor's output when the
processor also started inside that hour (or every symbol re-snapshots at the hour).

Writes replace exactly one hour of an Iceberg table in one commit (delete + append), so
re-running an hour never duplicates rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from features.compute import compute_features
from features.inputs import events_from_lake
from features.spec import FEATURE_SCHEMA, FEATURES_TABLE
from schemas.iceberg import ensure_namespace, ensure_table, ts_range
from schemas.model import EventType
from schemas.tables import TABLES, TableSpec
from streaming.lake.state import HOUR_US

INPUT_TABLES = {
    "trades": EventType.TRADE,
    "book_snapshots": EventType.BOOK_SNAPSHOT,
    "book_deltas": EventType.BOOK_DELTA,
}
FEATURE_SORT = [
    ("exchange", "ascending"),
    ("market", "ascending"),
    ("symbol", "ascending"),
    ("exchange_ts", "ascending"),
]


def input_range(hour_us: int, lookback_s: float) -> tuple[int, int]:
    if hour_us % HOUR_US:
        raise ValueError(f"hour_us must be an hour boundary, got {hour_us}")
    if lookback_s < 0:
        raise ValueError("lookback_s must be >= 0")
    return hour_us - int(lookback_s * 1_000_000), hour_us + HOUR_US


def input_tables(catalog: Catalog) -> dict[str, Table]:
    return {name: catalog.load_table(TABLES[et].identifier) for name, et in INPUT_TABLES.items()}


def read_range(table: Table, start_us: int, end_us: int) -> pa.Table | None:
    if table.current_snapshot() is None:
        return None
    return table.scan(row_filter=ts_range(start_us, end_us)).to_arrow()


def hour_events(tables: Mapping[str, Table], hour_us: int, lookback_s: float = 0.0) -> pa.Table:
    """The spec's input rows (features.inputs.INPUT_SCHEMA) for one hour plus lookback."""
    start, end = input_range(hour_us, lookback_s)
    return events_from_lake(**{name: read_range(tables[name], start, end) for name in INPUT_TABLES})


def keep_hour(rows: pa.Table, hour_us: int) -> pa.Table:
    """Feature rows whose window starts inside the hour (drops the lookback's rows)."""
    ts = pc.cast(rows["exchange_ts"], pa.int64())
    mask = pc.and_(pc.greater_equal(ts, hour_us), pc.less(ts, hour_us + HOUR_US))
    return rows.filter(mask)


def compute_hour(events: pa.Table, hour_us: int) -> pa.Table:
    """Local batch: the whole spec in-process over the hour's events, sorted canonically."""
    rows, _ = compute_features(events)
    return canonical(keep_hour(rows, hour_us))


def canonical(rows: pa.Table) -> pa.Table:
    """FEATURE_SCHEMA columns and types, sorted by instrument then window: the form in which
    two runtimes' outputs are compared with Table.equals."""
    return rows.select(FEATURE_SCHEMA.names).cast(FEATURE_SCHEMA).sort_by(FEATURE_SORT).combine_chunks()


def ensure_spec_table(
    catalog: Catalog, spec: TableSpec = FEATURES_TABLE, properties: dict[str, str] | None = None
) -> Table:
    ensure_namespace(catalog)
    return ensure_table(catalog, spec, properties)


def write_hour(table: Table, rows: pa.Table, hour_us: int, summary: Mapping[str, str] | None = None) -> Table:
    """Replace the hour of `table` with `rows` in one commit (rows outside the hour refused)."""
    if rows.num_rows:
        ts = pc.cast(rows["exchange_ts"], pa.int64())
        lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
        if lo < hour_us or hi >= hour_us + HOUR_US:
            raise ValueError(f"rows {lo}..{hi} fall outside hour {hour_us}")
    arrow_schema = table.schema().as_arrow()
    data = rows.select(arrow_schema.names).cast(arrow_schema)
    table.overwrite(
        data, overwrite_filter=ts_range(hour_us, hour_us + HOUR_US), snapshot_properties=dict(summary or {})
    )
    return table.refresh()


def read_hour_rows(table: Table, hour_us: int) -> pa.Table:
    rows = read_range(table, hour_us, hour_us + HOUR_US)
    return FEATURE_SCHEMA.empty_table() if rows is None else canonical(rows)


def compare_features(outputs: Mapping[str, pa.Table]) -> tuple[bool, dict]:
    """Exact comparison of several runtimes' rows for one hour (canonical form). Returns
    (equal, details) with per-source row counts and, on a mismatch, where it is: event_ids
    present in one source only, or the first differing column and event_id."""
    names = list(outputs)
    canon = {n: canonical(t) for n, t in outputs.items()}
    details: dict = {"rows": {n: t.num_rows for n, t in canon.items()}, "mismatches": []}
    ref_name = names[0]
    ref = canon[ref_name]
    for n in names[1:]:
        other = canon[n]
        if other.equals(ref):
            continue
        ids_ref, ids_o = set(ref["event_id"].to_pylist()), set(other["event_id"].to_pylist())
        if ids_ref != ids_o:
            details["mismatches"].append(
                {
                    "between": [ref_name, n],
                    "only_in_" + ref_name: sorted(ids_ref - ids_o)[:5],
                    "only_in_" + n: sorted(ids_o - ids_ref)[:5],
                    "count_only_in_" + ref_name: len(ids_ref - ids_o),
                    "count_only_in_" + n: len(ids_o - ids_ref),
                }
            )
            continue
        for col in FEATURE_SCHEMA.names:
            a, b = ref[col], other[col]
            if a.equals(b):
                continue
            neq = pc.fill_null(pc.not_equal(a, b), True)
            both_null = pc.and_(pc.is_null(a), pc.is_null(b))
            idx = pc.index(pc.and_(neq, pc.invert(both_null)), True).as_py()
            details["mismatches"].append(
                {
                    "between": [ref_name, n],
                    "column": col,
                    "event_id": ref["event_id"][idx].as_py(),
                    ref_name: repr(a[idx].as_py()),
                    n: repr(b[idx].as_py()),
                }
            )
            break
    return not details["mismatches"], details


def unsealed(tables: Mapping[str, Table], hour_us: int) -> list[str]:
    """Names of tables whose hour has data files that are not all sealed (compacted after the
    hour closed): products of such an hour could still change, so assets refuse them."""
    from streaming.lake.seal import hour_layout

    out = []
    for name, table in tables.items():
        layout = hour_layout(table, hour_us)
        if layout.files and not layout.is_sealed:
            out.append(name)
    return out

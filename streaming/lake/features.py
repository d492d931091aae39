"""The feature spec over lake hours: which rows feed an hour, the state it starts from, and
how an hour is written back.

Shared by the local batch asset, the Spark asset and their parity check, so "the inputs of
hour H" has one definition: trades, book snapshots and book deltas with exchange_ts in
[H, H + 1 h). The spec carries state across windows (the book, the last mid, 60 s of
returns), so rows at the start of H depend on events before H. The streaming processor
carries that state without a break; an hourly batch gets it from `start_state`: the state
the batch of H - 1 wrote when it closed (table FEATURE_STATE_TABLE, one row per instrument
at the instant H), else the state replayed from the newest book snapshot per instrument at
least VOL_WINDOW_US before H (docs/decisions.md, "Feature state carried across hours").
Either way the hour starts from the state the stream had at H, whatever order hours run in.

Writes replace exactly one hour of an Iceberg table in one commit (delete + append), so
re-running an hour never duplicates rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from features.compute import FeatureState, SymbolState, compute_features
from features.inputs import events_from_lake
from features.spec import FEATURE_SCHEMA, FEATURES_TABLE, SPEC_VERSION, VOL_WINDOW_US
from schemas.iceberg import ensure_namespace, ensure_table, ts_range
from schemas.model import EventType
from schemas.tables import TABLES, TableSpec
from streaming.lake.state import HOUR_US

INPUT_TABLES = {
    "trades": EventType.TRADE,
    "book_snapshots": EventType.BOOK_SNAPSHOT,
    "book_deltas": EventType.BOOK_DELTA,
}
#: The spec's state per instrument at an hour boundary (exchange_ts = the hour it opens), as
#: the batch of the hour before left it: features.compute.SymbolState.to_state() as JSON.
FEATURE_STATE_TABLE = TableSpec(
    "features_1s_state",
    pa.schema(
        [
            pa.field("exchange_ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("exchange", pa.string(), nullable=False),
            pa.field("market", pa.string(), nullable=False),
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("spec_version", pa.int32(), nullable=False),
            pa.field("state", pa.string(), nullable=False),
        ]
    ),
)
#: How far back the fallback looks for book snapshots when no carried state exists. An
#: instrument whose newest snapshot is older starts without a book (its stream had one):
#: only the carried state covers feeds that snapshot once per connection (Binance spot).
MAX_REPLAY_US = 24 * HOUR_US
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
    return events_between(tables, *input_range(hour_us, lookback_s))


def events_between(tables: Mapping[str, Table], start_us: int, end_us: int) -> pa.Table:
    """The spec's input rows with exchange_ts in [start, end)."""
    return events_from_lake(**{name: read_range(tables[name], start_us, end_us) for name in INPUT_TABLES})


def replay_start(tables: Mapping[str, Table], hour_us: int) -> int:
    """Where replaying the lake rebuilds the stream's state at `hour_us`: the oldest of the
    instruments' newest book snapshots that lie at least VOL_WINDOW_US before the hour
    (searched back MAX_REPLAY_US). From there every book is reset by its snapshot before
    the hour, and every return still inside the volatility window at the hour's first
    window is computed from two mids of the replay; events before it change no state the
    hour reads. Instruments without such a snapshot are replayed from H - VOL_WINDOW_US."""
    cut = hour_us - VOL_WINDOW_US
    table = tables["book_snapshots"]
    if table.current_snapshot() is None:
        return cut
    snaps = table.scan(
        row_filter=ts_range(hour_us - MAX_REPLAY_US, cut),
        selected_fields=("exchange", "market", "symbol", "exchange_ts"),
    ).to_arrow()
    if not snaps.num_rows:
        return cut
    newest = snaps.group_by(["exchange", "market", "symbol"], use_threads=False).aggregate([("exchange_ts", "max")])
    return min(cut, pc.min(pc.cast(newest["exchange_ts_max"], pa.int64())).as_py())


def replayed_state(tables: Mapping[str, Table], hour_us: int) -> FeatureState:
    """The stream's state at `hour_us` rebuilt from the lake alone (see replay_start)."""
    _, state = compute_features(events_between(tables, replay_start(tables, hour_us), hour_us))
    return state


def read_state(state_table: Table, hour_us: int) -> FeatureState | None:
    """The state carried into `hour_us` by the batch of the hour before, or None when that
    batch has not written one (or wrote it for another spec version)."""
    rows = read_range(state_table, hour_us, hour_us + 1)
    if rows is None or not rows.num_rows:
        return None
    if set(rows["spec_version"].to_pylist()) != {SPEC_VERSION}:
        return None
    return FeatureState(
        {
            (r["exchange"], r["market"], r["symbol"]): SymbolState.from_state(json.loads(r["state"]))
            for r in rows.select(["exchange", "market", "symbol", "state"]).to_pylist()
        }
    )


def start_state(tables: Mapping[str, Table], state_table: Table, hour_us: int) -> tuple[FeatureState, str]:
    """The state hour `hour_us` starts from and where it came from ("carried" / "replayed")."""
    carried = read_state(state_table, hour_us)
    if carried is not None:
        return carried, "carried"
    return replayed_state(tables, hour_us), "replayed"


def write_state(state_table: Table, state: FeatureState, at_us: int, summary: Mapping[str, str] | None = None) -> None:
    """Replace the state held at the hour boundary `at_us` (one commit, so a rerun of the hour
    before overwrites it)."""
    if at_us % HOUR_US:
        raise ValueError(f"state is kept at hour boundaries, got {at_us}")
    items = sorted(state.symbols.items())
    rows = pa.table(
        {
            "exchange_ts": pa.array([at_us] * len(items), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "exchange": [k[0] for k, _ in items],
            "market": [k[1] for k, _ in items],
            "symbol": [k[2] for k, _ in items],
            "spec_version": pa.array([SPEC_VERSION] * len(items), pa.int32()),
            "state": [json.dumps(s.to_state(), separators=(",", ":")) for _, s in items],
        },
        schema=FEATURE_STATE_TABLE.schema,
    )
    state_table.overwrite(
        rows, overwrite_filter=ts_range(at_us, at_us + HOUR_US), snapshot_properties=dict(summary or {})
    )


def keep_hour(rows: pa.Table, hour_us: int) -> pa.Table:
    """Feature rows whose window starts inside the hour (drops the lookback's rows)."""
    ts = pc.cast(rows["exchange_ts"], pa.int64())
    mask = pc.and_(pc.greater_equal(ts, hour_us), pc.less(ts, hour_us + HOUR_US))
    return rows.filter(mask)


def compute_hour(events: pa.Table, hour_us: int, state: FeatureState | None = None) -> pa.Table:
    """Local batch: the whole spec in-process over the hour's events, sorted canonically,
    from `state` (the hour's start state; empty when None), which is updated to the hour's close."""
    rows, _ = compute_features(events, state)
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

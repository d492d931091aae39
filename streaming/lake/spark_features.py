"""The feature spec at scale: one lake hour recomputed with Spark, written as Iceberg files.

Spark here has no Iceberg jars (ARCHITECTURE §5), so pyiceberg plans the scan
(`plan_files` with the hour filter; only whole Parquet data files, no delete files) and
Spark reads those files directly. The spec is not re-expressed in Spark SQL: each
input table's Arrow batches go through features.inputs.events_from_lake (mapInArrow)
and each (exchange, market, symbol) group through features.compute.features_for_group
(applyInArrow) — the very functions the streaming processor and the local batch call —
starting from the instrument's state at the hour (streaming/lake/features.start_state, shipped
to the workers as JSON).

Output is Parquet with TIMESTAMP_MICROS (the session conf of resources/spark.py), one
file per (exchange, market) so each file sits in one Iceberg partition, sorted by
(symbol, exchange_ts), registered with `add_files` in the same transaction that deletes
the hour's previous files: a rerun replaces the hour atomically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
from pyiceberg.table import Table

from features.compute import FeatureState, SymbolState, features_for_group
from features.inputs import INPUT_SCHEMA, events_from_lake
from features.spec import FEATURE_SCHEMA
from schemas.tables import TABLES, TableSpec
from streaming.lake.features import INPUT_TABLES, input_range, keep_hour, ts_range
from streaming.lake.state import HOUR_US
from streaming.lake.writer import partition_path

GROUP_KEYS = ["exchange", "market", "symbol"]
#: Where Spark's recompute lands: same schema as features_1s, a separate table so the two
#: runtimes can be compared (and either promoted) without overwriting each other.
SPARK_FEATURES_TABLE = TableSpec("features_1s_spark", FEATURE_SCHEMA)
WRITER = "spark-features"


class PlanError(RuntimeError):
    pass


def planned_files(table: Table, start_us: int, end_us: int) -> list[str]:
    """Data files pyiceberg plans for the range; refuses merge-on-read deletes (Spark would
    read rows the table no longer has)."""
    if table.current_snapshot() is None:
        return []
    tasks = list(table.scan(row_filter=ts_range(start_us, end_us)).plan_files())
    with_deletes = [t.file.file_path for t in tasks if t.delete_files]
    if with_deletes:
        raise PlanError(
            f"{len(with_deletes)} planned files of {table.name()} carry delete files; compact (seal) the hour first"
        )
    return sorted(t.file.file_path for t in tasks)


def _to_inputs(kind: str, start_us: int, end_us: int, lake_schema: pa.Schema):
    """mapInArrow body: lake rows of one table -> spec input rows inside [start, end)."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        for b in batches:
            t = pa.Table.from_batches([b])
            for f in lake_schema:  # files written before a nullable column was added (units)
                if f.name not in t.column_names:
                    t = t.append_column(f, pa.nulls(t.num_rows, f.type))
            t = t.select(lake_schema.names).cast(lake_schema)
            ts = pc.cast(t["exchange_ts"], pa.int64())
            t = t.filter(pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, end_us)))
            if t.num_rows:
                yield from events_from_lake(**{kind: t}).to_batches()

    return fn


def _features(hour_us: int, states: Mapping[tuple[str, str, str], dict]):
    """applyInArrow body: every event of one instrument -> its feature rows of the hour,
    from the instrument's start state (`states`: SymbolState.to_state() per instrument)."""

    def fn(events: pa.Table) -> pa.Table:
        events = events.cast(INPUT_SCHEMA)
        key = tuple(events[k][0].as_py() for k in GROUP_KEYS) if events.num_rows else None
        start = FeatureState({key: SymbolState.from_state(states[key])}) if key in states else None
        return keep_hour(features_for_group(events, start), hour_us)

    return fn


def spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def hour_features_df(spark, tables: Mapping[str, Table], hour_us: int, state: FeatureState | None = None):
    """The Spark DataFrame of the hour's feature rows (FEATURE_SCHEMA columns) computed from
    `state` (empty when None), or None when the hour has no input files."""
    start, end = input_range(hour_us, 0.0)
    parts = []
    for name, et in INPUT_TABLES.items():
        files = planned_files(tables[name], start, end)
        if not files:
            continue
        lake_schema = TABLES[et].schema
        # mergeSchema: files from before an added column (the unit columns) and after it are
        # read as one schema; without it Spark takes one file's columns for all
        df = spark.read.option("mergeSchema", "true").parquet(*files)
        df = df.select(*[n for n in lake_schema.names if n in df.columns])
        parts.append(df.mapInArrow(_to_inputs(name, start, end, lake_schema), spark_schema(INPUT_SCHEMA)))
    if not parts:
        return None
    events = parts[0]
    for p in parts[1:]:
        events = events.unionByName(p)
    states = {k: s.to_state() for k, s in (state.symbols.items() if state is not None else ())}
    return events.groupBy(*GROUP_KEYS).applyInArrow(_features(hour_us, states), spark_schema(FEATURE_SCHEMA))


def local_path(uri: str) -> str:
    p = urlparse(uri)
    return p.path if p.scheme == "file" else uri


@dataclass(frozen=True, slots=True)
class SparkHourResult:
    rows: int
    files: list[str]
    pairs: list[tuple[str, str]]


def write_hour(
    spark,
    tables: Mapping[str, Table],
    target: Table,
    hour_us: int,
    summary: Mapping[str, str] | None = None,
    state: FeatureState | None = None,
) -> SparkHourResult:
    """Compute the hour with Spark from `state`, write one Parquet file per (exchange, market)
    under the target table's hour partition, and replace the hour in one Iceberg commit."""
    if hour_us % HOUR_US:
        raise ValueError(f"hour_us must be an hour boundary, got {hour_us}")
    df = hour_features_df(spark, tables, hour_us, state)
    files: list[str] = []
    pairs: list[tuple[str, str]] = []
    rows = 0
    run = uuid.uuid4().hex
    if df is not None:
        df = df.persist()
        try:
            counts = {
                (r["exchange"], r["market"]): r["count"] for r in df.groupBy("exchange", "market").count().collect()
            }
            pairs = sorted(counts)
            rows = sum(counts.values())
            fs = spark.sparkContext._jvm.org.apache.hadoop.fs
            for ex, mk in pairs:
                out = f"{target.location()}/data/{partition_path(hour_us, ex, mk)}/{WRITER}-{run}"
                part = (
                    df.where((df.exchange == ex) & (df.market == mk))
                    .coalesce(1)
                    .sortWithinPartitions("symbol", "exchange_ts")
                )
                part.write.mode("errorifexists").option("compression", "zstd").parquet(out)
                path = fs.Path(out)
                fsys = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
                written = [
                    str(s.getPath().toUri())
                    for s in fsys.listStatus(path)
                    if s.getPath().getName().endswith(".parquet")
                ]
                files += sorted(f"file://{local_path(w)}" if w.startswith("/") else w for w in written)
        finally:
            df.unpersist()
    props = {"writer": WRITER, **(summary or {})}
    with target.transaction() as tx:
        tx.delete(ts_range(hour_us, hour_us + HOUR_US), snapshot_properties=props)
        if files:
            tx.add_files(files, snapshot_properties=props)
    return SparkHourResult(rows, files, pairs)

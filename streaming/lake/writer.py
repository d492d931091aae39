"""Write Arrow rows as Iceberg data files ourselves, then register them in one commit.

pyiceberg's generic append re-partitions the rows with many small filter passes per
partition, which is slow for a spec of hour x exchange x market; here the rows are sorted
ONCE by (exchange, market, hour, symbol, exchange_ts), cut at partition boundaries, and
each run is written with pyarrow's Parquet writer (zstd, Iceberg field ids in the schema,
sorted by symbol then event time so symbol filters prune by column statistics). The
DataFile entries are built from the writer's own footer (no re-read of the file) and
added with a fast append, optionally after a delete of one hour in the same transaction
(the compaction overwrite). Used by the lake sink and by hour sealing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import BooleanExpression
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import update_table_metadata

from streaming.lake.state import HOUR_US

#: Arrow's default row group; smaller groups measured 2x slower to write, and symbol
#: pruning works at file level once the hour is split at the target file size.
ROW_GROUP_ROWS = 1024 * 1024
DEFAULT_TARGET_FILE_BYTES = 32 * 1024 * 1024
#: zstd level of micro-batch files (the sink, bulk loads): Arrow's own default level, the
#: one a bare pq.write_table uses. Level 3 cost ~15 % of the sink's write time for files
#: that live until their hour is sealed (bench/bench_lake_sink.py, decisions "Performance").
MICRO_BATCH_COMPRESSION_LEVEL = 1
#: zstd level of sealed hours (seal, rebuild): written once, read for as long as the lake lives.
SEALED_COMPRESSION_LEVEL = 3


@dataclass(frozen=True, slots=True)
class PartitionRun:
    exchange: str
    market: str
    hour_us: int
    start: int  # row range in the sorted table
    stop: int


def hour_column(table: pa.Table) -> np.ndarray:
    ts = table.column("exchange_ts").cast(pa.int64()).to_numpy()
    return ts - np.mod(ts, HOUR_US)


def _ranks(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """Per-row rank of the value among the column's distinct values (string order), so
    string keys sort as small integers."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks() if enc.num_chunks != 1 else enc.chunk(0)
        if isinstance(enc, pa.ChunkedArray):  # combine_chunks of dictionaries may unify lazily
            enc = pa.concat_arrays(enc.chunks)
    dictionary = enc.dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(dictionary), dtype=np.int64)
    rank[order] = np.arange(len(dictionary), dtype=np.int64)
    return rank[enc.indices.to_numpy(zero_copy_only=False)], len(dictionary)


def layout_order(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row order by (exchange, market, hour, symbol, exchange_ts, seq) and each row's
    partition key in that order. Integer keys and numpy lexsort: several times faster than
    a multi-column Arrow sort over strings."""
    ex, _ = _ranks(table.column("exchange"))
    mk, n_mk = _ranks(table.column("market"))
    sym, _ = _ranks(table.column("symbol"))
    ts = table.column("exchange_ts").cast(pa.int64()).to_numpy()
    hours = (ts - np.mod(ts, HOUR_US)) // HOUR_US
    h0 = int(hours.min()) if len(hours) else 0
    span = int(hours.max()) - h0 + 1 if len(hours) else 1
    part = (ex * n_mk + mk) * span + (hours - h0)
    seq = table.column("seq").to_numpy()
    order = np.lexsort((seq, ts, sym, part))
    return order, part[order]


def sort_for_layout(table: pa.Table) -> pa.Table:
    """Rows ordered by partition, then by the table's sort order (symbol, exchange_ts)."""
    order, _ = layout_order(table)
    return table.take(order)


def partition_runs(sorted_table: pa.Table, part_keys: np.ndarray | None = None) -> list[PartitionRun]:
    """Boundaries of (exchange, market, hour) in a table sorted by layout_order."""
    n = sorted_table.num_rows
    if n == 0:
        return []
    if part_keys is None:
        _, part_keys = layout_order(sorted_table)
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = part_keys[1:] != part_keys[:-1]
    starts = np.flatnonzero(change).tolist()
    stops = starts[1:] + [n]
    hours = hour_column(sorted_table)
    ex = sorted_table.column("exchange")
    mk = sorted_table.column("market")
    return [PartitionRun(ex[s].as_py(), mk[s].as_py(), int(hours[s]), s, e) for s, e in zip(starts, stops, strict=True)]


def hour_path_value(hour_us: int) -> str:
    return datetime.fromtimestamp(hour_us / 1e6, tz=UTC).strftime("%Y-%m-%d-%H")


def _narrow_strings(schema: pa.Schema) -> pa.Schema:
    """pyiceberg maps strings and lists to Arrow large_string / large_list, the lake's Arrow
    rows (schemas/tables.py) carry string / list: the Parquet bytes are the same either way,
    so the write schema keeps the narrow types rather than cast (copy) every string and level
    column of every batch (~7 % of a trades write, profiled)."""

    def narrow(t: pa.DataType) -> pa.DataType:
        if t == pa.large_string():
            return pa.string()
        if t == pa.large_binary():
            return pa.binary()
        if pa.types.is_large_list(t):
            return pa.list_(t.value_field)
        return t

    return pa.schema([f.with_type(narrow(f.type)) for f in schema], metadata=schema.metadata)


class LakeFileWriter:
    """Writes sorted, partition-pure Parquet files for one table and builds their DataFiles."""

    def __init__(
        self,
        table: Table,
        *,
        target_file_bytes: int | None = None,
        compression_level: int = MICRO_BATCH_COMPRESSION_LEVEL,
    ):
        self.table = table
        meta = table.metadata
        self.schema = meta.schema()
        self.arrow_schema = _narrow_strings(schema_to_pyarrow(self.schema, include_field_ids=True))
        self.stats_plan = compute_statistics_plan(self.schema, meta.properties)
        self.col_mapping = parquet_path_to_id_mapping(self.schema)
        prop = meta.properties.get("write.target-file-size-bytes")
        self.target_file_bytes = target_file_bytes or (int(prop) if prop else DEFAULT_TARGET_FILE_BYTES)
        self.compression_level = compression_level

    def write(self, rows: pa.Table, prefix: str = "sink") -> list[DataFile]:
        """Sort once, cut at partition boundaries, write each run (split by target size)."""
        if rows.num_rows == 0:
            return []
        rows = rows.select(self.arrow_schema.names)
        order, part_keys = layout_order(rows)
        rows = self._with_field_ids(rows.take(pa.array(order)))
        out: list[DataFile] = []
        for run in partition_runs(rows, part_keys):
            part = rows.slice(run.start, run.stop - run.start)
            for chunk in self._split(part):
                out.append(self._write_file(chunk, run, prefix))
        return out

    def _with_field_ids(self, rows: pa.Table) -> pa.Table:
        """Attach the Iceberg field ids; zero-copy when only metadata/nullability differ."""
        if all(a.type == b.type for a, b in zip(rows.schema, self.arrow_schema, strict=True)):
            return pa.Table.from_arrays(rows.columns, schema=self.arrow_schema)
        return rows.cast(self.arrow_schema)

    def _split(self, part: pa.Table) -> Iterable[pa.Table]:
        # Arrow bytes over-estimate zstd Parquet by ~5-10x; splitting on Arrow size at
        # 4x the target keeps files near the target without a second write pass.
        arrow_bytes = part.nbytes
        pieces = max(
            1,
            int(arrow_bytes // (self.target_file_bytes * 4)) + (1 if arrow_bytes % (self.target_file_bytes * 4) else 0),
        )
        if pieces <= 1:
            yield part
            return
        step = -(-part.num_rows // pieces)
        for s in range(0, part.num_rows, step):
            yield part.slice(s, step)

    def _write_file(self, chunk: pa.Table, run: PartitionRun, prefix: str) -> DataFile:
        path = (
            f"{self.table.location()}/data/exchange_ts_hour={hour_path_value(run.hour_us)}"
            f"/exchange={run.exchange}/market={run.market}/{prefix}-{uuid.uuid4().hex}.parquet"
        )
        out_file = self.table.io.new_output(path)
        with out_file.create(overwrite=True) as stream:
            with pq.ParquetWriter(
                stream,
                schema=self.arrow_schema,
                compression="zstd",
                compression_level=self.compression_level,
                write_statistics=True,
            ) as writer:
                writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)
            metadata = writer.writer.metadata
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=metadata, stats_columns=self.stats_plan, parquet_column_mapping=self.col_mapping
        )
        meta = self.table.metadata
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=stats.partition(meta.spec(), meta.schema()),
            file_size_in_bytes=len(self.table.io.new_input(path)),
            sort_order_id=meta.default_sort_order_id,
            spec_id=meta.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **stats.to_serialized_dict(),
        )


#: Table properties every lake writer relies on. pyiceberg retries a failed commit by
#: rebuilding it on metadata the writer never read: a stale second sink would then
#: double-apply a batch, and a seal's hour delete would drop files the sink added in the
#: meantime. The lake's writers re-plan on conflict themselves, so the automatic retry is off.
WRITER_PROPERTIES = {"commit.retry.num-retries": "0"}


def ensure_writer_properties(table: Table, attempts: int = 5) -> Table:
    """Set WRITER_PROPERTIES on the table if needed (idempotent; retried on a race)."""
    for attempt in range(attempts):
        missing = {k: v for k, v in WRITER_PROPERTIES.items() if table.metadata.properties.get(k) != v}
        if not missing:
            return table
        try:
            with table.transaction() as tx:
                tx.set_properties(missing)
            return table
        except CommitFailedException:
            if attempt == attempts - 1:
                raise
            table = table.refresh()
    return table


class _MetadataOnceTransaction(Transaction):
    """pyiceberg's Transaction re-derives its metadata on every read of `table_metadata`, and
    the derivation ends in a deep copy of the whole table metadata, every snapshot and its
    summary included; a fast append reads it ~14 times, so a commit's CPU grew with the
    table's snapshot count (measured: 15 ms at 1 snapshot, 71 ms at 100, 213 ms at 300, with
    the sink's summary properties) while the sink adds a snapshot per table per micro-batch.
    The derivation is a pure function of the table's metadata and the staged updates (both
    replaced, never mutated: frozen pydantic models and a tuple), so it runs once per pair."""

    _memo: tuple[TableMetadata, tuple, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates, memo = self._table.metadata, self._updates, self._memo
        if memo is None or memo[0] is not base or memo[1] is not updates:
            memo = self._memo = (base, updates, update_table_metadata(base, updates))
        return memo[2]


def commit_files(
    table: Table,
    files: Sequence[DataFile],
    summary: Mapping[str, str],
    *,
    delete_filter: BooleanExpression | None = None,
) -> Table:
    """One atomic commit: optional delete of `delete_filter`, then a fast append of `files`,
    both snapshots carrying `summary`. Raises CommitFailedException when the table moved
    underneath (optimistic concurrency); the caller refreshes and decides."""
    table = ensure_writer_properties(table)  # no-op once set; see WRITER_PROPERTIES
    props = dict(summary)
    with _MetadataOnceTransaction(table) as tx:
        if delete_filter is not None:
            tx.delete(delete_filter=delete_filter, snapshot_properties=props)
        with tx.update_snapshot(snapshot_properties=props).fast_append() as append:
            for f in files:
                append.append_data_file(f)
    return table

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

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.conversions import to_bytes
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import BooleanExpression
from pyiceberg.io.fileformat import DataFileStatistics
from pyiceberg.io.pyarrow import (
    MetricModeTypes,
    StatisticsCollector,
    StatsAggregator,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import update_table_metadata
from pyiceberg.transforms import TruncateTransform
from pyiceberg.types import BinaryType, DecimalType, StringType
from pyiceberg.utils.concurrent import ExecutorFactory
from pyiceberg.utils.truncate import truncate_upper_bound_binary_string, truncate_upper_bound_text_string

from streaming.lake.state import HOUR_US

logger = logging.getLogger(__name__)

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
#: Dictionary page limit of every lake file. Arrow's default (1 MiB) is sized for large files:
#: in a partition file of a few thousand rows no column reaches it, so unique-valued columns
#: (event ids, trade ids, timestamps, sequence numbers) were hashed value by value into a
#: dictionary larger than the plain values. At 8 KiB a column falls back to plain encoding after
#: its first write batch (1,024 values) unless its distinct values are few (exchange, symbol,
#: side, scales keep their dictionary). Measured on trades and book deltas, micro-batch and
#: sealed files alike: 1-33 % less write CPU (none on 2k-row files) and 9-28 % smaller files
#: (decisions.md, "Lake writer: dictionary limit, faster sort and statistics").
DICTIONARY_PAGE_BYTES = 8 * 1024


def parquet_options(compression_level: int = MICRO_BATCH_COMPRESSION_LEVEL) -> dict:
    """The Parquet writer options of lake files (also the bench's baseline and floor, so that
    they compare the same encoding work)."""
    return {
        "compression": "zstd",
        "compression_level": compression_level,
        "write_statistics": True,
        "dictionary_pagesize_limit": DICTIONARY_PAGE_BYTES,
    }


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


#: The layout's string keys. The sort ranks them through a dictionary encoding, and the files
#: are written from that same encoding: the Parquet writer then takes each column's dictionary
#: and indices as they are instead of hashing every value again, and the sort gathers 4-byte
#: indices instead of strings (decisions.md, "Lake writer: the layout keys written from the sort's dictionaries").
LAYOUT_KEYS = ("exchange", "market", "symbol")


def _ranks(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Per-row rank of the value among the column's distinct values (string order), so
    string keys sort as small integers, and those distinct values in that order (the ranks
    index them: a dictionary that depends on the values present, not on their arrival order)."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks() if enc.num_chunks != 1 else enc.chunk(0)
        if isinstance(enc, pa.ChunkedArray):  # combine_chunks of dictionaries may unify lazily
            enc = pa.concat_arrays(enc.chunks)
    dictionary = enc.dictionary
    order = pc.sort_indices(dictionary)
    rank = np.empty(len(dictionary), dtype=np.int32)
    rank[order.to_numpy()] = np.arange(len(dictionary), dtype=np.int32)
    return rank[enc.indices.to_numpy(zero_copy_only=False)], dictionary.take(order)


@dataclass(frozen=True, slots=True)
class _Layout:
    order: np.ndarray | None  # None: the rows are in layout order already
    part: np.ndarray  # each row's partition key, in input order
    keys: dict[str, pa.DictionaryArray]  # LAYOUT_KEYS by their sorted dictionaries, in input order


def _ordered_within(group: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> bool:
    """Rows already grouped: is each group's (exchange_ts, seq) nondecreasing?"""
    same = group[1:] == group[:-1]
    step = np.diff(ts)
    return bool((step[same] >= 0).all() and (np.diff(seq)[same & (step == 0)] >= 0).all())


def _layout(table: pa.Table) -> _Layout:
    ranked = {name: _ranks(table.column(name)) for name in LAYOUT_KEYS}
    keys = {name: pa.DictionaryArray.from_arrays(pa.array(r), values) for name, (r, values) in ranked.items()}
    (ex, _), (mk, mk_values), (sym, sym_values) = (ranked[name] for name in LAYOUT_KEYS)
    n_mk, n_sym = len(mk_values), len(sym_values)
    ts = table.column("exchange_ts").cast(pa.int64()).to_numpy()
    hours = ts // HOUR_US
    h0 = int(hours.min()) if len(hours) else 0
    span = int(hours.max()) - h0 + 1 if len(hours) else 1
    part = (ex.astype(np.int64) * n_mk + mk) * span + (hours - h0)
    seq = table.column("seq").to_numpy()
    group = part * n_sym + sym
    n_groups = (int(part.max()) + 1) * n_sym if len(part) else 1
    if _ordered_within(group, ts, seq) and (np.diff(group) >= 0).all():
        return _Layout(None, part, keys)  # in layout order already: no sort, and no take of every column
    if n_groups <= 1 << 16:
        # Rows arrive in time order per instrument: a stable radix sort of the group alone
        # (numpy sorts 16-bit keys by radix) is then the whole sort, 4x cheaper than the lexsort
        # below, and checking that each group came out in (exchange_ts, seq) order is O(n).
        order = np.argsort(group.astype(np.uint16), kind="stable")
        if _ordered_within(group[order], ts[order], seq[order]):
            return _Layout(order, part, keys)
    t0 = int(ts.min()) if len(ts) else 0
    ts_bits = (int(ts.max()) - t0).bit_length() if len(ts) else 0
    if n_groups.bit_length() + ts_bits > 62:
        return _Layout(np.lexsort((seq, ts, group)), part, keys)
    return _Layout(np.lexsort((seq, (group << ts_bits) | (ts - t0))), part, keys)


def layout_order(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row order by (exchange, market, hour, symbol, exchange_ts, seq) and each row's
    partition key in that order. Integer keys and numpy sorts: several times faster than
    a multi-column Arrow sort over strings. Rows already in that order (checked in O(n)) are
    not sorted; rows in time order within each (partition, symbol), the usual case, take a
    radix sort of that group alone; others a lexsort with (partition, symbol, exchange_ts)
    packed into one int64 when they fit in 62 bits (tests/test_lake_writer.py)."""
    lay = _layout(table)
    if lay.order is None:
        return np.arange(len(lay.part)), lay.part
    return lay.order, lay.part[lay.order]


def layout_table(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The rows in layout order with LAYOUT_KEYS as dictionary columns, and each row's
    partition key: what the writer cuts into files."""
    lay = _layout(table)
    for name, arr in lay.keys.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i).with_type(arr.type), arr)
    if lay.order is None:
        return table, lay.part
    return _take_columns(table, pa.array(lay.order)), lay.part[lay.order]


#: Rows from which the sort's gather runs in the pool: measured on 25-column trade rows, 0.3 ms
#: of hand-offs made 2k rows 2.3x slower, equal at 10k, 1.6x faster at 50k.
POOLED_TAKE_ROWS = 16_384


def _take_columns(table: pa.Table, indices: pa.Array) -> pa.Table:
    """table.take with the columns gathered in pyiceberg's thread pool: Arrow's take runs one
    column after another on one core and releases the GIL, and the gather is memory-bound work
    over every column (a third of a 200k-row write before the file writes ran in the pool).
    Below POOLED_TAKE_ROWS the pool's hand-offs cost more than they save."""
    if table.num_rows < POOLED_TAKE_ROWS:
        return table.take(indices)
    taken = ExecutorFactory.get_or_create().map(lambda col: col.take(indices), table.columns)
    return pa.Table.from_arrays(list(taken), schema=table.schema)


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


def partition_path(hour_us: int, exchange: str, market: str) -> str:
    """A partition's directory under a lake table's data/ (Hive-style, as pyiceberg names it)."""
    return f"exchange_ts_hour={hour_path_value(hour_us)}/exchange={exchange}/market={market}"


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


def _with_dictionary_keys(schema: pa.Schema) -> pa.Schema:
    """The write schema: LAYOUT_KEYS as the dictionaries layout_table makes (field ids kept).
    The Parquet column stays a plain UTF-8 string, and the files carry no Arrow schema hint
    (store_schema=False), which would make Arrow readers return these columns as dictionaries
    where every other engine reads strings."""
    fields = []
    for f in schema:
        if f.name in LAYOUT_KEYS:
            if f.type != pa.string():
                raise TypeError(f"layout key {f.name} is {f.type}, the writer expects string")
            f = f.with_type(pa.dictionary(pa.int32(), pa.string()))
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


@dataclass(frozen=True, slots=True)
class _Column:
    field_id: int
    counts: bool  # value and null counts (metrics mode other than none)
    bounds: bool  # lower and upper bounds (truncate or full)
    lower: Callable[[Any], bytes | None]
    upper: Callable[[Any], bytes | None]
    collector: StatisticsCollector


class _Bounds:
    """What DataFileStatistics.partition reads of a column's StatsAggregator."""

    __slots__ = ("current_max", "current_min")

    def __init__(self, lo: Any, hi: Any):
        self.current_min, self.current_max = lo, hi


def _serializers(col: StatisticsCollector) -> tuple[Callable[[Any], bytes | None], Callable[[Any], bytes | None]]:
    """StatsAggregator.min_as_bytes / max_as_bytes for one column, their transform built once."""
    t, length = col.iceberg_type, col.mode.length
    trunc = None if length is None else TruncateTransform(width=length).transform(t)
    is_string, is_binary = t == StringType(), t == BinaryType()

    def lower(v: Any) -> bytes | None:
        return None if v is None else to_bytes(t, v if trunc is None else trunc(v))

    def upper(v: Any) -> bytes | None:
        if v is None:
            return None
        if is_string:
            if not isinstance(v, str):
                raise ValueError("Expected the current_max to be a string")
            r = truncate_upper_bound_text_string(v, length)
        elif is_binary:
            if not isinstance(v, bytes):
                raise ValueError("Expected the current_max to be bytes")
            r = truncate_upper_bound_binary_string(v, length)
        else:
            if length is not None:
                raise ValueError(f"{t} cannot be truncated")
            r = v
        return None if r is None else to_bytes(t, r)

    return lower, upper


class _FileStatistics:
    """pyiceberg's data_file_statistics_from_parquet_metadata and to_serialized_dict for the files
    of one writer, with what depends only on the table (each column's field id, metrics mode,
    truncation, the physical type check) worked out once, not per file and column: pyiceberg
    spent ~1.4 ms per file on it, ~15 % of a 24-partition write. The same values, key order
    included: tests/test_lake_writer.py compares every file of trade and book-delta writes with
    pyiceberg's own. A table with a decimal column takes pyiceberg's path (none has one)."""

    def __init__(self, stats_plan: dict[int, StatisticsCollector], col_mapping: dict[str, int]):
        self.stats_plan, self.col_mapping = stats_plan, col_mapping
        self.generic = any(isinstance(c.iceberg_type, DecimalType) for c in stats_plan.values())
        self._paths: tuple[str, ...] = ()
        self._columns: list[_Column] = []
        self._checked: set[tuple[int, str]] = set()

    def _plan(self, md: pq.FileMetaData) -> list[_Column]:
        rg = md.row_group(0)
        paths = tuple(rg.column(i).path_in_schema for i in range(md.num_columns))
        if paths != self._paths:
            cols = []
            for path in paths:
                c = self.stats_plan[self.col_mapping[path]]
                mode = c.mode.type
                cols.append(
                    _Column(
                        c.field_id,
                        mode != MetricModeTypes.NONE,
                        mode in (MetricModeTypes.TRUNCATE, MetricModeTypes.FULL),
                        *_serializers(c),
                        c,
                    )
                )
            self._paths, self._columns = paths, cols
        return self._columns

    def __call__(self, md: pq.FileMetaData) -> tuple[DataFileStatistics, dict[str, Any]]:
        """The file's statistics (for its partition) and DataFile fields, as pyiceberg's."""
        if self.generic or md.num_row_groups == 0:
            stats = data_file_statistics_from_parquet_metadata(md, self.stats_plan, self.col_mapping)
            return stats, stats.to_serialized_dict()
        cols = self._plan(md)
        sizes: dict[int, int] = {}
        values: dict[int, int] = {}
        nulls: dict[int, int] = {}
        bounds: dict[int, list] = {}
        invalid: set[int] = set()
        offsets: list[int] = []
        for r in range(md.num_row_groups):
            rg = md.row_group(r)
            c0 = rg.column(0)
            data_offset, dict_offset = c0.data_page_offset, c0.dictionary_page_offset
            offsets.append(dict_offset if c0.has_dictionary_page and dict_offset < data_offset else data_offset)
            for pos, col in enumerate(cols):
                chunk = rg.column(pos)
                fid = col.field_id
                sizes[fid] = sizes.get(fid, 0) + chunk.total_compressed_size
                if not col.counts:
                    continue
                values[fid] = values.get(fid, 0) + chunk.num_values
                if not chunk.is_stats_set:
                    invalid.add(fid)
                    logger.warning("PyArrow statistics missing for column %d when writing file", pos)
                    continue
                try:
                    st = chunk.statistics
                    if st.has_null_count:
                        nulls[fid] = nulls.get(fid, 0) + st.null_count
                    if not col.bounds:
                        continue
                    if (pos, st.physical_type) not in self._checked:  # raises as pyiceberg does
                        try:
                            StatsAggregator(col.collector.iceberg_type, st.physical_type, col.collector.mode.length)
                        except ValueError as e:
                            raise ValueError(f"{e} for column '{col.collector.column_name}'") from e
                        self._checked.add((pos, st.physical_type))
                    lo, hi = st.min, st.max
                    b = bounds.get(fid)
                    if b is None:
                        bounds[fid] = [lo, hi]
                    else:  # StatsAggregator.update_min / update_max
                        b[0] = lo if b[0] is None else (b[0] if lo is None else min(lo, b[0]))
                        b[1] = hi if b[1] is None else (b[1] if hi is None else max(hi, b[1]))
                except pa.lib.ArrowNotImplementedError as e:
                    invalid.add(fid)
                    logger.warning(e)
        offsets.sort()
        for fid in invalid:
            bounds.pop(fid, None)
            nulls.pop(fid, None)
        by_id = {c.field_id: c for c in cols}
        lower: dict[int, bytes] = {}
        upper: dict[int, bytes] = {}
        for fid, (lo, hi) in bounds.items():
            if (v := by_id[fid].lower(lo)) is not None:
                lower[fid] = v
            if (v := by_id[fid].upper(hi)) is not None:
                upper[fid] = v
        stats = DataFileStatistics(
            record_count=md.num_rows,
            column_sizes=sizes,
            value_counts=values,
            null_value_counts=nulls,
            nan_value_counts={},
            column_aggregates={fid: _Bounds(lo, hi) for fid, (lo, hi) in bounds.items()},  # type: ignore[misc]
            split_offsets=offsets,
        )
        return stats, {
            "record_count": md.num_rows,
            "column_sizes": sizes,
            "value_counts": values,
            "null_value_counts": nulls,
            "nan_value_counts": {},
            "lower_bounds": lower,
            "upper_bounds": upper,
            "split_offsets": offsets,
        }


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
        self.write_schema = _with_dictionary_keys(self.arrow_schema)
        self.stats_plan = compute_statistics_plan(self.schema, meta.properties)
        self.col_mapping = parquet_path_to_id_mapping(self.schema)
        self.file_statistics = _FileStatistics(self.stats_plan, self.col_mapping)
        prop = meta.properties.get("write.target-file-size-bytes")
        self.target_file_bytes = target_file_bytes or (int(prop) if prop else DEFAULT_TARGET_FILE_BYTES)
        self.compression_level = compression_level
        self.options = parquet_options(compression_level)

    def write(self, rows: pa.Table, prefix: str = "sink") -> list[DataFile]:
        """Sort once, cut at partition boundaries, write each run (split by target size).

        The files are encoded in pyiceberg's shared thread pool, as its own append writes its
        files: Arrow's Parquet encoding releases the GIL, so a batch spanning partitions uses
        every core instead of one. Statistics and DataFiles are built here afterwards, in
        partition order, so the commit is the same whichever file finishes first."""
        if rows.num_rows == 0:
            return []
        rows, part_keys = layout_table(rows.select(self.arrow_schema.names))
        rows = self._with_field_ids(rows)
        jobs = [
            (chunk, run, self._file_path(run, prefix))
            for run in partition_runs(rows, part_keys)
            for chunk in self._split(rows.slice(run.start, run.stop - run.start))
        ]
        chunks, paths = [chunk for chunk, _, _ in jobs], [path for _, _, path in jobs]
        if len(jobs) == 1:
            written = [self._write_parquet(chunks[0], paths[0])]
        else:
            written = list(ExecutorFactory.get_or_create().map(self._write_parquet, chunks, paths))
        return [self._data_file(path, run, size, md) for (_, run, path), (size, md) in zip(jobs, written, strict=True)]

    def _with_field_ids(self, rows: pa.Table) -> pa.Table:
        """Attach the Iceberg field ids; zero-copy when only metadata/nullability differ."""
        if all(a.type == b.type for a, b in zip(rows.schema, self.write_schema, strict=True)):
            return pa.Table.from_arrays(rows.columns, schema=self.write_schema)
        return rows.cast(self.write_schema)

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

    def _file_path(self, run: PartitionRun, prefix: str) -> str:
        part_dir = partition_path(run.hour_us, run.exchange, run.market)
        return f"{self.table.location()}/data/{part_dir}/{prefix}-{uuid.uuid4().hex}.parquet"

    def _write_parquet(self, chunk: pa.Table, path: str) -> tuple[int, pq.FileMetaData]:
        """Runs in a pool thread: touches nothing shared but the table's FileIO."""
        with self.table.io.new_output(path).create(overwrite=True) as stream:
            with pq.ParquetWriter(stream, schema=self.write_schema, store_schema=False, **self.options) as writer:
                writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)
            size = stream.tell()  # the file's size without asking the store (a HEAD request on S3)
        return size, writer.writer.metadata

    def _data_file(self, path: str, run: PartitionRun, size: int, metadata: pq.FileMetaData) -> DataFile:
        stats, fields = self.file_statistics(metadata)
        meta = self.table.metadata
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=stats.partition(meta.spec(), meta.schema()),
            file_size_in_bytes=size,
            sort_order_id=meta.default_sort_order_id,
            spec_id=meta.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **fields,
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

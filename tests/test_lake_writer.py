"""The lake writer's fast paths give what the plain ones give: the packed-key sort and the
already-sorted skip the same row order as a four-key lexsort, and each DataFile the same
statistics, bounds and partition as pyiceberg's data_file_statistics_from_parquet_metadata
(real SQLite Iceberg catalog, real files; no mocks)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.io.pyarrow import data_file_statistics_from_parquet_metadata

from schemas.arrow_convert import envelopes_to_table
from schemas.iceberg import ensure_all_tables
from schemas.model import EventType
from schemas.tables import HOUR_US
from streaming.lake import writer as lake_writer
from streaming.lake.writer import (
    DICTIONARY_PAGE_BYTES,
    LakeFileWriter,
    _FileStatistics,
    commit_files,
    layout_order,
    parquet_options,
)
from workloads.synthetic import SyntheticMarket

TYPES = {et.payload_field: et for et in EventType}


def market_tables(n: int = 6000) -> dict[str, pa.Table]:
    """Trades and book deltas of the synthetic market (several symbols), in arrival order."""
    by_type: dict[str, list] = {}
    for e in SyntheticMarket(seed=11).events(n, spacing_us=2_000_000):
        by_type.setdefault(e.WhichOneof("payload"), []).append(e)
    return {k: envelopes_to_table(TYPES[k], v) for k, v in by_type.items() if k in ("trade", "book_delta")}


def mixed(rows: pa.Table, seed: int = 0, shuffle: bool = True) -> pa.Table:
    """The rows shuffled (or left in arrival order), spread over three exchanges x two markets,
    with (symbol, exchange_ts) ties whose seq is out of input order."""
    rng = np.random.default_rng(seed)
    n = rows.num_rows
    if shuffle:
        rows = rows.take(pa.array(rng.permutation(n)))
    ex = pa.array(np.array(["binance", "bybit", "okx"])[rng.integers(0, 3, n)])
    mk = pa.array(np.array(["spot", "perp"])[rng.integers(0, 2, n)])
    ts = rows.column("exchange_ts").cast(pa.int64()).to_numpy().copy()
    ts[1::7] = ts[0:-1:7][: len(ts[1::7])]  # ties on exchange_ts
    rows = rows.set_column(rows.schema.get_field_index("exchange"), rows.schema.field("exchange"), ex)
    rows = rows.set_column(rows.schema.get_field_index("market"), rows.schema.field("market"), mk)
    i = rows.schema.get_field_index("exchange_ts")
    return rows.set_column(i, rows.schema.field(i), pa.array(ts).cast(rows.schema.field(i).type))


def reference_order(rows: pa.Table) -> np.ndarray:
    """(exchange, market, hour, symbol, exchange_ts, seq) by a plain multi-key sort."""
    ts = rows.column("exchange_ts").cast(pa.int64()).to_numpy()
    keys = [
        ("exchange", "ascending"),
        ("market", "ascending"),
        ("hour", "ascending"),
        ("symbol", "ascending"),
        ("exchange_ts", "ascending"),
        ("seq", "ascending"),
        ("row", "ascending"),
    ]
    t = pa.table(
        {
            "exchange": rows.column("exchange"),
            "market": rows.column("market"),
            "hour": pa.array(ts - np.mod(ts, HOUR_US)),
            "symbol": rows.column("symbol"),
            "exchange_ts": pa.array(ts),
            "seq": rows.column("seq"),
            "row": pa.array(np.arange(rows.num_rows)),
        }
    )
    return pc.sort_indices(t, sort_keys=keys).to_numpy()


@pytest.fixture
def lake(tmp_path):
    cat = load_catalog(
        "t",
        type="sql",
        uri=f"sqlite:///{tmp_path}/catalog.db",
        warehouse=(tmp_path / "wh").as_uri(),
        init_catalog_tables="true",
    )
    return ensure_all_tables(cat)


@pytest.mark.parametrize("kind", ["trade", "book_delta"])
def test_layout_order_is_the_multi_key_sort(kind: str) -> None:
    rows = mixed(market_tables()[kind])
    order, parts = layout_order(rows)
    assert np.array_equal(order, reference_order(rows))
    assert (np.diff(parts) >= 0).all()
    # rows spanning centuries do not fit the packed key: the four-key lexsort, same order
    ts = rows.column("exchange_ts").cast(pa.int64()).to_numpy().copy()
    ts[::5] += 10**17
    i = rows.schema.get_field_index("exchange_ts")
    wide = rows.set_column(i, rows.schema.field(i), pa.array(ts).cast(rows.schema.field(i).type))
    assert np.array_equal(layout_order(wide)[0], reference_order(wide))


@pytest.mark.parametrize("kind", ["trade", "book_delta"])
def test_rows_in_time_order_take_the_group_sort(kind: str, monkeypatch) -> None:
    """Arrival order (time order per instrument, partitions interleaved) is sorted by the radix
    sort of (partition, symbol) alone: the same order as the multi-key sort, and no lexsort; a
    tie on exchange_ts whose seq runs backwards makes it fall back to the lexsort."""
    rows = market_tables()[kind]
    rng = np.random.default_rng(2)
    n = rows.num_rows
    for name, values in (("exchange", ["binance", "bybit", "okx"]), ("market", ["spot", "perp"])):
        i = rows.schema.get_field_index(name)
        rows = rows.set_column(i, rows.schema.field(i), pa.array(np.array(values)[rng.integers(0, len(values), n)]))
    expected = reference_order(rows)
    assert not np.array_equal(expected, np.arange(n))  # not in layout order already

    def no_lexsort(*_a, **_k):
        raise AssertionError("lexsort used")

    with monkeypatch.context() as m:
        m.setattr(np, "lexsort", no_lexsort)
        order, parts = layout_order(rows)
    assert np.array_equal(order, expected)
    assert (np.diff(parts) >= 0).all()
    # a tie on (partition, symbol, exchange_ts) whose seq decreases: the group sort alone is wrong
    a, b = int(expected[0]), int(expected[1])
    seq = rows.column("seq").to_numpy().copy()
    ts = rows.column("exchange_ts").cast(pa.int64()).to_numpy().copy()
    ts[b], seq[a], seq[b] = ts[a], seq[b] + 1, seq[b]
    i, j = rows.schema.get_field_index("exchange_ts"), rows.schema.get_field_index("seq")
    rows = rows.set_column(i, rows.schema.field(i), pa.array(ts).cast(rows.schema.field(i).type))
    rows = rows.set_column(j, rows.schema.field(j), pa.array(seq).cast(rows.schema.field(j).type))
    order, _ = layout_order(rows)
    assert np.array_equal(order, reference_order(rows))
    assert order.tolist().index(b) < order.tolist().index(a)


@pytest.mark.parametrize("kind", ["trade", "book_delta"])
def test_already_sorted_rows_are_written_as_sorting_would(lake, kind: str) -> None:
    """The skip (rows in layout order already: no sort, no take) writes byte-for-byte the rows
    the sorted path writes, in the same order; unsorted input of the same rows gives them too."""
    table = lake[{"trade": "trades", "book_delta": "book_deltas"}[kind]]
    rows = mixed(market_tables()[kind], seed=3)
    in_order = rows.take(pa.array(reference_order(rows)))
    assert np.array_equal(layout_order(in_order)[0], np.arange(in_order.num_rows))  # the skip applies
    writer = LakeFileWriter(table)
    written = {}
    for name, data in (("unsorted", rows), ("sorted", in_order)):
        files = writer.write(data, prefix=name)
        key = lambda f: (f.partition[0], f.partition[1], f.partition[2])  # noqa: E731
        written[name] = [table.io.new_input(f.file_path).open().read() for f in sorted(files, key=key)]
    assert len(written["sorted"]) == len(written["unsorted"]) > 6
    for a, b in zip(written["sorted"], written["unsorted"], strict=True):
        assert a == b  # the same file, byte for byte
    together = pa.concat_tables([pq.read_table(pa.BufferReader(b)) for b in written["sorted"]])
    assert together.num_rows == rows.num_rows
    assert sorted(together.column("event_id").to_pylist()) == sorted(rows.column("event_id").to_pylist())


class _OneByOne:
    """An executor that runs each task on the calling thread, in order."""

    map = staticmethod(map)


@pytest.mark.parametrize("kind", ["trade", "book_delta"])
def test_the_pool_changes_no_file_and_no_order(lake, kind: str, monkeypatch) -> None:
    """The sort's gather and the file writes in pyiceberg's thread pool write the same bytes,
    and the DataFiles come back in the same (partition) order, as the same work done one task
    after another on the calling thread."""
    table = lake[{"trade": "trades", "book_delta": "book_deltas"}[kind]]
    rows = mixed(market_tables()[kind], seed=7)
    written = {}
    for name in ("pool", "one-by-one"):
        if name == "pool":
            monkeypatch.setattr(lake_writer, "POOLED_TAKE_ROWS", 0)  # the gather in the pool at any size
        else:
            monkeypatch.setattr(lake_writer, "POOLED_TAKE_ROWS", 1 << 62)
            monkeypatch.setattr(lake_writer.ExecutorFactory, "get_or_create", staticmethod(_OneByOne))
        files = LakeFileWriter(table).write(rows, prefix="same")
        written[name] = [
            (tuple(f.partition), f.record_count, table.io.new_input(f.file_path).open().read()) for f in files
        ]
    assert len(written["pool"]) > 6
    assert [w[:2] for w in written["pool"]] == [w[:2] for w in written["one-by-one"]]
    assert written["pool"] == written["one-by-one"]  # byte for byte, file by file


def _pyiceberg_fields(writer: LakeFileWriter, md: pq.FileMetaData) -> tuple[dict, object]:
    meta = writer.table.metadata
    stats = data_file_statistics_from_parquet_metadata(md, writer.stats_plan, writer.col_mapping)
    return stats.to_serialized_dict(), stats.partition(meta.spec(), meta.schema())


@pytest.mark.parametrize("kind", ["trade", "book_delta"])
def test_data_files_carry_pyiceberg_statistics(lake, kind: str) -> None:
    table = lake[{"trade": "trades", "book_delta": "book_deltas"}[kind]]
    rows = mixed(market_tables()[kind], seed=5)
    writer = LakeFileWriter(table)
    files = writer.write(rows)
    assert len(files) > 6
    for f in files:
        stream = table.io.new_input(f.file_path)
        assert len(stream) == f.file_size_in_bytes
        expected, partition = _pyiceberg_fields(writer, pq.ParquetFile(stream.open()).metadata)
        got = {k: getattr(f, k) for k in expected}
        assert got == expected
        assert list(got["lower_bounds"]) == list(expected["lower_bounds"])  # same key order too
        assert f.partition == partition
    # several row groups, nulls, strings past the 16-character truncation: still pyiceberg's values
    big = writer._with_field_ids(rows.select(writer.arrow_schema.names))
    buf = pa.BufferOutputStream()
    with pq.ParquetWriter(buf, schema=writer.write_schema, store_schema=False, **parquet_options()) as w:
        w.write_table(big, row_group_size=700)
    md = pq.ParquetFile(pa.BufferReader(buf.getvalue())).metadata
    assert md.num_row_groups > 3
    stats, fields = _FileStatistics(writer.stats_plan, writer.col_mapping)(md)
    assert (
        fields
        == data_file_statistics_from_parquet_metadata(md, writer.stats_plan, writer.col_mapping).to_serialized_dict()
    )
    assert stats.record_count == rows.num_rows
    committed = commit_files(table, files, {"test": "1"}).refresh()
    assert committed.scan().to_arrow().num_rows == rows.num_rows


def _dictionary_page_bytes(md: pq.FileMetaData, name: str) -> int:
    names = [md.row_group(0).column(i).path_in_schema for i in range(md.num_columns)]
    col = md.row_group(0).column(names.index(name))
    return col.data_page_offset - col.dictionary_page_offset if col.has_dictionary_page else 0


def test_unique_columns_fall_back_to_plain_encoding(lake) -> None:
    """Past DICTIONARY_PAGE_BYTES of distinct values a column is written plain (its dictionary
    holds one write batch, not every id as with Arrow's 1 MiB default); a low-cardinality
    column keeps its dictionary."""
    table = lake["trades"]
    rows = market_tables(30_000)["trade"]
    n = rows.num_rows
    i = rows.schema.get_field_index("exchange_ts")
    hour = pa.array(np.full(n, 478_656 * HOUR_US) + np.arange(n)).cast(rows.schema.field(i).type)
    rows = rows.set_column(i, rows.schema.field(i), hour)  # one partition, one file
    (f,) = LakeFileWriter(table).write(rows)
    ours = pq.ParquetFile(table.io.new_input(f.file_path).open()).metadata
    assert ours.num_rows == n > 8 * 1024
    buf = pa.BufferOutputStream()
    pq.write_table(pq.read_table(table.io.new_input(f.file_path).open()), buf, compression="zstd")  # Arrow defaults
    default = pq.ParquetFile(pa.BufferReader(buf.getvalue())).metadata
    assert DICTIONARY_PAGE_BYTES < 1024 * 1024
    assert 0 < _dictionary_page_bytes(ours, "event_id") * 4 < _dictionary_page_bytes(default, "event_id")
    assert 0 < _dictionary_page_bytes(ours, "taker_side") < 1024

"""Hourly lake assets: sealing (closed hours only, idempotent) and the hour checks, run
through dg.materialize against a real SQLite Iceberg catalog filled by the real sink."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.lake_hours import (
    CHECK_DUPLICATES,
    CHECK_ROW_COUNT,
    CHECK_SCHEMA,
    CHECK_SEQUENCE,
    CHECK_SMALL_FILES,
    LAKE_HOUR_ASSETS,
    LAKE_HOUR_CHECKS,
    run_checks,
)
from assets.lake_setup import lake_tables
from assets.partitions import hour_start
from resources.lake import LakeResource
from runtime import kafka_config as kc
from schemas.model import EventType
from schemas.tables import TABLES
from streaming.kafka.broker import EmbeddedBroker
from streaming.lake.seal import hour_layout
from streaming.lake.sink import LakeSink, SinkConfig, hour_filter
from tests.support.lake import (
    create_sink_topics,
    open_home_catalog,
    produce,
    sink_topics,
)
from workloads.synthetic import SyntheticMarket

pytestmark = pytest.mark.broker

warnings.filterwarnings("ignore", category=dg.PreviewWarning if hasattr(dg, "PreviewWarning") else Warning)

H0 = "2024-08-09-00:00"
H2 = "2024-08-09-02:00"


@pytest.fixture
def filled_lake(tmp_path, ticklake_home):
    """~2.5 hours of a synthetic market committed by the sink in small micro-batches."""
    events = SyntheticMarket(seed=11).events(6000, spacing_us=1_500_000)
    topics = sink_topics()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        create_sink_topics(b.bootstrap, topics, partitions=2)
        produce(b.bootstrap, events)
        catalog = open_home_catalog(ticklake_home)
        sink = LakeSink(
            kc.KafkaConnection(bootstrap_servers=b.bootstrap),
            catalog,
            SinkConfig(topics=topics, batch_max_records=700, batch_max_ms=200, allowed_lateness_us=5_000_000),
        )
        sink.start()
        deadline = time.monotonic() + 120  # turns a hang into a failure, never a pass
        while sink.stats.records_in < len(events):  # batch by batch until every record is in
            assert time.monotonic() < deadline, f"sink stuck at {sink.stats}"
            sink.run_once()
        sink.close()
    assert sink.stats.rows == len(events)
    return catalog, LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)


def materialize(lake: LakeResource, names: list[str], partition: str) -> dg.ExecuteInProcessResult:
    defs = [lake_tables] + [LAKE_HOUR_ASSETS[n] for n in names] + [LAKE_HOUR_CHECKS[n] for n in names]
    return dg.materialize(
        defs,
        partition_key=partition,
        resources={"lake": lake},
        raise_on_error=False,
        selection=dg.AssetSelection.assets(*[LAKE_HOUR_ASSETS[n] for n in names])
        | dg.AssetSelection.checks_for_assets(*[LAKE_HOUR_ASSETS[n] for n in names]),
    )


def checks_by_name(result: dg.ExecuteInProcessResult, table: str) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey(["lake", table])
    }


def hour_rows(catalog, table: str, key: str) -> pa.Table:
    hour_us = int(hour_start(key).timestamp()) * 1_000_000
    rows = catalog.load_table(f"market.{table}").scan(row_filter=hour_filter(hour_us)).to_arrow()
    return rows.sort_by([("event_id", "ascending")])


def seal_metadata(result: dg.ExecuteInProcessResult, table: str) -> dict:
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(["lake", table])]
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].materialization.metadata.items()}


def test_seal_closed_hour_is_idempotent_and_checks_pass(filled_lake):
    catalog, lake = filled_lake
    names = ["trades", "book_deltas"]
    before = {n: hour_rows(catalog, n, H0) for n in names}
    for n in names:  # micro-batch layout: several small files per partition before sealing
        small = {c.check_name: c for c in run_checks(TABLES[_et(n)], lake, H0)}[CHECK_SMALL_FILES]
        assert not small.passed

    first = materialize(lake, names, H0)
    assert first.success
    for n in names:
        meta = seal_metadata(first, n)
        assert meta["dagster/row_count"] == before[n].num_rows > 0
        assert meta["files_before"] > meta["file_count"] >= 1 and not meta["already_sealed"]
        assert meta["min_event_time"].startswith("2024-08-09T00:") and meta["max_event_time"].startswith(
            "2024-08-09T00:"
        )
        assert hour_rows(catalog, n, H0).equals(before[n])  # same data
        checks = checks_by_name(first, n)
        expected = {CHECK_SCHEMA, CHECK_DUPLICATES, CHECK_ROW_COUNT, CHECK_SMALL_FILES} | (
            {CHECK_SEQUENCE} if n == "book_deltas" else set()
        )
        assert set(checks) == expected
        assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    table = catalog.load_table("market.trades")
    hour_us = int(hour_start(H0).timestamp()) * 1_000_000
    files_after_first = sorted(f.file_path for f in hour_layout(table, hour_us).files)
    snapshot_after_first = table.current_snapshot().snapshot_id

    second = materialize(lake, names, H0)
    assert second.success
    meta2 = seal_metadata(second, "trades")
    assert meta2["already_sealed"] and meta2["dagster/row_count"] == before["trades"].num_rows
    table = table.refresh()
    assert table.current_snapshot().snapshot_id == snapshot_after_first
    assert sorted(f.file_path for f in hour_layout(table, hour_us).files) == files_after_first
    assert hour_rows(catalog, "trades", H0).equals(before["trades"])

    # A table without rows in the hour (funding: spot has none) seals to nothing and passes.
    empty = materialize(lake, ["funding"], H0)
    assert empty.success and seal_metadata(empty, "funding")["dagster/row_count"] == 0
    assert all(c.passed for c in checks_by_name(empty, "funding").values())

    # The newest hour is still open: the lake watermark has not passed its end + grace.
    open_hour = materialize(lake, ["trades"], H2)
    assert not open_hour.success
    failure = next(e for e in open_hour.all_events if e.event_type_value == "STEP_FAILURE")
    assert "is not closed yet" in str(failure.event_specific_data.error)


def test_checks_fail_on_corrupted_hour(filled_lake):
    catalog, lake = filled_lake
    assert materialize(lake, ["trades", "book_deltas"], H0).success
    hour_us = int(hour_start(H0).timestamp()) * 1_000_000

    # Duplicate rows: five rows of the hour written again behind the sink's back.
    trades = catalog.load_table("market.trades")
    rows = hour_rows(catalog, "trades", H0)
    trades.append(rows.slice(0, 5))
    res = materialize(lake, ["trades"], H0)
    checks = checks_by_name(res, "trades")
    assert not checks[CHECK_DUPLICATES].passed and "5 duplicate rows" in checks[CHECK_DUPLICATES].description
    assert not checks[CHECK_ROW_COUNT].passed
    assert checks[CHECK_SCHEMA].passed

    # A sequence gap: one mid-hour delta of ETH-USDT removed from the sealed hour.
    deltas = catalog.load_table("market.book_deltas")
    drows = hour_rows(catalog, "book_deltas", H0).sort_by([("symbol", "ascending"), ("seq", "ascending")])
    eth = pc.equal(drows.column("symbol"), "ETH-USDT").to_pylist()
    victim = [i for i, e in enumerate(eth) if e][len([e for e in eth if e]) // 2]
    keep = pa.array([i != victim for i in range(drows.num_rows)])
    deltas.overwrite(drows.filter(keep), overwrite_filter=hour_filter(hour_us))
    res = materialize(lake, ["book_deltas"], H0)
    checks = checks_by_name(res, "book_deltas")
    seq = checks[CHECK_SEQUENCE]
    assert not seq.passed and "ETH-USDT" in seq.description
    assert seq.metadata["details"].value["symbols"] == {"binance/spot/ETH-USDT": 1}
    assert not checks[CHECK_ROW_COUNT].passed and checks[CHECK_DUPLICATES].passed


def _et(name: str) -> EventType:
    return next(s.event_type for s in TABLES.values() if s.name == name)


def test_seal_rebases_over_commits_outside_the_hour_and_redoes_on_late_rows(filled_lake, monkeypatch):
    from streaming.lake import seal as lake_seal
    from streaming.lake.writer import LakeFileWriter, commit_files

    catalog, _ = filled_lake
    h0 = int(hour_start(H0).timestamp()) * 1_000_000
    h1 = int(hour_start("2024-08-09-01:00").timestamp()) * 1_000_000
    other = catalog.load_table("market.trades")
    one_h1 = other.scan(row_filter=hour_filter(h1), limit=1).to_arrow()
    one_h0 = other.scan(row_filter=hour_filter(h0), limit=1).to_arrow()
    expected = hour_rows(catalog, "trades", H0).num_rows
    interleave = [h1, h0]  # first a commit into 01:00 (outside), then a late row into 00:00
    calls = {"n": 0}

    def commit_behind_the_seal(table, files, summary, delete_filter=None):
        calls["n"] += 1
        if interleave:
            hour = interleave.pop(0)
            src = one_h1 if hour == h1 else one_h0
            row = src.set_column(
                0, pa.field("event_id", pa.string(), nullable=False), pa.array([f"{hour:032x}"[-32:]], pa.string())
            )
            fresh = catalog.load_table("market.trades")
            commit_files(fresh, LakeFileWriter(fresh).write(row, prefix="sink"), {"test": "interleaved"})
        return commit_files(table, files, summary, delete_filter=delete_filter)

    monkeypatch.setattr(lake_seal, "commit_files", commit_behind_the_seal)
    res = lake_seal.seal_hour(catalog.load_table("market.trades"), h0)
    # 1st commit lost to the 01:00 commit and was rebased; the 2nd lost to the late 00:00
    # row, so the hour was read again; the 3rd landed with the late row included.
    assert calls["n"] == 3
    assert res.rows == expected + 1 and not res.already_sealed
    table = catalog.load_table("market.trades")
    assert hour_layout(table, h0).is_sealed
    assert hour_rows(catalog, "trades", H0).num_rows == expected + 1
    assert hour_rows(catalog, "trades", "2024-08-09-01:00").num_rows == (
        table.scan(row_filter=hour_filter(h1)).to_arrow().num_rows
    )
    # No compacted file of a lost attempt is left behind: every sealed-* file on disk is live.
    live = {t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()}
    sealed_on_disk = {str(p) for p in Path(table.location().removeprefix("file://")).rglob("sealed-*.parquet")}
    assert sealed_on_disk and sealed_on_disk <= live

"""Rebuilding a broken lake hour (streaming/lake/rebuild.py) against a real broker and a real
SQLite Iceberg catalog filled by the real lake sink."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.partitions import hour_start
from resources.lake import LakeResource
from runtime import kafka_config as kc
from schemas.tables import TABLES_BY_NAME
from streaming.kafka.broker import EmbeddedBroker
from streaming.lake.checks import duplicate_check, row_count_check
from streaming.lake.rebuild import (
    REBUILD_WRITER,
    SourceUnavailable,
    checksum,
    rebuild_hour,
    table_schema,
)
from streaming.lake.seal import SEALED_PREFIX, hour_layout, read_hour
from streaming.lake.sink import LakeSink, SinkConfig, hour_filter
from streaming.lake.state import WRITER_KEY, latest_sink_state
from streaming.lake.writer import LakeFileWriter, commit_files
from tests.support.lake import (
    create_sink_topics,
    open_home_catalog,
    produce,
    sink_topics,
)
from workloads.synthetic import SyntheticMarket

pytestmark = pytest.mark.broker

H0 = "2024-08-09-00:00"
H0_US = int(hour_start(H0).timestamp()) * 1_000_000


@pytest.fixture
def sunk(tmp_path, ticklake_home):
    """~75 min of a synthetic market committed by the sink in micro-batches; the broker
    stays up so processed.* still holds every record."""
    events = SyntheticMarket(seed=5).events(1800, spacing_us=2_500_000)
    topics = sink_topics()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        create_sink_topics(b.bootstrap, topics, partitions=2)
        produce(b.bootstrap, events)
        catalog = open_home_catalog(ticklake_home)
        conn = kc.KafkaConnection(bootstrap_servers=b.bootstrap)
        sink = LakeSink(
            conn,
            catalog,
            SinkConfig(topics=topics, batch_max_records=300, batch_max_ms=200, allowed_lateness_us=5_000_000),
        )
        sink.start()
        deadline = time.monotonic() + 120  # a hang becomes a failure, never a pass
        while sink.stats.records_in < len(events):
            assert time.monotonic() < deadline, f"sink stuck at {sink.stats}"
            sink.run_once()
        sink.close()
        yield catalog, conn


def _hour(table) -> pa.Table:
    return table.refresh().scan(row_filter=hour_filter(H0_US)).to_arrow()


def _break_hour(table, keep_fraction: float = 0.5, duplicate: int = 10):
    """Replace the hour by a broken copy: part of its rows lost, some rows doubled."""
    rows = read_hour(table, H0_US)
    n = int(rows.num_rows * keep_fraction)
    broken = pa.concat_tables([rows.slice(0, n), rows.slice(0, duplicate)])
    files = LakeFileWriter(table).write(broken, prefix="broken")
    return commit_files(table, files, {WRITER_KEY: "vandal"}, delete_filter=hour_filter(H0_US)).refresh()


def test_checksum_ignores_order_and_chunking_but_not_content(sunk):
    catalog, _ = sunk
    table = catalog.load_table("market.trades")
    schema = table_schema(table)
    rows = read_hour(table, H0_US)
    assert rows.num_rows > 100
    shuffled = pa.concat_tables([rows.slice(50), rows.slice(0, 50)])
    assert checksum(shuffled, schema) == checksum(rows, schema)
    qty = rows.column("qty").to_pylist()
    qty[7] += 1
    changed = rows.set_column(rows.schema.get_field_index("qty"), "qty", pa.array(qty, pa.int64()))
    assert checksum(changed, schema) != checksum(rows, schema)
    assert checksum(rows.slice(1), schema) != checksum(rows, schema)


def test_broken_hour_is_rebuilt_from_processed_topics_through_a_staging_branch(sunk):
    catalog, conn = sunk
    table = catalog.load_table("market.trades")
    schema = table_schema(table)
    original = read_hour(table, H0_US)
    good = checksum(original, schema)
    other_hour_before = table.scan(row_filter=hour_filter(H0_US + 3_600_000_000)).to_arrow()
    table = _break_hour(table)
    broken = _hour(table)
    assert broken.num_rows < original.num_rows and not duplicate_check(broken).passed
    ledger = latest_sink_state(table).ledger[H0_US]
    assert not row_count_check(broken.num_rows, ledger).passed

    dry = rebuild_hour(table, H0_US, conn=conn, dry_run=True)
    assert dry.source == "kafka" and dry.promoted_snapshot_id is None and dry.changed
    assert dry.missing_before == original.num_rows - int(original.num_rows * 0.5)
    assert _hour(table).num_rows == broken.num_rows  # a dry run changes nothing

    report = rebuild_hour(table, H0_US, source="auto", conn=conn)
    assert report.source == "kafka", report.kafka_unavailable
    assert report.rows == original.num_rows == ledger.rows
    assert report.checksum == report.staged_checksum == good
    assert report.before_rows == broken.num_rows and report.extra_before == 0
    table = table.refresh()
    after = _hour(table)
    assert checksum(after, schema) == good
    assert duplicate_check(after).passed and row_count_check(after.num_rows, ledger).passed
    # One promotion commit on main, the staging branch gone, the hour in sealed layout.
    snap = table.current_snapshot()
    assert snap.snapshot_id == report.promoted_snapshot_id
    assert snap.summary.additional_properties[WRITER_KEY] == REBUILD_WRITER
    assert report.staging_branch and report.staging_branch not in table.metadata.refs
    assert set(table.metadata.refs) == {"main"}
    assert table.metadata.snapshot_by_id(report.staged_snapshot_id) is not None  # staged, then promoted
    assert hour_layout(table, H0_US).is_sealed
    # The other hours are untouched, and the sink still resumes where it was.
    nxt = table.scan(row_filter=hour_filter(H0_US + 3_600_000_000)).to_arrow()
    assert checksum(nxt, schema) == checksum(other_hour_before, schema)
    assert latest_sink_state(table).offsets


def test_kafka_source_keeps_bulk_rows_of_the_hour(sunk):
    catalog, conn = sunk
    table = catalog.load_table("market.trades")
    rows = read_hour(table, H0_US).slice(0, 5)
    bulk = rows.set_column(
        rows.schema.get_field_index("event_id"), "event_id", pa.array([f"bulk-{i}" for i in range(5)])
    )
    bulk = bulk.set_column(bulk.schema.get_field_index("shard"), "shard", pa.array(["bulk:test"] * 5))
    table = commit_files(table, LakeFileWriter(table).write(bulk), {WRITER_KEY: "bulk"}).refresh()
    before = _hour(table)
    report = rebuild_hour(table, H0_US, source="kafka", conn=conn)
    assert report.source == "kafka" and report.carried_over == 5
    after = _hour(table)
    assert sorted(after.column("event_id").to_pylist()) == sorted(before.column("event_id").to_pylist())
    assert not report.changed  # same content, new (sealed) layout


def test_without_the_topics_the_hour_is_rebuilt_from_the_lake(sunk, tmp_path):
    catalog, _ = sunk
    table = catalog.load_table("market.trades")
    schema = table_schema(table)
    original = read_hour(table, H0_US)
    before_break = table.current_snapshot().snapshot_id
    table = _break_hour(table)
    broken = _hour(table)
    # A fresh broker: the processed topics were lost (e.g. the memory broker restarted).
    with EmbeddedBroker(log_path=tmp_path / "empty.log") as empty:
        other = kc.KafkaConnection(bootstrap_servers=empty.bootstrap)
        create_sink_topics(empty.bootstrap, sink_topics(), partitions=2)
        with pytest.raises(SourceUnavailable, match="records the sink consumed"):
            rebuild_hour(table, H0_US, source="kafka", conn=other)
        report = rebuild_hour(table, H0_US, source="auto", conn=other)
    assert report.source == "lake" and "records the sink consumed" in report.kafka_unavailable
    after = _hour(table)
    distinct = pc.count_distinct(broken.column("event_id")).as_py()
    assert after.num_rows == report.rows == distinct < broken.num_rows  # duplicates gone
    assert report.duplicates_dropped == broken.num_rows - distinct
    assert duplicate_check(after).passed

    # From a snapshot before the damage the lake source brings the whole hour back.
    again = rebuild_hour(table.refresh(), H0_US, source="lake", snapshot_id=before_break)
    assert again.rows == original.num_rows
    assert checksum(_hour(table), schema) == checksum(original, schema)
    with pytest.raises(SourceUnavailable, match="does not exist"):
        rebuild_hour(table.refresh(), H0_US, source="lake", snapshot_id=123)


def test_rebuild_through_the_resource_catalog_and_bad_arguments(sunk, ticklake_home):
    _, conn = sunk
    lake = LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)
    table = lake.ensure_tables()["book_deltas"]
    spec = TABLES_BY_NAME["book_deltas"]
    rep = rebuild_hour(table, H0_US, conn=conn)
    assert rep.table == spec.identifier and rep.source == "kafka" and not rep.changed
    assert all(
        f.file_path.rsplit("/", 1)[1].startswith(SEALED_PREFIX) for f in hour_layout(table.refresh(), H0_US).files
    )
    with pytest.raises(ValueError, match="hour boundary"):
        rebuild_hour(table, H0_US + 1)
    with pytest.raises(ValueError, match="source must be"):
        rebuild_hour(table, H0_US, source="s3")


def test_rebuild_job_rebuilds_checks_and_records_the_partition(sunk, ticklake_home):
    import dagster as dg

    from pipelines.lake_rebuild_job import lake_rebuild_hour
    from resources.kafka import KafkaResource

    catalog, conn = sunk
    table = _break_hour(catalog.load_table("market.trades"))
    lake = LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)
    resources = {"lake": lake, "kafka": KafkaResource(bootstrap_servers=conn.bootstrap_servers)}
    with dg.instance_for_test() as instance:
        res = lake_rebuild_hour.execute_in_process(
            partition_key=H0,
            instance=instance,
            resources=resources,
            run_config={"ops": {"rebuild_lake_hour": {"config": {"tables": ["trades"]}}}},
        )
        assert res.success
        [mat] = [
            e.event_specific_data.materialization
            for e in res.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
        ]
        assert mat.asset_key == dg.AssetKey(["lake", "trades"]) and mat.partition == H0
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert meta["rebuild_source"] == "kafka" and meta["checksum"] == meta["staged_checksum"]
        assert meta["missing_before"] > 0 and all(meta["checks"].values()), meta["checks"]
        assert duplicate_check(_hour(table)).passed
        # The newest hour is still open: refused unless asked for explicitly.
        open_hour = lake_rebuild_hour.execute_in_process(
            partition_key="2024-08-09-01:00",
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config={"ops": {"rebuild_lake_hour": {"config": {"tables": ["trades"]}}}},
        )
        assert not open_hour.success
        failure = next(e for e in open_hour.all_events if e.event_type_value == "STEP_FAILURE")
        assert "is not closed" in str(failure.event_specific_data.error)
        bad = lake_rebuild_hour.execute_in_process(
            partition_key=H0,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config={"ops": {"rebuild_lake_hour": {"config": {"tables": ["nope"]}}}},
        )
        assert not bad.success


def _extra_row(table, hour_us: int, event_id: str) -> pa.Table:
    row = read_hour(table, hour_us).slice(0, 1)
    return row.set_column(row.schema.get_field_index("event_id"), "event_id", pa.array([event_id]))


def test_commits_racing_the_promotion_rebase_or_restart(sunk, monkeypatch):
    """A commit landing while the hour is rebuilt: outside the hour (the sink appending the
    current hour) the promotion is simply re-committed; inside the hour the rebuild starts
    over from the new state, so the row that arrived is not lost."""
    import streaming.lake.rebuild as lr

    catalog, _ = sunk
    table = catalog.load_table("market.trades")
    h1 = H0_US + 3_600_000_000
    original = lr._commit_to_branch
    # (hour, event_id, whether the caller's table already sees the racing commit: the race
    # hit between reading the source and staging, or after staging)
    plan = [(h1, "late-other-hour", False), (H0_US, "late-same-hour", True)]
    done = []

    def racing(table, *args, **kwargs):
        staged = original(table, *args, **kwargs)
        if plan:
            hour, eid, seen = plan.pop(0)
            row = _extra_row(staged, hour, eid)
            commit_files(staged, LakeFileWriter(staged).write(row), {WRITER_KEY: "racer"})
            done.append(eid)
            return staged.refresh() if seen else staged
        return staged

    monkeypatch.setattr(lr, "_commit_to_branch", racing)
    rep = rebuild_hour(table, H0_US, source="lake")  # race 1: another hour -> rebase
    assert rep.attempts == 1 and done == ["late-other-hour"]
    table = table.refresh()
    assert "late-other-hour" in table.scan(row_filter=hour_filter(h1)).to_arrow().column("event_id").to_pylist()
    before = _hour(table).num_rows
    rep = rebuild_hour(table, H0_US, source="lake")  # race 2: the hour itself -> start over
    assert rep.attempts == 2 and done == ["late-other-hour", "late-same-hour"]
    after = _hour(table)
    assert after.num_rows == before + 1 == rep.rows
    assert "late-same-hour" in after.column("event_id").to_pylist()
    assert set(table.refresh().metadata.refs) == {"main"}


def test_a_staged_hour_that_differs_from_its_source_is_not_promoted(sunk, monkeypatch):
    import streaming.lake.rebuild as lr

    catalog, _ = sunk
    table = catalog.load_table("market.trades")
    schema = table_schema(table)
    before_snap = table.current_snapshot().snapshot_id
    before = checksum(_hour(table), schema)
    original = lr._commit_to_branch
    written: list[str] = []

    def tampered(table, branch, base, files, hour_us, props, **kw):
        written.extend(f.file_path for f in files)
        staged = original(table, branch, base, files, hour_us, props, **kw)
        extra = LakeFileWriter(staged).write(_extra_row(staged, hour_us, "intruder"))
        written.extend(f.file_path for f in extra)
        with staged.transaction() as tx, tx.update_snapshot(branch=branch).fast_append() as append:
            for f in extra:
                append.append_data_file(f)
        return staged.refresh()

    monkeypatch.setattr(lr, "_commit_to_branch", tampered)
    with pytest.raises(lr.ValidationFailed, match="staged hour"):
        rebuild_hour(table, H0_US, source="lake")
    table = table.refresh()
    assert table.current_snapshot().snapshot_id == before_snap  # main untouched
    assert checksum(_hour(table), schema) == before
    assert set(table.metadata.refs) == {"main"}  # the staging branch is gone
    staged_files = written[:-1]
    assert staged_files and not any(table.io.new_input(p).exists() for p in staged_files)

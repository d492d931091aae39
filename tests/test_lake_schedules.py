"""Lake schedules, the late-hour sensor, daily maintenance and the sink service job, on a
real catalog filled by the real sink and a real (ephemeral) Dagster instance."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from assets.partitions import hour_start
from pipelines.lake_schedules import lake_hourly_seal, lake_late_hours, lake_maintenance
from pipelines.launch_tags import launched_by
from pipelines.services.lake_sink import (
    SERVICE_TAGS,
    lake_sink_service,
    lake_sink_supervisor,
)
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from streaming.kafka.broker import EmbeddedBroker
from streaming.lake.maintenance import maintain_table, referenced_data_files
from streaming.lake.seal import seal_hour
from streaming.lake.sink import hour_filter
from streaming.lake.state import latest_sink_state
from tests.support.lake import (
    create_sink_topics,
    open_home_catalog,
    produce,
    sink_topics,
    unique_counts,
)
from workloads.synthetic import SyntheticMarket

pytestmark = pytest.mark.broker

warnings.filterwarnings("ignore")

H0, H1 = "2024-08-09-00:00", "2024-08-09-01:00"


def _hour_us(key: str) -> int:
    return int(hour_start(key).timestamp()) * 1_000_000


@pytest.fixture
def service_lake(tmp_path, ticklake_home):
    """The lake filled by the sink running as the Dagster service job (idle exit)."""
    events = SyntheticMarket(seed=21).events(4000, spacing_us=2_300_000)  # ~2.55 h of event time
    topics = sink_topics()
    lake = LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        create_sink_topics(b.bootstrap, topics, partitions=2)
        produce(b.bootstrap, events)
        result = lake_sink_service.execute_in_process(
            run_config={
                "ops": {
                    "run_lake_sink": {
                        "config": {
                            "exchanges": ["binance"],
                            "markets": ["spot"],
                            "batch_max_records": 800,
                            "batch_max_ms": 200,
                            "allowed_lateness_s": 5.0,
                            "idle_exit_s": 2.5,
                        }
                    }
                }
            },
            resources={"lake": lake, "kafka": KafkaResource(bootstrap_servers=b.bootstrap)},
        )
    assert result.success
    return open_home_catalog(ticklake_home), lake, events, result


def test_service_job_fills_lake_and_publishes_watermarks(service_lake):
    catalog, _, events, result = service_lake
    for name, n in unique_counts(events).items():
        assert catalog.load_table(f"market.{name}").scan().to_arrow().num_rows == n
    obs = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    trades = [o for o in obs if o.asset_key == dg.AssetKey(["lake", "trades"])]
    assert trades and trades[-1].metadata["watermark"].value.startswith("2024-08-09T02:")


def test_supervisor_starts_one_sink_run_only():
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance)
        req = lake_sink_supervisor(ctx)
        assert isinstance(req, dg.RunRequest) and req.tags == SERVICE_TAGS
        instance.add_run(
            DagsterRun(
                job_name=lake_sink_service.name, run_id="c" * 32, status=dg.DagsterRunStatus.STARTED, tags=SERVICE_TAGS
            )
        )
        assert isinstance(lake_sink_supervisor(dg.build_sensor_context(instance=instance)), dg.SkipReason)


def test_schedule_and_late_sensor_follow_event_time(service_lake):
    catalog, lake, _, _ = service_lake
    # Event time ends ~02:33: with 5 min grace the newest closed hour is 01:00, not 02:00.
    req = lake_hourly_seal(dg.build_schedule_context(resources={"lake": lake}))
    assert isinstance(req, dg.RunRequest) and req.partition_key == H1
    assert req.tags == launched_by("lake-hourly-seal")  # counted in the run queue's work limit

    with dg.instance_for_test() as instance:
        reqs = lake_late_hours(dg.build_sensor_context(instance=instance, resources={"lake": lake}))
        assert sorted(r.partition_key for r in reqs) == [H0, H1]
        assert all(r.tags == launched_by("lake-late-hours") for r in reqs)
        tables = {a.path[-1] for a in reqs[0].asset_selection}
        assert tables == {"trades", "book_deltas", "book_snapshots"}

        for name in tables:  # seal 00:00 of every table
            seal_hour(catalog.load_table(f"market.{name}"), _hour_us(H0))
        reqs = lake_late_hours(dg.build_sensor_context(instance=instance, resources={"lake": lake}))
        assert [r.partition_key for r in reqs] == [H1]

        # A late row for the sealed 00:00 hour: that hour (trades only) needs sealing again.
        trades = catalog.load_table("market.trades")
        late = trades.scan(row_filter=hour_filter(_hour_us(H0)), limit=1).to_arrow()
        late = late.set_column(0, pa.field("event_id", pa.string(), nullable=False), pa.array(["f" * 32], pa.string()))
        trades.append(late)
        reqs = lake_late_hours(dg.build_sensor_context(instance=instance, resources={"lake": lake}))
        assert sorted(r.partition_key for r in reqs) == [H0, H1]
        r0 = next(r for r in reqs if r.partition_key == H0)
        assert [a.path[-1] for a in r0.asset_selection] == ["trades"]


def test_maintenance_expires_snapshots_and_deletes_only_orphans(service_lake, ticklake_home):
    catalog, lake, events, _ = service_lake
    table = catalog.load_table("market.trades")
    hour = _hour_us(H0)
    seal_hour(table, hour)
    first_seal = {t.file.file_path for t in table.refresh().scan(row_filter=hour_filter(hour)).plan_files()}
    # A late row, then a second seal: the first seal's files are now only in old snapshots.
    table = table.refresh()
    late = table.scan(row_filter=hour_filter(hour), limit=1).to_arrow()
    table.append(
        late.set_column(0, pa.field("event_id", pa.string(), nullable=False), pa.array(["e" * 32], pa.string()))
    )
    seal_hour(table, hour)
    table = table.refresh()
    second_seal = {t.file.file_path for t in table.scan(row_filter=hour_filter(hour)).plan_files()}
    assert first_seal and not (first_seal & second_seal)
    sink_snapshot = latest_sink_state(table).snapshot_id
    snapshots_before = len(table.metadata.snapshots)
    data_dir = Path(table.location().removeprefix("file://")) / "data"
    assert data_dir.is_relative_to(ticklake_home.warehouse_dir)
    stray = data_dir / "stray.parquet"  # what a writer killed before its commit leaves
    stray.write_bytes(b"PAR1")

    result = lake_maintenance.execute_in_process(
        run_config={
            "ops": {
                "maintain_lake_tables": {
                    "config": {"snapshot_max_age_hours": 0.0, "retain_last": 1, "orphan_min_age_hours": 0.0}
                }
            }
        },
        resources={"lake": lake},
    )
    assert result.success
    table = table.refresh()
    assert len(table.metadata.snapshots) < snapshots_before
    assert latest_sink_state(table).snapshot_id == sink_snapshot  # the sink's resume point is kept
    on_disk = {str(p) for p in data_dir.rglob("*.parquet")}
    referenced = referenced_data_files(table)
    assert referenced <= on_disk  # nothing still referenced was deleted
    assert on_disk == referenced  # and every orphan was
    assert not stray.exists()
    assert not any(f.removeprefix("file://") in on_disk for f in first_seal)
    assert all(f.removeprefix("file://") in on_disk for f in second_seal)
    assert table.scan().to_arrow().num_rows == unique_counts(events)["trades"] + 1

    # With a real safety age a young unreferenced file survives.
    stray.write_bytes(b"PAR1")
    res = maintain_table(table, snapshot_max_age=timedelta(days=5), orphan_min_age=timedelta(hours=1))
    assert stray.exists() and res.orphans_too_young == 1 and not res.orphans_deleted

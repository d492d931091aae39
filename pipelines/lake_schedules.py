"""When lake hours get sealed and the lake gets cleaned.

* `lake_hourly_seal` (schedule, every hour at :10): seals the newest closed hour of every
  lake table — event time decides which hour that is, not the wall clock, so a lagging
  sink never gets an open hour sealed under it.
* `lake_late_hours` (sensor): any closed hour with files outside its sealed layout (it
  was never sealed, or rows arrived after its seal) is sealed again. The run key is a
  digest of those files, so a tick re-finding the same work does not launch it twice,
  while new late rows produce a new request.
* `lake_maintenance` (job + daily schedule): expire old snapshots, then delete
  unreferenced data files older than a safety age (streaming/lake/maintenance.py).
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import hashlib
import posixpath
from datetime import UTC, datetime, timedelta

import dagster as dg
from pyiceberg.expressions import GreaterThanOrEqual

from assets.lake_hours import LAKE_HOUR_ASSETS, lake_asset_key
from assets.partitions import HOURLY, hour_key
from pipelines.launch_tags import launched_by
from pipelines.op_job import op_job
from resources.lake import LakeResource
from schemas.tables import TABLES, TABLES_BY_NAME
from streaming.kafka.source_complete import read_complete_ranges
from streaming.lake.maintenance import (
    DEFAULT_ORPHAN_MIN_AGE,
    DEFAULT_RETAIN_LAST,
    DEFAULT_SNAPSHOT_MAX_AGE,
    maintain_table,
)
from streaming.lake.seal import SEALED_PREFIX
from streaming.lake.state import HOUR_US, LEDGER_HOURS
from streaming.lake.watermarks import (
    DEFAULT_CLOSE_GRACE,
    closed_hours_until,
    is_hour_closed,
    lake_watermark,
    read_watermarks,
)

LAKE_ASSET_SELECTION = dg.AssetSelection.assets(*LAKE_HOUR_ASSETS.values())
MAX_LATE_REQUESTS_PER_TICK = 24

lake_seal_job = dg.define_asset_job(
    "lake_seal_hour",
    selection=LAKE_ASSET_SELECTION,
    partitions_def=HOURLY,
    description="Seal (compact) and check one closed hour of the lake tables.",
)


def newest_closed_hour(lake: LakeResource, grace: timedelta = DEFAULT_CLOSE_GRACE) -> str | None:
    newest = closed_hours_until(lake_watermark(read_watermarks(lake.load_catalog())), grace)
    if newest is None:
        return None
    key = hour_key(newest)
    return key if HOURLY.has_partition_key(key) else None


@dg.schedule(
    job=lake_seal_job,
    cron_schedule="10 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Seal the newest closed hour (by the lake watermark) of every lake table.",
)
def lake_hourly_seal(context: dg.ScheduleEvaluationContext, lake: LakeResource):
    key = newest_closed_hour(lake)
    if key is None:
        return dg.SkipReason("no hour is closed yet (the lake watermark is unknown or too early)")
    return dg.RunRequest(run_key=f"seal-{key}", partition_key=key, tags=launched_by("lake-hourly-seal"))


def unsealed_closed_hours(
    lake: LakeResource, grace: timedelta = DEFAULT_CLOSE_GRACE
) -> dict[str, dict[str, list[str]]]:
    """hour key -> table -> files of that hour outside the sealed layout, for closed hours."""
    catalog = lake.load_catalog()
    wm = lake_watermark(read_watermarks(catalog))
    complete = read_complete_ranges(catalog)
    out: dict[str, dict[str, list[str]]] = {}
    if wm is None:
        return out
    tables = lake.ensure_tables()
    for spec in TABLES.values():
        table = tables[spec.name]
        if table.current_snapshot() is None:
            continue
        by_hour: dict[int, list[str]] = {}
        unsealed_hours: set[int] = set()
        # Hours older than the ledger window are out of the sink's reach (their topics'
        # retention is shorter); the filter prunes their manifests by partition summary.
        recent = GreaterThanOrEqual("exchange_ts", int(wm.timestamp() * 1e6) - LEDGER_HOURS * HOUR_US)
        for task in table.scan(row_filter=recent).plan_files():
            f = task.file
            hour = int(f.partition[0]) * HOUR_US  # partition field 0 = hour(exchange_ts), hours since epoch
            by_hour.setdefault(hour, []).append(f.file_path)
            if not posixpath.basename(f.file_path).startswith(SEALED_PREFIX + "-"):
                unsealed_hours.add(hour)
        for hour in unsealed_hours:
            start = datetime.fromtimestamp(hour / 1e6, tz=UTC)
            key = hour_key(start)
            if not HOURLY.has_partition_key(key):
                continue  # before the partitions' start, or not over yet (a run request of it fails the tick)
            if is_hour_closed(start, wm, grace, complete):
                out.setdefault(key, {})[spec.name] = sorted(by_hour[hour])
    return out


def sealing_hours(instance: dg.DagsterInstance) -> set[str]:
    """Hour keys with a `lake_seal_hour` run not finished yet (queued, starting or running)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=lake_seal_job.name,
            statuses=[
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ],
        )
    )
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


@dg.sensor(
    job=lake_seal_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Seal closed hours that are not in their sealed layout (never sealed, or late rows).",
)
def lake_late_hours(context: dg.SensorEvaluationContext, lake: LakeResource):
    pending = unsealed_closed_hours(lake)
    if not pending:
        return dg.SkipReason("every closed hour is sealed")
    # An hour whose seal run is queued or running (a replay's completion requests one for each
    # of its hours) is looked at again once that run is over: a second seal of the same files
    # would only delay the hour's chain, which waits for every run of its upstream partitions.
    sealing = sealing_hours(context.instance)
    if set(pending) <= sealing:
        return dg.SkipReason(f"unsealed closed hours {sorted(pending)} have a seal run in progress")
    requests = []
    for key in sorted(set(pending) - sealing)[:MAX_LATE_REQUESTS_PER_TICK]:
        tables = pending[key]
        digest = hashlib.sha256("\n".join(p for name in sorted(tables) for p in tables[name]).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"late-{key}-{digest}",
                partition_key=key,
                asset_selection=[lake_asset_key(TABLES_BY_NAME[n]) for n in sorted(tables)],
                tags=launched_by("lake-late-hours"),
            )
        )
    return requests


class MaintenanceConfig(dg.Config):
    snapshot_max_age_hours: float = DEFAULT_SNAPSHOT_MAX_AGE.total_seconds() / 3600
    retain_last: int = DEFAULT_RETAIN_LAST
    orphan_min_age_hours: float = DEFAULT_ORPHAN_MIN_AGE.total_seconds() / 3600
    dry_run: bool = False


@dg.op(description="Expire old snapshots and delete unreferenced data files older than the safety age.")
def maintain_lake_tables(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource) -> dg.Nothing:
    for name, table in sorted(lake.ensure_tables().items()):
        res = maintain_table(
            table,
            snapshot_max_age=timedelta(hours=config.snapshot_max_age_hours),
            retain_last=config.retain_last,
            orphan_min_age=timedelta(hours=config.orphan_min_age_hours),
            dry_run=config.dry_run,
        )
        context.log.info(
            f"{name}: expired {len(res.snapshots_expired)}/{res.snapshots_before} snapshots, "
            f"deleted {len(res.orphans_deleted)} orphan files ({res.bytes_deleted} bytes), "
            f"{res.orphans_too_young} unreferenced files younger than the safety age kept"
        )
        context.log_event(
            dg.AssetObservation(
                asset_key=lake_asset_key(TABLES_BY_NAME[name]),
                metadata={
                    "snapshots_expired": len(res.snapshots_expired),
                    "orphan_files_deleted": len(res.orphans_deleted),
                    "orphan_bytes_deleted": res.bytes_deleted,
                    "referenced_files": res.referenced_files,
                },
            )
        )


lake_maintenance = op_job(maintain_lake_tables, "lake_maintenance", "Daily Iceberg maintenance of the lake tables.")


lake_daily_maintenance = dg.ScheduleDefinition(
    job=lake_maintenance,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    name="lake_daily_maintenance",
    tags=launched_by("lake-daily-maintenance"),
)

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(
    jobs=[lake_seal_job, lake_maintenance],
    schedules=[lake_hourly_seal, lake_daily_maintenance],
    sensors=[lake_late_hours],
)

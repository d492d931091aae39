"""Rebuild broken lake hours as a Dagster job (the runbook of docs/lake.md, "Runbook: a broken hour").

`lake_rebuild_hour` is partitioned by the shared HOURLY definition, so a user launches it
for one hour from the Launchpad or for a range of hours from the job's Partitions tab (a
backfill; the daemon runs it). Each run rebuilds the selected tables' hour through
streaming/lake/rebuild.py (processed.* when it still holds the hour, else the lake's own
rows; staged on a branch, validated, promoted in one overwrite), then runs the hour's asset
checks on the result and records a materialization of `lake/<table>` for that partition,
so the rebuild shows on the asset's page next to the seals, with source, counts and
checksums as metadata. A blocking check failing after the rebuild fails the run.

Sealing a range of hours is the hourly lake assets' own backfill (their Partitions page,
or `ticklake backfill`); this job is for hours whose content is wrong.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
from datetime import timedelta

import dagster as dg
from pydantic import Field

from assets.lake_hours import (
    CHECK_DUPLICATES,
    CHECK_ROW_COUNT,
    CHECK_SCHEMA,
    lake_asset_key,
    run_checks,
)
from assets.partitions import HOURLY, hour_start
from pipelines.op_job import op_job
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from schemas.tables import TABLES, TABLES_BY_NAME
from streaming.lake.rebuild import DEFAULT_MARGIN_US, SOURCES, rebuild_hour
from streaming.lake.watermarks import is_hour_closed, lake_watermark, read_watermarks

BLOCKING_CHECKS = (CHECK_SCHEMA, CHECK_DUPLICATES, CHECK_ROW_COUNT)


class RebuildConfig(dg.Config):
    tables: list[str] = Field(default_factory=list)
    """Lake tables to rebuild (e.g. ["trades"]); empty: every table."""
    source: str = "auto"
    """auto (processed.* when complete, else the lake), kafka, or lake."""
    snapshot_id: int | None = None
    """lake source only: rebuild from this earlier snapshot (one table)."""
    dry_run: bool = False
    """Compare source and lake and report; stage and promote nothing."""
    allow_open_hour: bool = False
    """Rebuild even though the lake watermark has not closed the hour (the sink may still write it)."""
    grace_minutes: float = 5.0
    margin_minutes: float = DEFAULT_MARGIN_US / 60e6
    """How far before the hour the processed.* search starts."""


def _tables(config: RebuildConfig) -> list[str]:
    names = config.tables or sorted(spec.name for spec in TABLES.values())
    unknown = [n for n in names if n not in TABLES_BY_NAME]
    if unknown:
        raise dg.Failure(f"unknown lake tables {unknown}; known: {sorted(TABLES_BY_NAME)}")
    if config.source not in SOURCES:
        raise dg.Failure(f"source must be one of {SOURCES}, got {config.source!r}")
    if config.snapshot_id is not None and len(names) != 1:
        raise dg.Failure("snapshot_id names a snapshot of one table: select exactly one table")
    return names


@dg.op(tags={"kind": "iceberg"}, description="Rebuild one hour of the selected lake tables and check it.")
def rebuild_lake_hour(
    context: dg.OpExecutionContext, config: RebuildConfig, lake: LakeResource, kafka: KafkaResource
) -> dg.Nothing:
    names = _tables(config)
    key = context.partition_key
    start = hour_start(key)
    hour_us = int(start.timestamp()) * 1_000_000
    if not config.allow_open_hour:
        wm = lake_watermark(read_watermarks(lake.load_catalog()))
        if not is_hour_closed(start, wm, timedelta(minutes=config.grace_minutes)):
            raise dg.Failure(
                f"hour {key} is not closed (lake watermark {wm}); the sink may still write it. "
                "Set allow_open_hour to rebuild anyway.",
                allow_retries=False,
            )
    tables = lake.ensure_tables()
    conn = kafka.connection()
    failed: list[str] = []
    for name in names:
        report = rebuild_hour(
            tables[name],
            hour_us,
            source=config.source,
            conn=conn,
            snapshot_id=config.snapshot_id,
            dry_run=config.dry_run,
            margin_us=int(config.margin_minutes * 60e6),
        )
        context.log.info(
            f"{report.table} {key}: source {report.source} ({report.source_detail}); "
            f"{report.before_rows} rows before, {report.rows} after, "
            f"{report.missing_before} were missing, {report.extra_before} extra; "
            f"checksum {report.checksum}"
        )
        if report.kafka_unavailable:
            context.log.warning(f"{report.table} {key}: processed.* not used: {report.kafka_unavailable}")
        if config.dry_run:
            context.log_event(
                dg.AssetObservation(
                    asset_key=lake_asset_key(TABLES_BY_NAME[name]), partition=key, metadata=_metadata(report)
                )
            )
            continue
        checks = run_checks(TABLES_BY_NAME[name], lake, key)
        outcome = {c.check_name: c.passed for c in checks}
        failed += [
            f"{name}.{c.check_name}: {c.description}"
            for c in checks
            if not c.passed and c.check_name in BLOCKING_CHECKS
        ]
        context.log_event(
            dg.AssetMaterialization(
                asset_key=lake_asset_key(TABLES_BY_NAME[name]),
                partition=key,
                description=f"rebuilt from {report.source}",
                metadata={**_metadata(report), "checks": dg.MetadataValue.json(outcome)},
            )
        )
    if failed:
        raise dg.Failure("the rebuilt hour fails its checks:\n" + "\n".join(failed))


def _metadata(report) -> dict:
    return {
        "dagster/row_count": report.rows,
        "rebuild_source": report.source,
        "source_detail": report.source_detail,
        "source_records": report.source_records,
        "rows_before": report.before_rows,
        "missing_before": report.missing_before,
        "extra_before": report.extra_before,
        "duplicates_dropped": report.duplicates_dropped,
        "carried_over": report.carried_over,
        "checksum": report.checksum,
        "staged_checksum": report.staged_checksum,
        "checksum_before": report.before_checksum,
        "changed": report.changed,
        "file_count": report.files,
        "bytes": dg.MetadataValue.int(report.bytes),
        "staging_branch": report.staging_branch,
        "snapshot_id": dg.MetadataValue.text(str(report.promoted_snapshot_id)),
        "kafka_unavailable": report.kafka_unavailable,
    }


lake_rebuild_hour = op_job(
    rebuild_lake_hour,
    "lake_rebuild_hour",
    "Rebuild broken lake hours: recompute from processed.* (or the lake), stage on a branch, "
    "validate counts and checksums, promote in one overwrite.",
    partitions_def=HOURLY,
    tags={"ticklake/layer": "lake"},
)


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(jobs=[lake_rebuild_hour])

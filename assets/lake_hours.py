"""Hourly lake assets: one per lake table, one partition per UTC hour.

Materializing an hour seals it — once the hour is closed (the lake watermark passed hour
end + grace) its micro-batch files are compacted into large sorted files in one atomic
overwrite (streaming/lake/seal.py). Before that the materialization fails and says why,
so a schedule or a user cannot seal an hour that is still receiving data. Sealing twice
is a no-op. Every hour is then checked: pandera schema, unique event_ids, row count equal
to the sink's ledger of committed offsets, venue sequence continuity (book deltas) and
small-file health. Downstream hourly assets depend on these assets, which puts the lake
into the lineage graph.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
from datetime import timedelta

import dagster as dg
import pyarrow as pa
from pyiceberg.table import Table

from assets.lake_setup import GROUP, lake_tables
from assets.partitions import HOURLY, hour_start
from resources.lake import LakeResource
from schemas.model import EventType
from schemas.tables import TABLES, TABLES_BY_NAME, TableSpec
from streaming.kafka.source_complete import read_complete_ranges
from streaming.lake import checks as lake_checks
from streaming.lake.seal import hour_layout, hour_tasks, read_hour, seal_hour
from streaming.lake.state import latest_sink_state
from streaming.lake.watermarks import is_hour_closed, lake_watermark, read_watermarks
from streaming.lake.writer import DEFAULT_TARGET_FILE_BYTES

CHECK_SCHEMA = "schema"
CHECK_DUPLICATES = "unique_event_ids"
CHECK_ROW_COUNT = "row_count_matches_source"
CHECK_SEQUENCE = "sequence_continuity"
CHECK_SMALL_FILES = "small_files"


class SealConfig(dg.Config):
    grace_minutes: float = 5.0
    """The hour is closed once the lake watermark is this far past the hour's end."""
    target_file_mb: float | None = None
    """Compacted file size target; default: the table's write.target-file-size-bytes."""


def lake_asset_key(spec: TableSpec) -> dg.AssetKey:
    return dg.AssetKey(["lake", spec.name])


def _hour_us(partition_key: str) -> int:
    return int(hour_start(partition_key).timestamp()) * 1_000_000


def _target_bytes(table: Table) -> int:
    prop = table.metadata.properties.get("write.target-file-size-bytes")
    return int(prop) if prop else DEFAULT_TARGET_FILE_BYTES


def _seal_asset(spec: TableSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        key_prefix=["lake"],
        partitions_def=HOURLY,
        deps=[lake_tables],
        group_name=GROUP,
        kinds={"iceberg"},
        tags={"ticklake/layer": "lake"},
        description=(
            f"`{spec.identifier}`, one UTC hour: sealed (compacted into sorted files with one "
            "atomic overwrite) once the lake watermark passed hour end + grace."
        ),
    )
    def _asset(context: dg.AssetExecutionContext, config: SealConfig, lake: LakeResource) -> dg.MaterializeResult:
        catalog = lake.load_catalog()
        table = lake.ensure_tables()[spec.name]
        start = hour_start(context.partition_key)
        grace = timedelta(minutes=config.grace_minutes)
        wm = lake_watermark(read_watermarks(catalog))
        if not is_hour_closed(start, wm, grace, read_complete_ranges(catalog)):
            raise dg.Failure(
                description=(
                    f"hour {context.partition_key} of {spec.identifier} is not closed yet: the lake "
                    f"watermark is {wm.isoformat() if wm else 'unknown (no sink commit yet)'}, it must "
                    f"reach {(start + timedelta(hours=1) + grace).isoformat()} (hour end + "
                    f"{config.grace_minutes:g} min grace). Retry after the sink has moved past it."
                ),
                allow_retries=False,
            )
        target = int(config.target_file_mb * 1024 * 1024) if config.target_file_mb else None
        res = seal_hour(table, _hour_us(context.partition_key), target_file_bytes=target)
        context.log.info(
            "%s hour %s: %d rows, %d files -> %d files%s",
            spec.identifier,
            context.partition_key,
            res.rows,
            res.files_before,
            res.files,
            " (already sealed)" if res.already_sealed else "",
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": res.rows,
                "file_count": res.files,
                "files_before": res.files_before,
                "bytes": dg.MetadataValue.int(res.bytes),
                "file_sizes": dg.MetadataValue.json(res.file_sizes),
                "snapshot_id": dg.MetadataValue.text(str(res.snapshot_id)),
                "min_event_time": dg.MetadataValue.text(res.min_event.isoformat() if res.min_event else ""),
                "max_event_time": dg.MetadataValue.text(res.max_event.isoformat() if res.max_event else ""),
                "already_sealed": res.already_sealed,
                "watermark": dg.MetadataValue.text(wm.isoformat() if wm else ""),
            }
        )

    return _asset


def _result(
    spec: TableSpec,
    name: str,
    outcome: lake_checks.CheckOutcome,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=lake_asset_key(spec),
        check_name=name,
        passed=outcome.passed,
        severity=severity,
        description=outcome.summary,
        metadata={"summary": outcome.summary, "details": dg.MetadataValue.json(outcome.details)},
    )


def check_names(spec: TableSpec) -> list[str]:
    names = [CHECK_SCHEMA, CHECK_DUPLICATES, CHECK_ROW_COUNT, CHECK_SMALL_FILES]
    if spec.event_type is EventType.BOOK_DELTA:
        names.append(CHECK_SEQUENCE)
    return names


def run_checks(spec: TableSpec, lake: LakeResource, partition_key: str) -> list[dg.AssetCheckResult]:
    """Every check of one hour; plain function so the late-hour sensor and tests reuse it."""
    tables = lake.ensure_tables()
    table = tables[spec.name]
    hour_us = _hour_us(partition_key)
    tasks = hour_tasks(table, hour_us)
    rows = read_hour(table, hour_us, tasks)
    out = [
        _result(spec, CHECK_SCHEMA, lake_checks.schema_check(spec, rows)),
        _result(spec, CHECK_DUPLICATES, lake_checks.duplicate_check(rows)),
        _result(
            spec,
            CHECK_ROW_COUNT,
            lake_checks.row_count_check(rows.num_rows, latest_sink_state(table).ledger.get(hour_us)),
        ),
        _result(
            spec,
            CHECK_SMALL_FILES,
            lake_checks.small_file_check(hour_layout(table, hour_us, tasks).per_partition(), _target_bytes(table) // 4),
            severity=dg.AssetCheckSeverity.WARN,
        ),
    ]
    if spec.event_type is EventType.BOOK_DELTA:
        snaps = read_hour(tables[TABLES[EventType.BOOK_SNAPSHOT].name], hour_us)
        out.append(_result(spec, CHECK_SEQUENCE, lake_checks.sequence_gaps(rows, _narrow(snaps))))
    return out


def _narrow(t: pa.Table) -> pa.Table:
    return t.select(["exchange", "market", "symbol", "seq"])


def _checks(spec: TableSpec, asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    blocking = {CHECK_SCHEMA, CHECK_DUPLICATES, CHECK_ROW_COUNT}
    descriptions = {
        CHECK_SCHEMA: "Rows satisfy the pandera model of schemas/validation.py.",
        CHECK_DUPLICATES: "No event_id appears twice in the hour.",
        CHECK_ROW_COUNT: "Rows equal the sink's ledger of committed Kafka offsets for the hour "
        "(records consumed minus event_id duplicates it dropped).",
        CHECK_SMALL_FILES: "At most one file under a quarter of the target size per partition (sealed layout).",
        CHECK_SEQUENCE: "Book deltas follow the venue sequence per symbol; gaps list the symbols affected.",
    }
    specs = [
        dg.AssetCheckSpec(n, asset=asset, partitions_def=HOURLY, blocking=n in blocking, description=descriptions[n])
        for n in check_names(spec)
    ]

    @dg.multi_asset_check(specs=specs, name=f"{spec.name}_hour_checks")
    def _check(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        yield from run_checks(spec, lake, context.partition_key)

    return _check


def watermark_observations(lake: LakeResource) -> list[dg.AssetObservation]:
    """One observation per lake asset with its table's watermark and the lake watermark:
    the freshness a user sees on the asset page (emitted by the sink service)."""
    wms = read_watermarks(lake.load_catalog())
    lake_wm = lake_watermark(wms)
    return [
        dg.AssetObservation(
            asset_key=lake_asset_key(spec),
            metadata={
                "watermark": dg.MetadataValue.text(wms[spec.name].isoformat() if wms.get(spec.name) else ""),
                "lake_watermark": dg.MetadataValue.text(lake_wm.isoformat() if lake_wm else ""),
            },
        )
        for spec in TABLES.values()
    ]


LAKE_HOUR_ASSETS: dict[str, dg.AssetsDefinition] = {spec.name: _seal_asset(spec) for spec in TABLES.values()}
LAKE_HOUR_CHECKS: dict[str, dg.AssetChecksDefinition] = {
    name: _checks(TABLES_BY_NAME[name], asset) for name, asset in LAKE_HOUR_ASSETS.items()
}

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=list(LAKE_HOUR_ASSETS.values()), asset_checks=list(LAKE_HOUR_CHECKS.values()))

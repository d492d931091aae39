"""The lake's tables as a Dagster asset: materializing it creates whatever is missing.

Every hourly lake asset depends on this one, so a fresh deployment (a new $TICKLAKE_HOME,
an empty S3 Tables bucket) is brought up by the same UI action as everything else. It is
idempotent: existing tables are left untouched, and the metadata shows what the catalog
holds now (identifier, partition spec, sort order, current snapshot).
"""

# No `from __future__ import annotations`: Dagster inspects the real annotation types of
# `context` and resource parameters.
from typing import Any

import dagster as dg
from pyiceberg.table import Table

from resources.lake import LakeResource
from schemas.tables import NAMESPACE

GROUP = "lake"


def describe_table(table: Table) -> dict[str, Any]:
    """Spec and order spelled with column names, as a reader of the UI wants them."""
    schema = table.schema()
    snapshot = table.current_snapshot()
    return {
        "identifier": ".".join(table.name()),
        "partition_spec": [f"{f.transform}({schema.find_column_name(f.source_id)})" for f in table.spec().fields],
        "sort_order": [f"{schema.find_column_name(f.source_id)} {f.direction}" for f in table.sort_order().fields],
        "current_snapshot_id": snapshot.snapshot_id if snapshot else None,
        "location": table.location(),
    }


def _markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| table | partition spec | sort order | snapshot |", "|---|---|---|---|"]
    for d in rows.values():
        lines.append(
            f"| {d['identifier']} | {', '.join(d['partition_spec'])} | {', '.join(d['sort_order'])} "
            f"| {d['current_snapshot_id']} |"
        )
    return "\n".join(lines)


@dg.asset(
    group_name=GROUP,
    kinds={"iceberg"},
    description=f"Namespace `{NAMESPACE}` and one Iceberg table per event type (schemas/tables.py).",
)
def lake_tables(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    # `lake` is the resource key resources.profiles.LAKE.
    tables = lake.ensure_tables()
    rows = {name: describe_table(t) for name, t in sorted(tables.items())}
    for d in rows.values():
        context.log.info(
            "table %s partitioned by %s, snapshot %s",
            d["identifier"],
            ", ".join(d["partition_spec"]),
            d["current_snapshot_id"],
        )
    return dg.MaterializeResult(
        metadata={
            "namespace": NAMESPACE,
            "table_count": len(rows),
            "tables": dg.MetadataValue.json(rows),
            "overview": dg.MetadataValue.md(_markdown(rows)),
            "catalog": dg.MetadataValue.json(lake.describe()),
        }
    )


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=[lake_tables])

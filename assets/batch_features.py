"""Local batch features: the feature spec run in-process over one sealed lake hour.

This is the reference runtime of the hourly chain: the same pure function the streaming
processor calls (features.compute), fed with the hour's trades and book events from the
lake, written to the Iceberg table market.features_1s (spec and schema in features/spec.py)
with the hour replaced in one commit. ClickHouse loads and charts read this table; the
Spark asset recomputes it at scale and its parity check compares against it.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from assets.automation import HOURLY_CHAIN
from assets.lake_hours import LAKE_HOUR_ASSETS
from assets.partitions import HOURLY, hour_start
from features.spec import FEATURES_TABLE, SPEC_VERSION
from resources.lake import LakeResource
from streaming.lake import features as fl

GROUP = "features"
BATCH_FEATURES_KEY = dg.AssetKey(["lake", FEATURES_TABLE.name])
INPUT_DEPS = [LAKE_HOUR_ASSETS[name] for name in fl.INPUT_TABLES]


class FeatureHourConfig(dg.Config):
    require_sealed: bool = True
    """Refuse an hour whose input tables still hold unsealed micro-batch files (not closed yet)."""
    lookback_s: float = 0.0
    """Replay this much history before the hour to warm up books and rolling values (0: the
    hour is computed from an empty state; see streaming/lake/features.py)."""


def hour_us(partition_key: str) -> int:
    return int(hour_start(partition_key).timestamp()) * 1_000_000


def require_sealed(tables, partition_key: str) -> None:
    """dg.Failure when the hour of any of `tables` is not sealed (see streaming/lake/features.unsealed)."""
    names = fl.unsealed(tables, hour_us(partition_key))
    if names:
        raise dg.Failure(
            description=(
                f"hour {partition_key} of {', '.join(sorted(names))} is not sealed: materialize "
                "the lake hour assets first (or set require_sealed: false)"
            ),
            allow_retries=False,
        )


def feature_asset(key: dg.AssetKey, kinds: set[str], description: str):
    """The asset decorator of an hour of 1 s features, whichever runtime computes it (local
    batch here, Spark in assets/spark_features.py): same partitions, inputs, group and automation."""
    return dg.asset(
        key=key,
        partitions_def=HOURLY,
        deps=INPUT_DEPS,
        group_name=GROUP,
        kinds=kinds,
        tags={"ticklake/layer": "features"},
        automation_condition=HOURLY_CHAIN,
        description=description,
    )


def hour_inputs(lake: LakeResource, config: FeatureHourConfig, partition_key: str):
    """(catalog, hour start in µs, input tables) of a feature hour; dg.Failure when the inputs
    are not sealed and the config requires it."""
    catalog = lake.load_catalog()
    lake.ensure_tables()
    inputs = fl.input_tables(catalog)
    if config.require_sealed:
        require_sealed(inputs, partition_key)
    return catalog, hour_us(partition_key), inputs


def feature_metadata(rows) -> dict:
    symbols = sorted(set(rows.column("symbol").to_pylist())) if rows.num_rows else []
    return {"dagster/row_count": rows.num_rows, "symbols": dg.MetadataValue.json(symbols), "spec_version": SPEC_VERSION}


@feature_asset(
    BATCH_FEATURES_KEY,
    {"python", "iceberg"},
    f"`{FEATURES_TABLE.identifier}`: 1 s features of the hour, the feature spec run in-process "
    "(the local batch runtime); the hour is replaced atomically.",
)
def features_1s(
    context: dg.AssetExecutionContext, config: FeatureHourConfig, lake: LakeResource
) -> dg.MaterializeResult:
    catalog, h, inputs = hour_inputs(lake, config, context.partition_key)
    events = fl.hour_events(inputs, h, config.lookback_s)
    rows = fl.compute_hour(events, h)
    table = fl.ensure_spec_table(catalog, FEATURES_TABLE, dict(lake.table_properties) or None)
    table = fl.write_hour(table, rows, h, {"writer": "batch-features", "hour": context.partition_key})
    context.log.info(
        "features_1s %s: %d input events -> %d rows", context.partition_key, events.num_rows, rows.num_rows
    )
    return dg.MaterializeResult(
        metadata={
            **feature_metadata(rows),
            "input_events": events.num_rows,
            "lookback_s": config.lookback_s,
            "snapshot_id": dg.MetadataValue.text(str(table.current_snapshot().snapshot_id)),
        }
    )


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=[features_1s])

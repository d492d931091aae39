"""Local batch features: the feature spec run in-process over one sealed lake hour.

This is the reference runtime of the hourly chain: the same pure function the streaming
processor calls (features.compute), fed with the hour's trades and book events from the
lake, written to the Iceberg table market.features_1s (spec and schema in features/spec.py)
with the hour replaced in one commit. ClickHouse loads and charts read this table; the
Spark asset recomputes it at scale and its parity check compares against it.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from assets.automation import hourly_chain_asset
from assets.lake_hours import LAKE_HOUR_ASSETS
from assets.partitions import hour_start
from features.compute import FeatureState
from features.spec import FEATURES_TABLE, SPEC_VERSION
from resources.lake import LakeResource
from streaming.lake import features as fl
from streaming.lake.state import HOUR_US

GROUP = "features"
BATCH_FEATURES_KEY = dg.AssetKey(["lake", FEATURES_TABLE.name])
INPUT_DEPS = [LAKE_HOUR_ASSETS[name] for name in fl.INPUT_TABLES]


class FeatureHourConfig(dg.Config):
    require_sealed: bool = True
    """Refuse an hour whose input tables still hold unsealed micro-batch files (not closed yet)."""
    carry_state: bool = True
    """Start the hour from the state the stream had at its start (books, last mids, returns):
    the state the hour before closed with, else replayed from the lake's book snapshots
    (streaming/lake/features.start_state). False: start from empty books, as a processor
    started at the hour would."""


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
    return hourly_chain_asset(key, INPUT_DEPS, description, group=GROUP, layer="features", kinds=kinds)


def hour_inputs(lake: LakeResource, config: FeatureHourConfig, partition_key: str):
    """(catalog, hour start in µs, input tables) of a feature hour; dg.Failure when the inputs
    are not sealed and the config requires it."""
    catalog = lake.load_catalog()
    lake.ensure_tables()
    inputs = fl.input_tables(catalog)
    if config.require_sealed:
        require_sealed(inputs, partition_key)
    return catalog, hour_us(partition_key), inputs


def hour_start_state(catalog, lake: LakeResource, config: FeatureHourConfig, inputs, h: int):
    """(start state, its source, the state table) of a feature hour, both runtimes alike."""
    state_table = fl.ensure_spec_table(catalog, fl.FEATURE_STATE_TABLE, dict(lake.table_properties) or None)
    if not config.carry_state:
        return FeatureState(), "empty", state_table
    state, source = fl.start_state(inputs, state_table, h)
    return state, source, state_table


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
    state, source, state_table = hour_start_state(catalog, lake, config, inputs, h)
    events = fl.hour_events(inputs, h)
    rows = fl.compute_hour(events, h, state)  # `state` is now the hour's closing state
    table = fl.ensure_spec_table(catalog, FEATURES_TABLE, dict(lake.table_properties) or None)
    summary = {"writer": "batch-features", "hour": context.partition_key}
    table = fl.write_hour(table, rows, h, summary)
    if config.carry_state:  # the next hour starts from it (an empty start state is not the stream's)
        fl.write_state(state_table, state, h + HOUR_US, summary)
    context.log.info(
        "features_1s %s: %s start state of %d instruments, %d input events -> %d rows",
        context.partition_key,
        source,
        len(state.symbols),
        events.num_rows,
        rows.num_rows,
    )
    return dg.MaterializeResult(
        metadata={
            **feature_metadata(rows),
            "input_events": events.num_rows,
            "start_state": source,
            "snapshot_id": dg.MetadataValue.text(str(table.current_snapshot().snapshot_id)),
        }
    )


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=[features_1s])

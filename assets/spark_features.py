"""Spark features: the feature spec recomputed over a sealed lake hour with Spark, plus the
parity check that ties the three runtimes together.

The asset writes market.features_1s_spark (same schema as features_1s) through
streaming/lake/spark_features.py: pyiceberg plans the files, Spark runs the unchanged spec via
mapInArrow/applyInArrow, Parquet (TIMESTAMP_MICROS) is registered with add_files in the
commit that drops the hour's previous files. The check `offline_online_parity` then
requires, exactly and column by column:

    Spark (features_1s_spark) == local batch (features_1s) == published (feature.* topics)

"Published" is what the streaming processor put on the feature topics, as the live
ClickHouse consumer stored it (features_live, deduplicated on event_id with FINAL): that
table is the durable, queryable record of the topics, which are scanned nowhere else by
hour. A check failure names the first differing column and event_id.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import os
import sys

import dagster as dg

from assets.batch_features import (
    BATCH_FEATURES_KEY,
    FeatureHourConfig,
    feature_asset,
    feature_metadata,
    hour_inputs,
    hour_start_state,
    hour_us,
)
from assets.partitions import HOURLY, hour_start
from features.spec import FEATURES_TABLE
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.spark import SparkResource
from streaming.clickhouse import sql as cs
from streaming.lake import features as fl
from streaming.lake import spark_features as fsp

SPARK_FEATURES_KEY = dg.AssetKey(["spark", "features_1s"])
CHECK_PARITY = "offline_online_parity"


class ParityConfig(dg.Config):
    database: str = cs.DEFAULT_DATABASE


def _session(spark: SparkResource):
    # Python workers must run this interpreter (it has pyarrow and the project); Spark
    # otherwise starts whatever `python3` is first on PATH. Only effective before the
    # JVM starts, which is when the resource creates the session.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return spark.spark_session


@feature_asset(
    SPARK_FEATURES_KEY,
    {"spark", "iceberg"},
    f"`{fsp.SPARK_FEATURES_TABLE.identifier}`: the hour's 1 s features recomputed by Spark "
    "(applyInArrow over the files pyiceberg plans), Parquet registered with add_files.",
)
def spark_features_1s(
    context: dg.AssetExecutionContext, config: FeatureHourConfig, lake: LakeResource, spark: SparkResource
) -> dg.MaterializeResult:
    catalog, h, inputs = hour_inputs(lake, config, context.partition_key)
    state, source, _ = hour_start_state(catalog, lake, config, inputs, h)
    target = fl.ensure_spec_table(catalog, fsp.SPARK_FEATURES_TABLE, dict(lake.table_properties) or None)
    res = fsp.write_hour(
        _session(spark),
        inputs,
        target,
        h,
        {"hour": context.partition_key, "dagster_run_id": context.run_id},
        state,
    )
    rows = fl.read_hour_rows(target.refresh(), h)
    context.log.info("spark features %s: %d rows in %d files", context.partition_key, res.rows, len(res.files))
    return dg.MaterializeResult(
        metadata={**feature_metadata(rows), "files": dg.MetadataValue.json(res.files), "start_state": source}
    )


def parity_outcome(
    lake: LakeResource, clickhouse: ClickHouseResource, partition_key: str, database: str = cs.DEFAULT_DATABASE
) -> tuple[bool, dict]:
    """Plain function (tests and sensors reuse it): compare the three runtimes for one hour."""
    catalog = lake.load_catalog()
    h = hour_us(partition_key)
    spark_rows = fl.read_hour_rows(fl.ensure_spec_table(catalog, fsp.SPARK_FEATURES_TABLE), h)
    local_rows = fl.read_hour_rows(fl.ensure_spec_table(catalog, FEATURES_TABLE), h)
    client = clickhouse.get_client()
    cs.ensure_tables(client, database, tables=[cs.CH_FEATURES_LIVE])
    published = cs.features_from_ch(
        cs.query_hour(client, database, cs.CH_FEATURES_LIVE, hour_start(partition_key), final=True)
    )
    ok, details = fl.compare_features({"spark": spark_rows, "local_batch": local_rows, "published": published})
    if ok and spark_rows.num_rows == 0:
        # Zero rows everywhere is parity only when the lake hour had nothing to compute from
        # (a sealed hour a replay or a quiet venue left empty); otherwise every runtime failed alike.
        inputs = fl.hour_events(fl.input_tables(catalog), h, 0).num_rows
        details["input_events"] = inputs
        if inputs:
            ok = False
            details["mismatches"].append(
                {"reason": f"no feature rows for the hour in any runtime, from {inputs} input events"}
            )
    return ok, details


@dg.asset_check(
    asset=SPARK_FEATURES_KEY,
    name=CHECK_PARITY,
    partitions_def=HOURLY,
    additional_deps=[BATCH_FEATURES_KEY],
    blocking=True,
    description="Spark output == local batch output == rows the streaming processor published for the hour "
    "(exact, every column).",
)
def features_parity(
    context: dg.AssetCheckExecutionContext, config: ParityConfig, lake: LakeResource, clickhouse: ClickHouseResource
) -> dg.AssetCheckResult:
    ok, details = parity_outcome(lake, clickhouse, context.partition_key, config.database)
    rows = details["rows"]
    summary = ("identical: " if ok else "DIFFERENT: ") + ", ".join(f"{k}={v} rows" for k, v in rows.items())
    if details["mismatches"]:
        summary += f"; first mismatch {details['mismatches'][0]}"
    return dg.AssetCheckResult(
        passed=ok,
        description=summary[:1000],
        metadata={"rows": dg.MetadataValue.json(rows), "mismatches": dg.MetadataValue.json(details["mismatches"])},
    )


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=[spark_features_1s], asset_checks=[features_parity])

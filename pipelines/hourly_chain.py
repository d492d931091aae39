"""The automation sensor that builds the hourly products of every sealed lake hour.

Every hourly asset downstream of the lake hours carries the HOURLY_CHAIN automation
condition (assets/automation.py, which says when a partition is due); this sensor is what
evaluates those conditions, in the daemon, and requests the runs (several hours at once
become one backfill, so the UI shows them together). It ships STOPPED like every other
sensor and `ticklake up` turns it on with the services; in the UI it is on the Automation
page and each asset's page shows its condition and evaluations.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from assets.batch_features import features_1s
from assets.charts import market_charts
from assets.clickhouse_loads import CLICKHOUSE_ASSETS
from assets.spark_features import spark_features_1s
from pipelines.launch_tags import launched_by

#: The hourly products of a sealed lake hour, every one carrying HOURLY_CHAIN.
CHAIN_ASSETS: list[dg.AssetsDefinition] = [features_1s, spark_features_1s, *CLICKHOUSE_ASSETS, market_charts]
CHAIN_SELECTION = dg.AssetSelection.assets(*CHAIN_ASSETS)
#: Seconds between evaluations: a sealed hour starts building within about this long, and
#: an idle stack pays one evaluation of a few assets this often.
EVALUATION_INTERVAL_S = 60


def automation_sensor(
    name: str, target: dg.AssetSelection, launcher: str, description: str
) -> dg.AutomationConditionSensorDefinition:
    """An automation-condition sensor of this code location: off until `ticklake up` (or the
    UI) turns it on, evaluated every EVALUATION_INTERVAL_S, its runs tagged with who launched them."""
    return dg.AutomationConditionSensorDefinition(
        name,
        target=target,
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=EVALUATION_INTERVAL_S,
        run_tags=launched_by(launcher),
        description=description,
    )


hourly_chain_automation = automation_sensor(
    "hourly_chain_automation",
    CHAIN_SELECTION,
    "hourly-chain-automation",
    "Builds every hourly product (features, Spark features + parity check, ClickHouse loads, bars, "
    "charts) of each lake hour once its lake seal is materialized and its checks passed; never while "
    "a run or backfill of that partition is in progress.",
)

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(sensors=[hourly_chain_automation])

"""The one Definitions object of the ticklake code location (workspace.yaml loads it).

Each area module builds its own `defs = dg.Definitions(...)` beside what it defines; this
module only merges them with `dg.Definitions.merge` (one line per area) and adds the
resources of the profile selected by TICKLAKE_PROFILE (resources/profiles.py). Two areas
defining the same asset key, check, job, sensor or schedule name fail when the code location
loads, not silently. tests/test_definitions_snapshot.py compares the merged graph with
tests/snapshots/definitions.json, so any change to it is a visible diff.
"""

from __future__ import annotations

import dagster as dg

from assets import (
    batch_features,
    bulk_history,
    charts,
    clickhouse_loads,
    lake_hours,
    lake_setup,
    ml,
    spark_features,
)
from pipelines import (
    hourly_chain,
    lake_rebuild_job,
    lake_schedules,
    ml_automation,
    ml_promotion,
    recompute_job,
    replay_completion,
)
from pipelines.services import registry as services
from resources.profiles import build_executor, build_resources

#: One line per area, in data-flow order: services -> lake -> analytics. A new area defines
#: `defs = dg.Definitions(...)` in its own module and adds one line here; a new long-running
#: service adds nothing here (its module under pipelines/services/ is found by the registry).
defs = dg.Definitions.merge(
    services.defs(),  # every long-running service job + supervisor (pipelines/services/, one module each)
    recompute_job.defs,  # processor recompute runbook
    lake_setup.defs,  # lake tables
    lake_hours.defs,  # sealed lake hours + their checks
    lake_schedules.defs,  # hourly seal, late hours, daily maintenance
    lake_rebuild_job.defs,  # lake hour rebuild job
    replay_completion.defs,  # seals a replayed capture's hours
    bulk_history.defs,  # exchange archive downloads
    batch_features.defs,  # lake features_1s
    spark_features.defs,  # Spark features_1s + parity check
    clickhouse_loads.defs,  # ClickHouse hour loads + bars
    charts.defs,  # market charts
    hourly_chain.defs,  # automation of every hourly product
    ml.defs,  # training datasets, models (MLflow), champion registration
    ml_promotion.defs,  # shadow vs champion promotion job
    ml_automation.defs,  # automation of the datasets, models and prediction hours
    dg.Definitions(resources=build_resources(), executor=build_executor()),  # both per TICKLAKE_PROFILE
)

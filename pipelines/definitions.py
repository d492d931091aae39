"""The one Definitions object of the ticklake code location (workspace.yaml loads it).

Each area exports plain lists (`assets`, `asset_checks`, `jobs`, `sensors`, `schedules`)
from its own module; adding an area means adding its module to AREAS below, never
building a second Definitions object. Resources come from the profile selected by
TICKLAKE_PROFILE (resources/profiles.py).
"""

from __future__ import annotations

from types import ModuleType

import dagster as dg

from assets import (
    batch_features,
    bulk_history,
    charts,
    clickhouse_loads,
    lake_hours,
    lake_setup,
    spark_features,
)
from pipelines import (
    clickhouse_live_service,
    collector_service,
    hourly_chain,
    lake_rebuild_job,
    lake_schedules,
    lake_sink_service,
    pragma_service,
    processor_services,
    replay_completion,
    replay_job,
    supervisors,
    supervisors_processors,
)
from resources.profiles import build_resources

#: In data-flow order: collectors -> streaming services -> lake -> analytics.
AREAS: list[ModuleType] = [
    collector_service, supervisors,
    processor_services, supervisors_processors, replay_job,
    pragma_service,
    lake_setup, lake_sink_service, lake_hours, lake_schedules, lake_rebuild_job, replay_completion, bulk_history,
    batch_features, spark_features, clickhouse_loads, clickhouse_live_service, charts, hourly_chain,
]


def _collect(kind: str) -> list:
    seen: dict[int, object] = {}
    for module in AREAS:
        for item in getattr(module, kind, []):
            seen.setdefault(id(item), item)
    return list(seen.values())


ASSETS = [*dg.load_assets_from_modules([lake_setup]), *_collect("assets")]
ASSET_CHECKS = _collect("asset_checks")
JOBS = _collect("jobs")
SENSORS = _collect("sensors")
SCHEDULES = _collect("schedules")

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(),
)

"""The one Definitions object of the ticklake code location (workspace.yaml loads it).

Each area contributes lists from its own module; adding an area means adding its module
to ASSET_MODULES (assets and asset checks are collected from it) or its jobs, sensors
and schedules to the lists below, never building a second Definitions object.
Resources come from the profile selected by TICKLAKE_PROFILE (resources/profiles.py).
"""

from __future__ import annotations

import dagster as dg

from assets import lake_setup
from resources.profiles import build_resources

#: Modules whose assets / asset checks belong to the code location.
ASSET_MODULES = [lake_setup]

ASSETS = dg.load_assets_from_modules(ASSET_MODULES)
ASSET_CHECKS = dg.load_asset_checks_from_modules(ASSET_MODULES)
JOBS: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = []
SENSORS: list[dg.SensorDefinition] = []
SCHEDULES: list[dg.ScheduleDefinition] = []

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(),
)

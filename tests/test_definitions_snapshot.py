"""The code location's graph (asset keys and their upstreams, checks, jobs, sensors, schedules)
equals the checked-in snapshot tests/snapshots/definitions.json.

Why: the graph is assembled from every area's own `defs` (pipelines/definitions.py); a
renamed asset, a dropped check or a job that moved area would otherwise only show up when a
run or the UI misses it. With the snapshot, every graph change is a reviewed diff.

After an intended change, regenerate and commit the file:

    TICKLAKE_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest -q tests/test_definitions_snapshot.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE_ENV = "TICKLAKE_UPDATE_SNAPSHOT"


def graph_summary(defs: dg.Definitions) -> dict:
    """What a reviewer needs to see change: names, lineage, partitioning, targets."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_materializable:
            continue
        assets[key.to_user_string()] = {
            "upstream": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "automation": node.automation_condition is not None,
        }
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    jobs = sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__ASSET_JOB"))
    sensors = {
        s.name: {"type": type(s).__name__, "default": s.default_status.value}
        for s in sorted(repo.sensor_defs, key=lambda s: s.name)
    }
    schedules = {
        s.name: {
            "cron": s.cron_schedule,
            "job": s.job_name,
            "timezone": s.execution_timezone,
            "default": s.default_status.value,
        }
        for s in sorted(repo.schedule_defs, key=lambda s: s.name)
    }
    return {"assets": assets, "asset_checks": checks, "jobs": jobs, "sensors": sensors, "schedules": schedules}


def test_definitions_match_snapshot():
    from pipelines.definitions import defs

    current = graph_summary(defs)
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, (
        f"the code location's graph differs from {SNAPSHOT.name}; if intended, regenerate with "
        f"{UPDATE_ENV}=1 .venv/bin/python -m pytest -q {Path(__file__).relative_to(Path.cwd())} and commit the diff"
    )

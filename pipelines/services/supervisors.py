"""Collector supervisor: exactly one live run per enabled shard of the collectors config.

Every evaluation reads the shard list ($TICKLAKE_COLLECTORS or
$TICKLAKE_HOME/collectors.yaml), compares it with the collector runs that are alive, and
requests a run for each enabled shard that has none — a run that failed, was canceled or
whose worker died (run monitoring marks it failed) is not alive, so it gets replaced. Runs
of shards that were disabled or removed from the file are canceled. The service tag's
concurrency limit of one (dagster.yaml) holds even if two evaluations race.
"""

import dagster as dg
from dagster import DagsterRunStatus, RunsFilter

from collectors.config import ConfigError, config_path, load_shards
from pipelines.services.builder import LIVE_STATUSES
from pipelines.services.collector import (
    SHARD_TAG,
    collector_shard,
    shard_run_config,
    shard_tags,
)


@dg.sensor(
    job=collector_shard,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Keeps one collector run alive per enabled shard in the collectors config.",
)
def collector_supervisor(context: dg.SensorEvaluationContext):
    path = config_path()
    try:
        shards = load_shards(path)
    except (ConfigError, OSError, ValueError) as exc:
        # A broken file must be loud, and must not stop the runs that are already collecting.
        return dg.SkipReason(f"collectors config {path} is invalid: {exc}")
    enabled = {s.name for s in shards if s.enabled}
    alive: dict[str, list] = {}
    for run in context.instance.get_runs(RunsFilter(job_name=collector_shard.name, statuses=LIVE_STATUSES)):
        alive.setdefault(run.tags.get(SHARD_TAG, ""), []).append(run)
    for name, runs in alive.items():
        if name not in enabled:
            for run in runs:
                if run.status is not DagsterRunStatus.CANCELING:
                    context.log.info(f"canceling run {run.run_id} of shard {name!r}: not enabled in {path}")
                    context.instance.run_coordinator.cancel_run(run.run_id)
    requests = [
        dg.RunRequest(job_name=collector_shard.name, run_config=shard_run_config(name), tags=shard_tags(name))
        for name in sorted(enabled)
        if name not in alive
    ]
    if not requests:
        return dg.SkipReason(f"{len(enabled)} enabled shard(s) in {path}, each with a live run")
    return requests


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(sensors=[collector_supervisor])

"""A tiny code location for tests/test_deploy.py: one asset, its job and a per-minute schedule.

The production instance test needs something to run and something to schedule without
loading the whole platform (its definitions need a broker, a lake and ClickHouse); what it
proves is where the instance stores runs, events and schedule state, not what the job does.
"""

import dagster as dg

PROBE_JOB = "deploy_probe_job"
PROBE_SCHEDULE = "deploy_probe_every_minute"


@dg.asset(description="Writes one log line and one materialization.")
def deploy_probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    context.log.info("deploy probe ran")
    return dg.MaterializeResult(metadata={"probe": 1})


probe_job = dg.define_asset_job(PROBE_JOB, selection=[deploy_probe], tags={"ticklake/service": "deploy-probe"})
probe_schedule = dg.ScheduleDefinition(name=PROBE_SCHEDULE, job=probe_job, cron_schedule="* * * * *")

defs = dg.Definitions(assets=[deploy_probe], jobs=[probe_job], schedules=[probe_schedule])

"""Supervisor sensor: one live run per stream processor (normalizer, feature processor).

A run that failed, was canceled or whose worker died (Dagster's run monitoring marks it
failed) no longer counts as alive, so the next evaluation requests a new one; the new
process fences the dead one's Kafka producer and resumes from the committed offsets and
state. Requests carry the service tag, whose concurrency limit of one (dagster.yaml) holds
even if two evaluations race.
"""

import dagster as dg
from dagster import DagsterRunStatus, RunsFilter

from pipelines.services.processors import (
    FEATURE_PROCESSOR,
    NORMALIZER,
    feature_processor_service,
    normalizer_service,
    service_tags,
)

ALIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
SUPERVISED = ((normalizer_service, NORMALIZER), (feature_processor_service, FEATURE_PROCESSOR))


@dg.sensor(
    jobs=[normalizer_service, feature_processor_service],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Keeps one normalizer and one feature processor run alive.",
)
def stream_processors_supervisor(context: dg.SensorEvaluationContext):
    requests, skipped = [], []
    for job, name in SUPERVISED:
        alive = context.instance.get_runs(RunsFilter(job_name=job.name, statuses=ALIVE), limit=1)
        if alive:
            skipped.append(f"{name} run {alive[0].run_id} is {alive[0].status.value}")
        else:
            requests.append(dg.RunRequest(job_name=job.name, tags=service_tags(name)))
    if not requests:
        return dg.SkipReason("; ".join(skipped))
    return requests


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(sensors=[stream_processors_supervisor])

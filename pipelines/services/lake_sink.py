"""The lake sink as a long-running Dagster job, kept alive by a supervisor sensor.

One run = one sink process consuming every processed topic (streaming/lake/sink.py). The
run's `ticklake/service: lake-sink` tag has a concurrency limit of 1 in dagster.yaml, and
the supervisor only requests a run when none is queued or in progress, so two sinks never
write the same tables (the sink also detects another writer and stops). Stopping the run
from the UI asks the loop to stop after committing its current batch; even a hard kill is
safe — the sink is exactly-once by construction, an uncommitted batch is re-read by the
next run.

While it runs, the op emits an AssetObservation per hourly lake asset with the table and
lake watermarks, so each asset page shows how far event time has advanced.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import threading
import time

import dagster as dg
from dagster import DagsterRunStatus, RunsFilter
from pydantic import Field

from assets.lake_hours import watermark_observations
from pipelines.k8s import k8s_tags
from resources.home import resolve_home
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from runtime.service_status import service_run
from streaming.lake.sink import LakeSink, SinkConfig, processed_topics

SERVICE_TAG = "ticklake/service"
SERVICE_NAME = "lake-sink"
SERVICE_TAGS = {SERVICE_TAG: SERVICE_NAME}
ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


class LakeSinkRunConfig(dg.Config):
    exchanges: list[str] = Field(default_factory=list)
    """Limit to these exchanges (empty: all)."""
    markets: list[str] = Field(default_factory=list)
    """Limit to these markets (empty: all)."""
    batch_max_records: int = 50_000
    batch_max_ms: int = 500
    allowed_lateness_s: float = 10.0
    observe_every_s: float = 60.0
    """How often watermarks are published as asset observations."""
    idle_exit_s: float | None = None
    """Stop after this long without records (tests and one-off catch-up runs); None = run forever."""
    max_seconds: float | None = None


@dg.op(tags={"kind": "kafka"})
def run_lake_sink(
    context: dg.OpExecutionContext, config: LakeSinkRunConfig, kafka: KafkaResource, lake: LakeResource
) -> dg.Nothing:
    with service_run(SERVICE_NAME, run_id=context.run_id, home=resolve_home().root):
        lake.ensure_tables()
        sink = LakeSink(
            kafka.connection(),
            lake.load_catalog(),
            SinkConfig(
                topics=processed_topics(config.exchanges or None, config.markets or None),
                batch_max_records=config.batch_max_records,
                batch_max_ms=config.batch_max_ms,
                allowed_lateness_us=int(config.allowed_lateness_s * 1e6),
            ),
        )

        def observe() -> None:
            for obs in watermark_observations(lake):
                context.log_event(obs)

        # The loop runs in a worker thread; this thread publishes observations and turns a run
        # termination (an interrupt raised here) into a stop request, so the batch in flight is
        # committed rather than left as orphan files.
        errors: list[BaseException] = []

        def work() -> None:
            try:
                sink.run(idle_exit_s=config.idle_exit_s, max_seconds=config.max_seconds)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the op's thread
                errors.append(exc)

        worker = threading.Thread(target=work, name="lake-sink-loop", daemon=True)
        worker.start()
        last = time.monotonic()
        try:
            while worker.is_alive():
                worker.join(0.5)
                if time.monotonic() - last >= config.observe_every_s:
                    observe()
                    last = time.monotonic()
        except BaseException:
            context.log.info("lake sink: stop requested; committing the current batch")
            sink.request_stop()
            worker.join(120)
            raise
        if errors:
            raise errors[0]
        observe()
        context.log.info(f"lake sink stopped: {sink.stats}")


@dg.job(
    tags={**SERVICE_TAGS, **k8s_tags(SERVICE_NAME)},
    description="Long-running lake sink: processed.* Kafka topics -> Iceberg, exactly once.",
    executor_def=dg.in_process_executor,
)  # in the run worker: no 20 ms step-event polling parent (~1 % of a core each)
def lake_sink_service():
    run_lake_sink()


@dg.sensor(
    job=lake_sink_service,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Keeps one lake sink run alive: requests a run whenever none is queued or running.",
)
def lake_sink_supervisor(context: dg.SensorEvaluationContext):
    active = context.instance.get_runs(RunsFilter(job_name=lake_sink_service.name, statuses=ACTIVE_STATUSES), limit=1)
    if active:
        return dg.SkipReason(f"lake sink run {active[0].run_id} is {active[0].status.value}")
    return dg.RunRequest(tags=SERVICE_TAGS)


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(jobs=[lake_sink_service], sensors=[lake_sink_supervisor])

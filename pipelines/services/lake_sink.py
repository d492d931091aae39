"""The lake sink as a long-running Dagster job, kept alive by a supervisor sensor.

One run = one sink process consuming every processed topic (streaming/lake/sink.py). The
run's `ticklake/service: lake-sink` tag has a concurrency limit of 1 in dagster.yaml, and
the supervisor only requests a run when none is queued or in progress, so two sinks never
write the same tables (the sink also detects another writer and stops). Stopping the run
from the UI asks the loop to stop after committing its current batch; even a hard kill is
safe — the sink is exactly-once by construction, an uncommitted batch is re-read by the
next run.

While it runs, the op emits an AssetObservation per hourly lake asset with the table and
lake watermarks, so each asset page shows how far event time has advanced. The job, sensor
and tags come from the service builder (pipelines/services/builder.py).
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from assets.lake_hours import watermark_observations
from pipelines.services.builder import Pod, run_loop, service, service_tags
from streaming.lake.sink import SERVICE_NAME, LakeSink, LakeSinkSettings, sink_from_settings

SERVICE_TAGS = service_tags(SERVICE_NAME)


class LakeSinkRunConfig(dg.Config, LakeSinkSettings):
    """The sink's settings (streaming/lake/sink.py) as run config, plus the op's observations."""

    observe_every_s: float = 60.0
    """How often watermarks are published as asset observations."""


def _sink(context: dg.OpExecutionContext, config: LakeSinkRunConfig) -> LakeSink:
    kafka, lake = context.resources.kafka, context.resources.lake
    lake.ensure_tables()
    return sink_from_settings(kafka.connection(), lake.load_catalog(), config)


def _run(context: dg.OpExecutionContext, config: LakeSinkRunConfig, sink: LakeSink) -> None:
    """The loop in its worker thread; this thread publishes the watermark observations
    (Dagster events belong to the op's thread), every observe_every_s and once at the end."""

    def observe() -> None:
        for obs in watermark_observations(context.resources.lake):
            context.log_event(obs)

    run_loop(
        context,
        sink,
        idle_exit_s=config.idle_exit_s,
        max_seconds=config.max_seconds,
        on_tick=observe,
        tick_s=config.observe_every_s,
    )
    observe()


LAKE_SINK = service(
    SERVICE_NAME,
    _sink,
    pod=Pod("1", "4Gi", "8Gi"),
    resources=("kafka", "lake"),
    run=_run,
    description="Long-running lake sink: processed.* Kafka topics -> Iceberg, exactly once.",
)
lake_sink_service = LAKE_SINK.job
lake_sink_supervisor = LAKE_SINK.sensor

"""Live analytics as a long-running Dagster job: feature.* topics -> ClickHouse features_live.

One run = one streaming/clickhouse/live.py consumer. The `ticklake/service: clickhouse-live`
tag keeps it to one run (tag concurrency in dagster.yaml, and the supervisor requests a
run only when none is queued or running). It holds no Dagster pool: locally it is one HTTP
client of the local ClickHouse server among others (hourly loads, user clients), which all
run at the same time. Stopping the run is safe at any point:
offsets are committed after the insert, so an interrupted batch is re-read and collapses
on event_id in the ReplacingMergeTree.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg
from dagster import DagsterRunStatus, RunsFilter
from pydantic import Field

from pipelines.k8s import k8s_tags
from resources.clickhouse import ClickHouseResource
from resources.home import resolve_home
from resources.kafka import KafkaResource
from runtime.service_status import service_run
from streaming.clickhouse import sql as cs
from streaming.clickhouse.live import ClickHouseLive, live_topics

SERVICE_TAG = "ticklake/service"
SERVICE_NAME = "clickhouse-live"
SERVICE_TAGS = {SERVICE_TAG: SERVICE_NAME}
ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


class ClickHouseLiveConfig(dg.Config):
    exchanges: list[str] = Field(default_factory=list)
    """Limit to these exchanges (empty: all)."""
    markets: list[str] = Field(default_factory=list)
    """Limit to these markets (empty: all)."""
    database: str = cs.DEFAULT_DATABASE
    ttl_days: int | None = None
    batch_max_records: int = 5000
    batch_max_ms: int = 500
    session_timeout_ms: int = 10_000
    """Consumer group session; the embedded broker admits a member after about half of it."""
    idle_exit_s: float | None = None
    """Stop after this long without records (tests, catch-up runs); None = run forever."""
    max_seconds: float | None = None


@dg.op(tags={"kind": "clickhouse"})
def run_clickhouse_live(
    context: dg.OpExecutionContext, config: ClickHouseLiveConfig, kafka: KafkaResource, clickhouse: ClickHouseResource
) -> dg.Nothing:
    with service_run(SERVICE_NAME, run_id=context.run_id, home=resolve_home().root):
        svc = ClickHouseLive(
            kafka.connection(),
            clickhouse.get_client(),
            live_topics(config.exchanges or None, config.markets or None),
            database=config.database,
            batch_max_records=config.batch_max_records,
            batch_max_ms=config.batch_max_ms,
            ttl_days=config.ttl_days,
            session_timeout_ms=config.session_timeout_ms,
        )
        stats = svc.run(idle_exit_s=config.idle_exit_s, max_seconds=config.max_seconds)
        context.log.info(
            f"clickhouse-live stopped: records={stats.records} rows={stats.rows} dlq={dict(stats.dlq.counts)}"
        )


@dg.job(
    tags={**SERVICE_TAGS, **k8s_tags(SERVICE_NAME)},
    description="Long-running consumer: feature.* topics -> ClickHouse features_live.",
    executor_def=dg.in_process_executor,
)  # in the run worker: no 20 ms step-event polling parent (~1 % of a core each)
def clickhouse_live_service():
    run_clickhouse_live()


@dg.sensor(
    job=clickhouse_live_service,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Keeps one clickhouse-live run alive: requests a run whenever none is queued or running.",
)
def clickhouse_live_supervisor(context: dg.SensorEvaluationContext):
    active = context.instance.get_runs(
        RunsFilter(job_name=clickhouse_live_service.name, statuses=ACTIVE_STATUSES), limit=1
    )
    if active:
        return dg.SkipReason(f"clickhouse-live run {active[0].run_id} is {active[0].status.value}")
    return dg.RunRequest(tags=SERVICE_TAGS)


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(jobs=[clickhouse_live_service], sensors=[clickhouse_live_supervisor])

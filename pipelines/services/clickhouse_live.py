"""Live analytics as a long-running Dagster job: feature.* topics -> ClickHouse features_live.

One run = one streaming/clickhouse/live.py consumer. The `ticklake/service: clickhouse-live`
tag keeps it to one run (tag concurrency in dagster.yaml, and the supervisor requests a
run only when none is queued or running). It holds no Dagster pool: locally it is one HTTP
client of the local ClickHouse server among others (hourly loads, user clients), which all
run at the same time. Stopping the run is safe at any point:
offsets are committed after the insert, so an interrupted batch is re-read and collapses
on event_id in the ReplacingMergeTree. Job, sensor and tags: pipelines/services/builder.py.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg
from pydantic import Field

from pipelines.services.builder import service, service_tags
from streaming.clickhouse import sql as cs
from streaming.clickhouse.live import SERVICE_NAME, ClickHouseLive, live_topics

SERVICE_TAGS = service_tags(SERVICE_NAME)


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


def _live(context: dg.OpExecutionContext, config: ClickHouseLiveConfig) -> ClickHouseLive:
    return ClickHouseLive(
        context.resources.kafka.connection(),
        context.resources.clickhouse.get_client(),
        live_topics(config.exchanges or None, config.markets or None),
        database=config.database,
        batch_max_records=config.batch_max_records,
        batch_max_ms=config.batch_max_ms,
        ttl_days=config.ttl_days,
        session_timeout_ms=config.session_timeout_ms,
    )


CLICKHOUSE_LIVE = service(
    SERVICE_NAME,
    ClickHouseLiveConfig,
    _live,
    job_name="clickhouse_live_service",
    op_name="run_clickhouse_live",
    op_tags={"kind": "clickhouse"},
    resources=("kafka", "clickhouse"),
    report=lambda svc: f"records={svc.stats.records} rows={svc.stats.rows} dlq={dict(svc.stats.dlq.counts)}",
    description="Long-running consumer: feature.* topics -> ClickHouse features_live.",
    supervisor_name="clickhouse_live_supervisor",
    supervisor_description="Keeps one clickhouse-live run alive: requests a run whenever none is queued or running.",
)
clickhouse_live_service = CLICKHOUSE_LIVE.job
clickhouse_live_supervisor = CLICKHOUSE_LIVE.sensor

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = CLICKHOUSE_LIVE.defs

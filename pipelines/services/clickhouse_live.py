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

from pipelines.services.builder import Pod, service, service_tags
from streaming.clickhouse.live import SERVICE_NAME, ClickHouseLive, ClickHouseLiveSettings, live_from_settings

SERVICE_TAGS = service_tags(SERVICE_NAME)


class ClickHouseLiveConfig(dg.Config, ClickHouseLiveSettings):
    """The live loader's settings (streaming/clickhouse/live.py) as Dagster run config."""


def _live(context: dg.OpExecutionContext, config: ClickHouseLiveConfig) -> ClickHouseLive:
    return live_from_settings(context.resources.kafka.connection(), context.resources.clickhouse.get_client(), config)


CLICKHOUSE_LIVE = service(
    SERVICE_NAME,
    _live,
    pod=Pod("250m", "512Mi", "1Gi"),
    op_tags={"kind": "clickhouse"},
    resources=("kafka", "clickhouse"),
    description="Long-running consumer: feature.* topics -> ClickHouse features_live.",
)
clickhouse_live_service = CLICKHOUSE_LIVE.job
clickhouse_live_supervisor = CLICKHOUSE_LIVE.sensor

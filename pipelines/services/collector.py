"""A collector shard as a long-running Dagster job.

One run = one shard (a venue + market, its symbols and egress IPs), running until it is
terminated. The builder's supervisor (`collector_supervisor`) keeps one run per enabled shard
of the collectors config (the service's `Instances`), tagged
``ticklake/service: collector:<shard>``; dagster.yaml limits each value of that tag to one
run, so a shard never has two live collectors. The shard runs on an asyncio loop in a
worker thread; terminating the run from the UI interrupts the op's thread, which asks the
loop to stop: sockets close, the producer flushes, and only then does the op return.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from collectors.config import (
    CollectorShardSettings,
    ConfigError,
    ShardConfig,
    config_path,
    load_shards,
    resolve_shard,
)
from collectors.runner import ShardRunner, ShardStats
from collectors.status import status_file
from pipelines.services.builder import (
    SERVICE_TAG,
    Instances,
    InstancesUnavailable,
    Pod,
    Wanted,
    instance_value,
    supervised,
)
from resources.kafka import KafkaResource
from runtime.home import resolve_home
from runtime.service_loop import run_in_worker
from runtime.service_status import service_run

__all__ = [
    "SERVICE_TAG",
    "SHARD_TAG",
    "CollectorShardConfig",
    "collector_shard",
    "collector_supervisor",
    "resolve_shard",
]

#: Service name (its runs' tag value is `collector:<shard>`).
COLLECTOR = "collector"
SHARD_TAG = "ticklake/shard"


def service_value(shard: str) -> str:
    return instance_value(COLLECTOR, shard)


class CollectorShardConfig(dg.Config, CollectorShardSettings):
    """A shard run's settings (collectors/config.py) as Dagster run config."""


@dataclass
class ShardHandle:
    """What a running shard exposes to the thread that supervises it."""

    runner: ShardRunner | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    stats: ShardStats = field(default_factory=ShardStats)
    started: threading.Event = field(default_factory=threading.Event)

    def request_stop(self) -> None:
        if self.loop is not None and self.stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop.set)


def run_shard_until_stopped(
    log: Any,
    cfg: ShardConfig,
    producer_config: dict[str, Any],
    *,
    max_seconds: float = 0.0,
    handle: ShardHandle | None = None,
) -> ShardStats:
    """Run a shard on its own event loop in a worker thread until ``max_seconds`` pass or this
    thread is interrupted (a Dagster termination); either way the worker closes its sockets
    and flushes the producer before this returns or re-raises."""
    handle = handle or ShardHandle()

    async def main() -> ShardStats:
        handle.loop = asyncio.get_running_loop()
        handle.stop = asyncio.Event()
        handle.runner = ShardRunner(
            cfg, producer_config=producer_config, status_path=status_file(cfg.name, resolve_home().root)
        )
        handle.stats = handle.runner.stats
        handle.started.set()
        if max_seconds:
            handle.loop.call_later(max_seconds, handle.stop.set)
        await handle.runner.run(handle.stop)
        return handle.stats

    def work() -> ShardStats:
        try:
            return asyncio.run(main())
        finally:
            handle.started.set()

    return run_in_worker(
        work,
        request_stop=handle.request_stop,
        name=f"collector-{cfg.name}",
        log=log,
        stopping_message="stop requested; closing connections and flushing",
        ready=handle.started,
    )


@dg.op(tags={"kind": "collector"}, description="Collect one shard until the run is terminated.")
def run_collector_shard(
    context: dg.OpExecutionContext, config: CollectorShardConfig, kafka: KafkaResource
) -> dg.Nothing:
    cfg = resolve_shard(config)
    if context.run.tags.get(SERVICE_TAG) != service_value(cfg.name):
        context.log.warning(
            f"run is not tagged {SERVICE_TAG}={service_value(cfg.name)}: the one-run-per-shard "
            "limit does not protect it (launch shards through the supervisor)"
        )
    # Metrics on an ephemeral port unless one is configured; JSON logs with shard and run id.
    with service_run(
        service_value(cfg.name),
        shard=cfg.name,
        run_id=context.run_id,
        home=resolve_home().root,
        port=config.metrics_port or None,
    ):
        producer_config = kafka.producer_config(client_id=f"ticklake-collector-{cfg.name}")
        context.log.info(
            f"collector {cfg.name}: {cfg.exchange} {cfg.market}, {len(cfg.symbols)} symbols, "
            f"egress {list(cfg.egress_ips) or ['default']}, ws {cfg.endpoints.ws}"
        )
        t0 = time.monotonic()
        stats = run_shard_until_stopped(context.log, cfg, producer_config, max_seconds=config.max_seconds)
        context.log.info(f"collector {cfg.name} stopped after {time.monotonic() - t0:.0f}s: {stats.as_dict()}")


def enabled_shards() -> Wanted:
    """The shards that should each have a live run: the enabled ones of the collectors config
    ($TICKLAKE_COLLECTORS or $TICKLAKE_HOME/collectors.yaml), read at every evaluation, so a
    shard added, disabled or removed in the file gets a run or loses it (runs canceled)."""
    path = config_path()
    try:
        shards = load_shards(path)
    except (ConfigError, OSError, ValueError) as exc:
        raise InstancesUnavailable(f"collectors config {path} is invalid: {exc}") from exc
    return Wanted({s.name for s in shards if s.enabled}, f"enabled shard(s) in {path}")


COLLECTOR_SERVICE = supervised(
    COLLECTOR,
    run_collector_shard,
    pod=Pod("500m", "512Mi", "1Gi", egress=True),
    job_name="collector_shard",
    description="One collector shard (venue, market, symbols, egress IPs), kept alive by the "
    "collector supervisor; publishes raw.* and dlq.collector.",
    instances=Instances(tag=SHARD_TAG, config_field="shard", wanted=enabled_shards),
    supervisor_description="Keeps one collector run alive per enabled shard in the collectors config.",
    supervisor_interval_s=30,
)
collector_shard = COLLECTOR_SERVICE.job
collector_supervisor = COLLECTOR_SERVICE.sensor
shard_tags = COLLECTOR_SERVICE.instance_tags
shard_run_config = COLLECTOR_SERVICE.run_config

#: This area's part of the code location (pipelines/services/registry.py collects the service).
defs = COLLECTOR_SERVICE.defs

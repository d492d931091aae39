"""A collector shard as a long-running Dagster job.

One run = one shard (a venue + market, its symbols and egress IPs), running until it is
terminated. The supervisor sensor (`collector_supervisor`, below) launches runs tagged
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
from pipelines.k8s import COLLECTOR
from pipelines.services.builder import LIVE_STATUSES, SERVICE_TAG, service_job
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

SHARD_TAG = "ticklake/shard"
OP_NAME = "run_collector_shard"


def service_value(shard: str) -> str:
    return f"collector:{shard}"


def shard_tags(shard: str) -> dict[str, str]:
    return {SERVICE_TAG: service_value(shard), SHARD_TAG: shard}


def shard_run_config(shard: str, **extra: Any) -> dict[str, Any]:
    return {"ops": {OP_NAME: {"config": {"shard": shard, **extra}}}}


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


#: The service tag's value is per shard (set by the supervisor's requests), not on the job.
collector_shard = service_job(
    COLLECTOR,
    run_collector_shard,
    job_name="collector_shard",
    tag_service=False,
    description="One collector shard (venue, market, symbols, egress IPs), kept alive by the "
    "collector supervisor; publishes raw.* and dlq.collector.",
)


# Collector supervisor: exactly one live run per enabled shard of the collectors config.
#
# Every evaluation reads the shard list ($TICKLAKE_COLLECTORS or
# $TICKLAKE_HOME/collectors.yaml), compares it with the collector runs that are alive, and
# requests a run for each enabled shard that has none — a run that failed, was canceled or
# whose worker died (run monitoring marks it failed) is not alive, so it gets replaced. Runs
# of shards that were disabled or removed from the file are canceled. The service tag's
# concurrency limit of one (dagster.yaml) holds even if two evaluations race.
#
# The one service whose sensor is not builder.supervisor(): its run set comes from a file.


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
    for run in context.instance.get_runs(dg.RunsFilter(job_name=collector_shard.name, statuses=LIVE_STATUSES)):
        alive.setdefault(run.tags.get(SHARD_TAG, ""), []).append(run)
    for name, runs in alive.items():
        if name not in enabled:
            for run in runs:
                if run.status is not dg.DagsterRunStatus.CANCELING:
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
defs = dg.Definitions(jobs=[collector_shard], sensors=[collector_supervisor])

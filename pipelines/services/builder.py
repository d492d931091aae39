"""One builder for the long-running services: (name, config class, loop) -> job, supervisor, tags.

Every service is the same Dagster shape, written here once:

* a one-op job tagged ``ticklake/service: <name>`` (dagster.yaml allows one live run per tag
  value) plus its Kubernetes pod settings (pipelines/k8s.py), run with the in-process
  executor (no step-event polling parent process, ~1 % of a core per service);
* an op that records the service (runtime.service_status.service_run: metrics port, status
  file for `ticklake status`, JSON logs), builds the loop from its config and resources, and
  runs it in a worker thread (runtime.service_loop.run_in_worker), so a run termination
  becomes a stop request and the batch in flight is committed before the op returns;
* a supervisor sensor, shipped STOPPED and switched on by `ticklake up`, that requests a run
  whenever the service has none queued or in progress (a failed, canceled or dead run is not
  alive, so it is replaced).

A new service is its own module (config class, loop) plus one `service(...)` call; its
`.defs` join the code location in pipelines/definitions.py. The collector shards are the one
variation (one run per shard of a config file, runs of removed shards canceled): they use
`service_job` and `LIVE_STATUSES` from here with their own sensor.
"""

# No `from __future__ import annotations`: Dagster inspects the op's real annotation types.
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from pipelines.k8s import k8s_tags
from pipelines.services.tags import LIVE_STATUS_NAMES, SERVICE_TAG, service_tags
from runtime.home import resolve_home
from runtime.service_loop import run_in_worker
from runtime.service_status import service_run

__all__ = [
    "LIVE_STATUSES",
    "SERVICE_TAG",
    "Service",
    "run_loop",
    "service",
    "service_job",
    "service_tags",
    "supervisor",
]

#: Run states that hold a service's slot, as Dagster statuses (names: pipelines/services/tags.py).
LIVE_STATUSES = [dg.DagsterRunStatus(s) for s in LIVE_STATUS_NAMES]


def run_loop(
    context: dg.OpExecutionContext,
    loop: Any,
    *,
    idle_exit_s: float | None = None,
    max_seconds: float | None = None,
    run: Callable[[], Any] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 60.0,
) -> Any:
    """Run `loop` (a runtime.service_loop.ServiceLoop or anything with run/request_stop/name)
    in a worker thread until it returns; a run termination becomes `loop.request_stop()`."""
    result = run_in_worker(
        run or (lambda: loop.run(idle_exit_s=idle_exit_s, max_seconds=max_seconds)),
        request_stop=loop.request_stop,
        name=f"{loop.name}-loop",
        log=context.log,
        stopping_message="stop requested; draining and committing the current batch",
        on_tick=on_tick,
        tick_s=tick_s,
    )
    context.log.info(f"{loop.name} stopped: {loop.stats}")
    return result


def service_job(
    name: str,
    op: dg.OpDefinition,
    *,
    job_name: str,
    description: str,
    tag_service: bool = True,
) -> dg.JobDefinition:
    """The one-op job of a service: its tags (service + Kubernetes pod) and the in-process executor.
    `tag_service=False` for services whose tag value is per run (collector shards)."""
    tags = {**(service_tags(name) if tag_service else {}), **k8s_tags(name)}

    @dg.job(name=job_name, tags=tags, description=description, executor_def=dg.in_process_executor)
    def _job():
        op()

    return _job


def supervisor(
    name: str,
    services: Sequence[tuple[str, dg.JobDefinition]],
    *,
    description: str,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """A sensor keeping one live run of each (service name, job): it requests a run, tagged
    with the service, for every job that has none queued or in progress."""

    @dg.sensor(
        name=name,
        jobs=[job for _, job in services],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=description,
    )
    def _supervisor(context: dg.SensorEvaluationContext):
        requests, live = [], []
        for svc, job in services:
            runs = context.instance.get_runs(dg.RunsFilter(job_name=job.name, statuses=LIVE_STATUSES), limit=1)
            if runs:
                live.append(f"{svc} run {runs[0].run_id} is {runs[0].status.value}")
            else:
                requests.append(dg.RunRequest(job_name=job.name, tags=service_tags(svc)))
        if not requests:
            return dg.SkipReason("; ".join(live))
        return requests[0] if len(services) == 1 else requests

    return _supervisor


@dataclass(frozen=True)
class Service:
    """What `service()` builds: the job, its supervisor (None when another sensor supervises
    it) and the run tags; `defs` is this service's part of the code location."""

    name: str
    op: dg.OpDefinition
    job: dg.JobDefinition
    sensor: dg.SensorDefinition | None

    @property
    def tags(self) -> dict[str, str]:
        return service_tags(self.name)

    @property
    def defs(self) -> dg.Definitions:
        return dg.Definitions(jobs=[self.job], sensors=[self.sensor] if self.sensor else [])


def service(
    name: str,
    config_class: type[dg.Config],
    loop: Callable[[dg.OpExecutionContext, Any], Any],
    *,
    job_name: str,
    op_name: str,
    description: str,
    resources: Sequence[str] = ("kafka",),
    supervisor_name: str | None = None,
    supervisor_description: str = "",
    supervisor_interval_s: int = 60,
    run: Callable[[dg.OpExecutionContext, Any, Any], Any] | None = None,
    report: Callable[[Any], str] | None = None,
    output: Callable[[Any, Any], Any] | None = None,
    metrics_port: Callable[[Any], int | None] | None = None,
    op_tags: Mapping[str, str] | None = None,
) -> Service:
    """Build a service from `loop(context, config)`, which returns the loop to run (its
    resources come from `context.resources`, listed in `resources`).

    By default the loop runs as `loop.run(idle_exit_s=config.idle_exit_s,
    max_seconds=config.max_seconds)` in a worker thread; `run(context, config, loop)` replaces
    that (e.g. to publish Dagster events from the op's thread while the loop runs). `report`
    adds a last log line, `output(config, loop)` makes the op return a value (the op output),
    `metrics_port(config)` fixes the Prometheus port (default: ephemeral)."""

    def body(context: dg.OpExecutionContext, config: Any) -> Any:
        port = metrics_port(config) if metrics_port is not None else None
        with service_run(name, run_id=context.run_id, home=resolve_home().root, port=port):
            the_loop = loop(context, config)
            if run is not None:
                run(context, config, the_loop)
            else:
                run_loop(
                    context,
                    the_loop,
                    idle_exit_s=getattr(config, "idle_exit_s", None),
                    max_seconds=getattr(config, "max_seconds", None),
                )
            if report is not None:
                context.log.info(f"{name}: {report(the_loop)}")
            return output(config, the_loop) if output is not None else None

    tags = {"kind": "kafka", **(op_tags or {})}
    if output is not None:

        @dg.op(name=op_name, tags=tags, required_resource_keys=set(resources), out=dg.Out(dict))
        def op_with_output(context: dg.OpExecutionContext, config: config_class):  # type: ignore[valid-type]
            return body(context, config)

        op = op_with_output
    else:

        @dg.op(name=op_name, tags=tags, required_resource_keys=set(resources))
        def op_nothing(context: dg.OpExecutionContext, config: config_class) -> dg.Nothing:  # type: ignore[valid-type]
            body(context, config)

        op = op_nothing

    job = service_job(name, op, job_name=job_name, description=description)
    sensor = (
        supervisor(
            supervisor_name,
            [(name, job)],
            description=supervisor_description,
            minimum_interval_seconds=supervisor_interval_s,
        )
        if supervisor_name
        else None
    )
    return Service(name, op, job, sensor)

"""One builder for the long-running services: (name, loop builder, pod size) -> job, supervisor, tags.

Every service is the same Dagster shape, written here once:

* a one-op job tagged ``ticklake/service: <name>`` (dagster.yaml allows one live run per tag
  value) plus its Kubernetes pod settings (the `pod` the service declares, as the dagster-k8s
  tag of pipelines/k8s.py), run with the in-process executor (no step-event polling parent
  process, ~1 % of a core per service);
* an op that records the service (runtime.service_status.service_run: metrics port, status
  file for `ticklake status`, JSON logs), builds the loop from its config and resources, and
  runs it in a worker thread (runtime.service_loop.run_in_worker), so a run termination
  becomes a stop request and the batch in flight is committed before the op returns;
* a supervisor sensor, shipped STOPPED and switched on by `ticklake up`, that requests a run
  whenever the service has none queued or in progress (a failed, canceled or dead run is not
  alive, so it is replaced). A service run once per instance key (collector shards: one run
  per enabled shard of a config file) declares `Instances`: the supervisor then keeps one
  live run per wanted key, tagged ``<name>:<key>``, and cancels runs of keys no longer wanted.

A new service is its own module under pipelines/services/ holding one `service(...)` call:
pipelines/services/registry.py finds every `Service` (and supervisor sensor) those modules
define, and the code location (pipelines/definitions.py), the Kubernetes tests and the local
stack read them from there; nothing else lists services.
"""

# No `from __future__ import annotations`: Dagster inspects the op's real annotation types.
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg

from pipelines.k8s import Pod, k8s_tags
from pipelines.services.tags import LIVE_STATUS_NAMES, SERVICE_TAG, service_tags
from runtime.home import resolve_home
from runtime.service_loop import run_in_worker
from runtime.service_status import service_run

__all__ = [
    "LIVE_STATUSES",
    "SERVICE_TAG",
    "Instances",
    "InstancesUnavailable",
    "Pod",
    "Service",
    "run_loop",
    "service",
    "service_job",
    "service_tags",
    "supervised",
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
    """Run `loop` (a runtime.service_loop.ServiceLoop) in a worker thread until it returns,
    then log its summary(); a run termination becomes `loop.request_stop()`."""
    result = run_in_worker(
        run or (lambda: loop.run(idle_exit_s=idle_exit_s, max_seconds=max_seconds)),
        request_stop=loop.request_stop,
        name=f"{loop.name}-loop",
        log=context.log,
        stopping_message="stop requested; draining and committing the current batch",
        on_tick=on_tick,
        tick_s=tick_s,
    )
    context.log.info(f"{loop.name} stopped: {loop.summary()}")
    return result


def snake(name: str) -> str:
    """`lake-sink` -> `lake_sink`: the default job, op and sensor names derive from the service's."""
    return name.replace("-", "_")


def instance_value(name: str, key: str) -> str:
    """The service tag of one instance's runs (`collector:<shard>`; pipelines/k8s.py reads the kind back)."""
    return f"{name}:{key}"


class InstancesUnavailable(Exception):
    """The wanted instance keys cannot be read (e.g. a broken config file): the supervisor
    skips with this message and leaves the live runs alone."""


@dataclass(frozen=True)
class Wanted:
    """The instance keys that should each have one live run, and where they came from (for messages)."""

    keys: Collection[str]
    source: str


@dataclass(frozen=True)
class Instances:
    """A service run once per instance key: `tag` names the run tag carrying the key,
    `config_field` the op config field it fills, and `wanted()` reads the keys (raising
    InstancesUnavailable when it cannot)."""

    tag: str
    config_field: str
    wanted: Callable[[], Wanted]


def service_job(
    name: str,
    op: dg.OpDefinition,
    *,
    pod: Pod,
    job_name: str,
    description: str,
    tag_service: bool = True,
) -> dg.JobDefinition:
    """The one-op job of a service: its tags (service + Kubernetes pod) and the in-process executor.
    `tag_service=False` for services whose tag value is per run (instances)."""
    tags = {**(service_tags(name) if tag_service else {}), **k8s_tags(name, pod)}

    @dg.job(name=job_name, tags=tags, description=description, executor_def=dg.in_process_executor)
    def _job():
        op()

    return _job


def _keep_alive(context: dg.SensorEvaluationContext, svc: "Service") -> tuple[list[dg.RunRequest], str]:
    """The run requests keeping `svc` alive, and what is live (the skip message when none is needed)."""
    if svc.instances is None:
        runs = context.instance.get_runs(dg.RunsFilter(job_name=svc.job.name, statuses=LIVE_STATUSES), limit=1)
        if runs:
            return [], f"{svc.name} run {runs[0].run_id} is {runs[0].status.value}"
        return [dg.RunRequest(job_name=svc.job.name, tags=svc.tags)], ""
    inst = svc.instances
    try:
        wanted = inst.wanted()
    except InstancesUnavailable as exc:
        # A broken source must be loud, and must not stop the runs that are already live.
        return [], str(exc)
    alive: dict[str, list] = {}
    for run in context.instance.get_runs(dg.RunsFilter(job_name=svc.job.name, statuses=LIVE_STATUSES)):
        alive.setdefault(run.tags.get(inst.tag, ""), []).append(run)
    for key, runs in alive.items():
        if key not in wanted.keys:
            for run in runs:
                if run.status is not dg.DagsterRunStatus.CANCELING:
                    context.log.info(f"canceling run {run.run_id} of {svc.name} {key!r}: not in the {wanted.source}")
                    context.instance.run_coordinator.cancel_run(run.run_id)
    requests = [
        dg.RunRequest(job_name=svc.job.name, run_config=svc.run_config(key), tags=svc.instance_tags(key))
        for key in sorted(wanted.keys)
        if key not in alive
    ]
    return requests, f"{len(wanted.keys)} {wanted.source}, each with a live run"


def supervisor(
    name: str,
    services: Sequence["Service"],
    *,
    description: str,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """A sensor keeping one live run of each service (one per wanted key for a service with
    `Instances`): it requests a run, tagged with the service, for every one that has none
    queued or in progress."""

    @dg.sensor(
        name=name,
        jobs=[svc.job for svc in services],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=description,
    )
    def _supervisor(context: dg.SensorEvaluationContext):
        requests, live = [], []
        for svc in services:
            more, note = _keep_alive(context, svc)
            requests += more
            live += [note] if note else []
        if not requests:
            return dg.SkipReason("; ".join(live))
        return requests[0] if len(services) == 1 and services[0].instances is None else requests

    return _supervisor


@dataclass(frozen=True)
class Service:
    """What `service()` builds: the job, its supervisor (None when a shared sensor supervises
    it), its pod size and, for a service run per key, its `Instances`; `defs` is this
    service's part of the code location."""

    name: str
    op: dg.OpDefinition
    job: dg.JobDefinition
    pod: Pod
    sensor: dg.SensorDefinition | None = None
    instances: Instances | None = None

    @property
    def tags(self) -> dict[str, str]:
        return service_tags(self.name)

    def instance_tags(self, key: str) -> dict[str, str]:
        """Tags of one instance's runs: its service value (one live run each) and its key."""
        assert self.instances is not None, f"{self.name} is not run per instance"
        return {SERVICE_TAG: instance_value(self.name, key), self.instances.tag: key}

    def run_config(self, key: str, **extra: Any) -> dict[str, Any]:
        """Run config of one instance's run (`extra`: further op config fields)."""
        assert self.instances is not None, f"{self.name} is not run per instance"
        return {"ops": {self.op.name: {"config": {self.instances.config_field: key, **extra}}}}

    @property
    def defs(self) -> dg.Definitions:
        return dg.Definitions(jobs=[self.job], sensors=[self.sensor] if self.sensor else [])


def supervised(
    name: str,
    op: dg.OpDefinition,
    *,
    pod: Pod,
    description: str,
    job_name: str | None = None,
    supervisor_name: str | None = None,
    supervisor_description: str | None = None,
    supervisor_interval_s: int = 60,
    own_supervisor: bool = True,
    instances: Instances | None = None,
) -> Service:
    """A service from its op: the job (tagged with the service unless it runs per instance)
    and, unless `own_supervisor=False` (a shared `supervisor(...)` keeps it), its sensor."""
    job = service_job(
        name,
        op,
        pod=pod,
        job_name=job_name or f"{snake(name)}_service",
        description=description,
        tag_service=instances is None,
    )
    svc = Service(name, op, job, pod, instances=instances)
    if not own_supervisor:
        return svc
    sensor = supervisor(
        supervisor_name or f"{snake(name)}_supervisor",
        [svc],
        description=supervisor_description
        or f"Keeps one {name} run alive: requests a run whenever none is queued or running.",
        minimum_interval_seconds=supervisor_interval_s,
    )
    return replace(svc, sensor=sensor)


def service(
    name: str,
    loop: Callable[[dg.OpExecutionContext, Any], Any],
    *,
    pod: Pod,
    description: str,
    resources: Sequence[str] = ("kafka",),
    job_name: str | None = None,
    op_name: str | None = None,
    run: Callable[[dg.OpExecutionContext, Any, Any], Any] | None = None,
    output: Callable[[Any, Any], Any] | None = None,
    metrics_port: Callable[[Any], int | None] | None = None,
    op_tags: Mapping[str, str] | None = None,
    **supervision: Any,
) -> Service:
    """Build a service from `loop(context, config)`, which returns the loop to run (its
    resources come from `context.resources`, listed in `resources`), and the Kubernetes `pod`
    one run needs. The annotation of `loop`'s `config` parameter is the op's run config class
    (a dg.Config), so it is stated once. Job, op and sensor names default to
    `<name>_service`, `run_<name>` and `<name>_supervisor` (dashes as underscores).

    By default the loop runs as `loop.run(idle_exit_s=config.idle_exit_s,
    max_seconds=config.max_seconds)` in a worker thread; `run(context, config, loop)` replaces
    that (e.g. to publish Dagster events from the op's thread while the loop runs); the stop
    line is the loop's own `summary()`. `output(config, loop)` makes the op return a value (the op output),
    `metrics_port(config)` fixes the Prometheus port (default: ephemeral). `supervision`:
    the supervisor options of `supervised` (name, description, interval, own_supervisor)."""

    config_class = typing.get_type_hints(loop).get("config")
    if not (isinstance(config_class, type) and issubclass(config_class, dg.Config)):
        raise TypeError(f"service {name}: annotate the loop builder's `config` parameter with its dg.Config class")

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
            return output(config, the_loop) if output is not None else None

    tags = {"kind": "kafka", **(op_tags or {})}
    op_name = op_name or f"run_{snake(name)}"
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

    return supervised(name, op, pod=pod, description=description, job_name=job_name, **supervision)

"""Every long-running service, found where it is defined: the modules of pipelines/services/.

A service is one `service(...)` (or `supervised(...)`) call in its own module here
(pipelines/services/builder.py); this module imports every sibling module and collects the
`Service` objects and supervisor sensors they define at top level. The code location
(pipelines/definitions.py) takes its service jobs and sensors from `defs()`, and the
Kubernetes tests (tests/test_deploy.py) size every service's pod from `services()`, so
adding a seventh service edits no list anywhere: its module is the registration.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType

import dagster as dg

import pipelines.services as package
from pipelines.services.builder import Service

#: Sibling modules that define no service (the builder itself and plain helpers).
NOT_SERVICES = {"builder", "registry", "tags"}


def service_modules() -> list[ModuleType]:
    """Every module of pipelines/services/ that may define services, imported."""
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in NOT_SERVICES)
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def _top_level(modules: Iterable[ModuleType], kind: type) -> list:
    """The distinct objects of `kind` the modules define at top level (aliases counted once)."""
    seen: dict[int, object] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, kind):
                seen.setdefault(id(value), value)
    return list(seen.values())


def services(modules: Iterable[ModuleType] | None = None) -> list[Service]:
    """The services the modules define (default: every module of pipelines/services/), by name.
    Two services of one name fail here rather than share a run tag."""
    found = sorted(_top_level(modules if modules is not None else service_modules(), Service), key=lambda s: s.name)
    names = [s.name for s in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"services defined twice: {dupes}")
    return found


def defs(modules: Iterable[ModuleType] | None = None) -> dg.Definitions:
    """The services' jobs and their supervisors (their own, and shared ones such as
    `stream_processors_supervisor`, any sensor a service module defines at top level)."""
    modules = list(modules if modules is not None else service_modules())
    svcs = services(modules)
    sensors = {id(s.sensor): s.sensor for s in svcs if s.sensor is not None}
    for sensor in _top_level(modules, dg.SensorDefinition):
        sensors.setdefault(id(sensor), sensor)
    return dg.Definitions(jobs=[s.job for s in svcs], sensors=list(sensors.values()))

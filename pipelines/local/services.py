"""Turning the platform's services on, and reporting them, through the Dagster webserver.

Every supervisor sensor and schedule ships STOPPED (a code location loaded by a test or a
second deployment must not start collecting on its own); `ticklake up` switches them on
once the location is loaded, through the same GraphQL mutations the UI's toggles use, so
the instance records them exactly as if a user had clicked. `ticklake status` lists each
one's state and the live service runs (runs carrying the `ticklake/service` tag).
Plain HTTP against the webserver: no Dagster import in the CLI process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.services.tags import LIVE_STATUS_NAMES as LIVE_STATUSES
from pipelines.services.tags import SERVICE_TAG

_INSTIGATORS_QUERY = """
{ repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name }
        sensors { name sensorState { status } }
        schedules { name scheduleState { status } } } }
    ... on PythonError { message } } }
"""

_START_SENSOR = """
mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on SensorNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message } } }
"""

_START_SCHEDULE = """
mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) {
    __typename
    ... on ScheduleStateResult { scheduleState { name status } }
    ... on ScheduleNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message } } }
"""

_LIVE_RUNS = """
query($f: RunsFilter) { runsOrError(filter: $f, limit: 500) {
    __typename
    ... on Runs { results { runId jobName status tags { key value } } }
    ... on PythonError { message } } }
"""


class ServicesError(RuntimeError):
    """The webserver refused or failed a request; the message is meant for the user."""


@dataclass(frozen=True, slots=True)
class Instigator:
    """A sensor or schedule of a loaded repository."""

    kind: str  # "sensor" | "schedule"
    name: str
    status: str  # RUNNING | STOPPED
    repository: str
    location: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _post(url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = json.loads(resp.read())
    if data.get("errors"):
        raise ServicesError(f"GraphQL error from {url}: {data['errors']}")
    return data["data"]


def instigators(url: str, timeout: float = 30.0) -> list[Instigator]:
    data = _post(url, _INSTIGATORS_QUERY, timeout=timeout)["repositoriesOrError"]
    if data["__typename"] != "RepositoryConnection":
        raise ServicesError(f"cannot list repositories: {data.get('message', data['__typename'])}")
    out = []
    for repo in data["nodes"]:
        loc = repo["location"]["name"]
        out += [Instigator("sensor", s["name"], s["sensorState"]["status"], repo["name"], loc) for s in repo["sensors"]]
        out += [
            Instigator("schedule", s["name"], s["scheduleState"]["status"], repo["name"], loc)
            for s in repo["schedules"]
        ]
    return sorted(out, key=lambda i: (i.kind, i.name))


def start(url: str, item: Instigator, timeout: float = 30.0) -> str:
    """Turn one sensor/schedule on; returns its new status (raises when refused)."""
    if item.kind == "sensor":
        sel = {"repositoryName": item.repository, "repositoryLocationName": item.location, "sensorName": item.name}
        res = _post(url, _START_SENSOR, {"s": sel}, timeout)["startSensor"]
        if res["__typename"] != "Sensor":
            raise ServicesError(f"sensor {item.name}: {res['__typename']}: {res.get('message', '')}")
        return res["sensorState"]["status"]
    sel = {"repositoryName": item.repository, "repositoryLocationName": item.location, "scheduleName": item.name}
    res = _post(url, _START_SCHEDULE, {"s": sel}, timeout)["startSchedule"]
    if res["__typename"] != "ScheduleStateResult":
        raise ServicesError(f"schedule {item.name}: {res['__typename']}: {res.get('message', '')}")
    return res["scheduleState"]["status"]


def start_all(url: str, timeout: float = 30.0, leave_off: Collection[str] = ()) -> list[Instigator]:
    """Turn on every sensor and schedule that is not running yet, except those named in
    `leave_off` (left as they are); returns the final list. Idempotent: an already running
    one is left alone."""
    for item in instigators(url, timeout):
        if item.status != "RUNNING" and item.name not in leave_off:
            start(url, item, timeout)
    final = instigators(url, timeout)
    off = [i.name for i in final if i.status != "RUNNING" and i.name not in leave_off]
    if off:
        raise ServicesError(f"still not running after start: {', '.join(off)}")
    return final


@dataclass(frozen=True, slots=True)
class ServiceRun:
    service: str
    run_id: str
    job: str
    status: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def live_service_runs(url: str, timeout: float = 30.0) -> list[ServiceRun]:
    """Runs not finished yet that carry the service tag (any value): collectors, processors,
    sink, publishers. GraphQL filters tags by exact value only, so status is filtered on the
    server and the tag here."""
    data = _post(url, _LIVE_RUNS, {"f": {"statuses": list(LIVE_STATUSES)}}, timeout)["runsOrError"]
    if data["__typename"] != "Runs":
        raise ServicesError(f"cannot list runs: {data.get('message', data['__typename'])}")
    out = []
    for run in data["results"]:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if SERVICE_TAG in tags:
            out.append(ServiceRun(tags[SERVICE_TAG], run["runId"], run["jobName"], run["status"]))
    return sorted(out, key=lambda r: (r.service, r.run_id))


def services_report(url: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """For `status`: instigator states and live service runs, or why they are unknown."""
    if not url:
        return {"error": "no Dagster webserver recorded"}
    try:
        return {
            "instigators": [i.to_json() for i in instigators(url, timeout)],
            "runs": [r.to_json() for r in live_service_runs(url, timeout)],
        }
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ServicesError, KeyError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}

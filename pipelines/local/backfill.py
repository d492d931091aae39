"""`ticklake backfill START END [--select ASSETS]`: an asset backfill of UTC hours through the
RUNNING Dagster instance, so it is the same backfill the Partitions page launches (it shows
in the UI, the daemon runs it), and the command waits for it for scripts and CI.

It talks GraphQL to the webserver `ticklake up` started (URL from the stack state) or to
`--url`: resolves the selection against the code location's hourly-partitioned assets,
calls `launchPartitionBackfill` with the hours [START, END), then polls
`partitionBackfillOrError` and prints progress whenever it changes. Exit code 0 only when
the backfill completed, every asset partition materialized and every run succeeded.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.launch_tags import launched_by

HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"  # the key format of assets.partitions.HOURLY (checked in tests)
#: Every hourly-partitioned asset: the lake hours and all their hourly products (features,
#: Spark, ClickHouse, bars, charts), so a backfilled range ends with charts.
DEFAULT_SELECTION = ("*",)
#: Left out of the default selection: an hour of predictions can be built only once a model has
#: scored it (assets.ml refuses it otherwise), so a plain backfill of replayed or old hours would
#: fail on it; `--select lake/predictions` asks for it explicitly. (Named here rather than
#: imported: the CLI stays free of the ML stack's imports; tests/test_hourly_chain_automation.py
#: holds it equal to assets.ml.PREDICTIONS_KEY.)
DEFAULT_EXCLUDED = ("lake/predictions",)
MAX_HOURS = 24 * 366
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
SUCCESS_RUN = "SUCCESS"
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class BackfillError(RuntimeError):
    """Something the user must fix or know; the message says what."""


# --------------------------------------------------------------------------- pure parts


def parse_hour(text: str) -> datetime:
    """A UTC hour: 2024-08-08T23:00, 2024-08-08T23, 2024-08-08 23:00Z, 2024-08-08-23:00 (a
    partition key). A time that is not on the hour is refused rather than rounded."""
    raw = text.strip()
    for fmt in (HOUR_KEY_FORMAT, "%Y-%m-%dT%H"):
        try:
            dt = datetime.strptime(raw, fmt).replace(tzinfo=UTC)
            break
        except ValueError:
            continue
    else:
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise BackfillError(f"not a UTC hour: {text!r} (expected e.g. 2024-08-08T23:00)") from None
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if dt.minute or dt.second or dt.microsecond:
        raise BackfillError(f"{text!r} is not on the hour; hourly partitions start at :00")
    return dt


def hour_keys(start: datetime, end: datetime) -> list[str]:
    """Partition keys of the hours in [start, end)."""
    if end <= start:
        raise BackfillError(
            f"END ({end:%Y-%m-%dT%H:%M}) must be after START ({start:%Y-%m-%dT%H:%M}); END is exclusive"
        )
    n = int((end - start) / timedelta(hours=1))
    if n > MAX_HOURS:
        raise BackfillError(f"{n} hours is more than {MAX_HOURS}; split the range")
    return [(start + timedelta(hours=i)).strftime(HOUR_KEY_FORMAT) for i in range(n)]


def select_assets(patterns: list[str], hourly: list[str]) -> list[str]:
    """Asset keys ("lake/trades") among the hourly assets matching the patterns (shell-style
    globs, comma-separated allowed). Every pattern must match something."""
    wanted = [p.strip().strip("/") for item in patterns for p in item.split(",") if p.strip()]
    if not wanted:
        raise BackfillError("--select is empty")
    out: list[str] = []
    for pattern in wanted:
        hits = [k for k in hourly if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            raise BackfillError(
                f"--select {pattern!r} matches no hourly-partitioned asset; they are: " + ", ".join(sorted(hourly))
            )
        out += [k for k in hits if k not in out]
    return sorted(out)


@dataclass(slots=True)
class Progress:
    status: str
    partitions: int | None
    assets: dict[str, dict[str, int]] = field(default_factory=dict)
    runs: Counter = field(default_factory=Counter)
    error: str | None = None
    failed_runs: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL and not (set(self.runs) - FINISHED_RUN)

    @property
    def succeeded(self) -> bool:
        return (
            self.status in ("COMPLETED", "COMPLETED_SUCCESS")
            and self.error is None
            and bool(self.runs)
            and set(self.runs) == {SUCCESS_RUN}
            and all(a["materialized"] == a["targeted"] and not a["failed"] for a in self.assets.values())
        )

    def line(self) -> str:
        runs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.runs.items())) or "no runs yet"
        done = sum(a["materialized"] for a in self.assets.values())
        failed = sum(a["failed"] for a in self.assets.values())
        targeted = sum(a["targeted"] for a in self.assets.values())
        return f"{self.status:<17} {done}/{targeted} asset partitions materialized, {failed} failed; runs: {runs}"


def progress_from(backfill: dict[str, Any]) -> Progress:
    assets = {}
    for s in (backfill.get("assetBackfillData") or {}).get("assetBackfillStatuses") or []:
        if s.get("__typename") == "AssetPartitionsStatusCounts":
            assets["/".join(s["assetKey"]["path"])] = {
                "targeted": s["numPartitionsTargeted"],
                "in_progress": s["numPartitionsInProgress"],
                "materialized": s["numPartitionsMaterialized"],
                "failed": s["numPartitionsFailed"],
            }
    err = backfill.get("error")
    return Progress(
        status=backfill["status"],
        partitions=backfill.get("numPartitions"),
        assets=assets,
        runs=Counter(r["status"] for r in backfill.get("runs") or []),
        error=err["message"] if err else None,
        failed_runs=[r["runId"] for r in backfill.get("runs") or [] if r["status"] == "FAILURE"],
    )


# --------------------------------------------------------------------------- GraphQL

Gql = Callable[[str, dict[str, Any] | None], dict[str, Any]]


def graphql_client(url: str, timeout: float = 60.0) -> Gql:
    def call(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{url.rstrip('/')}/graphql",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise BackfillError(
                f"the Dagster webserver at {url} does not answer ({exc}); is the stack up (`ticklake status`)?"
            ) from None
        if body.get("errors"):
            raise BackfillError(f"GraphQL error from {url}: {body['errors']}")
        return body["data"]

    return call


ASSET_NODES = """{ assetNodes { assetKey { path } partitionDefinition { type fmt } } }"""

LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename
  ... on LaunchBackfillSuccess { backfillId }
  ... on PartitionKeysNotFoundError { partitionKeys }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on Error { message }
} }"""

STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename
  ... on PartitionBackfill { id status numPartitions error { message }
    assetBackfillData { assetBackfillStatuses { __typename
      ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted numPartitionsInProgress
                                           numPartitionsMaterialized numPartitionsFailed } } }
    runs(limit: 10000) { runId status } }
  ... on BackfillNotFoundError { message }
  ... on PythonError { message } } }"""


RUN_FAILURES = """query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { runId status tags { key value }
    eventConnection(limit: 2000) { ... on EventConnection { events { __typename
      ... on ExecutionStepFailureEvent { stepKey error { message } }
      ... on RunFailureEvent { message } } } } } } }"""


def failure_reasons(gql: Gql, run_id: str, limit: int = 3) -> list[str]:
    """Why a run failed: its step failures (and the run failure message), first lines only."""
    run = gql(RUN_FAILURES, {"id": run_id})["runOrError"]
    if run["__typename"] != "Run":
        return [run["__typename"]]
    out = []
    for e in run["eventConnection"]["events"]:
        if e["__typename"] == "ExecutionStepFailureEvent":
            msg = (e.get("error") or {}).get("message") or ""
            out.append(f"step {e['stepKey']}: {msg.strip().splitlines()[0] if msg.strip() else '?'}")
        elif e["__typename"] == "RunFailureEvent" and not out:
            out.append(e.get("message") or "run failed")
    return out[:limit]


def hourly_assets(gql: Gql) -> list[str]:
    nodes = gql(ASSET_NODES, None)["assetNodes"]
    return sorted(
        "/".join(n["assetKey"]["path"])
        for n in nodes
        if n["partitionDefinition"]
        and n["partitionDefinition"]["type"] == "TIME_WINDOW"
        and n["partitionDefinition"]["fmt"] == HOUR_KEY_FORMAT
    )


def launch(gql: Gql, assets: list[str], keys: list[str], title: str) -> str:
    params = {
        "partitionNames": keys,
        "assetSelection": [{"path": a.split("/")} for a in assets],
        "fromFailure": False,
        "title": title,
        "tags": [{"key": k, "value": v} for k, v in launched_by("ticklake-backfill").items()],
    }
    res = gql(LAUNCH, {"p": params})["launchPartitionBackfill"]
    if res["__typename"] != "LaunchBackfillSuccess":
        detail = res.get("message") or res.get("errors") or res
        raise BackfillError(f"Dagster refused the backfill ({res['__typename']}): {detail}")
    return res["backfillId"]


def poll(gql: Gql, backfill_id: str) -> Progress:
    res = gql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if res["__typename"] != "PartitionBackfill":
        raise BackfillError(f"backfill {backfill_id}: {res.get('message', res['__typename'])}")
    return progress_from(res)


def wait(
    gql: Gql, backfill_id: str, *, every_s: float, timeout_s: float | None, echo: Callable[[str], None]
) -> Progress:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = ""
    while True:
        prog = poll(gql, backfill_id)
        line = prog.line()
        if line != last:
            echo(f"{datetime.now(UTC):%H:%M:%S} {line}")
            last = line
        if prog.done:
            return prog
        if deadline is not None and time.monotonic() > deadline:
            raise BackfillError(
                f"backfill {backfill_id} not finished after {timeout_s:.0f}s (it keeps running; watch it in the UI)"
            )
        time.sleep(every_s)


# --------------------------------------------------------------------------- command


def webserver_url(home) -> str:
    """The UI of the running local stack; a clear error when it is not running."""
    from pipelines.local import stack

    state = stack.load_state(home)
    if state is None or not state.dagster_url:
        raise BackfillError(
            f"the local stack is not running for {home.root}: start it with `ticklake up` "
            "(or pass --url of a running Dagster webserver)"
        )
    running = state.running()
    missing = [s for s in (stack.WEBSERVER, stack.DAEMON) if s not in running]
    if missing:
        raise BackfillError(
            f"the local stack for {home.root} is not fully running ({', '.join(missing)} down); "
            "backfills need the webserver and the daemon: `ticklake down` then `ticklake up`"
        )
    return state.dagster_url


def cmd_backfill(args: argparse.Namespace) -> int:
    """backfill hourly assets for a range of UTC hours through the running Dagster

    Launch an asset backfill of the hours [START, END) (UTC, END exclusive; e.g.
    `ticklake backfill 2024-08-08T23:00 2024-08-09T00:00` is one hour) through the running
    Dagster webserver - the same backfill the asset's Partitions page launches, visible in the
    UI - then wait for it, printing progress. Exit code 0 only when every run succeeded and every
    asset partition materialized; 1 otherwise; 2 bad arguments; 3 the stack is not running.
    """
    from runtime.home import resolve_home

    echo = print
    try:
        keys = hour_keys(parse_hour(args.start), parse_hour(args.end))
    except BackfillError as exc:
        print(f"ticklake backfill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        url = args.url or webserver_url(resolve_home(args.home))
    except BackfillError as exc:
        print(f"ticklake backfill: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    gql = graphql_client(url)
    try:
        assets = select_assets(args.select or list(DEFAULT_SELECTION), hourly_assets(gql))
        if not args.select:
            assets = [a for a in assets if a not in DEFAULT_EXCLUDED]
        title = f"ticklake backfill {keys[0]} .. {keys[-1]}"
        backfill_id = launch(gql, assets, keys, title)
        echo(
            f"backfill {backfill_id}: {_n(len(keys), 'hour')} ({keys[0]} .. {keys[-1]}) x "
            f"{_n(len(assets), 'asset')} ({', '.join(assets)})"
        )
        echo(f"  {url}/runs/b/{backfill_id}")
        if args.no_wait:
            return EXIT_OK
        prog = wait(gql, backfill_id, every_s=args.poll, timeout_s=args.timeout, echo=echo)
    except BackfillError as exc:
        print(f"ticklake backfill: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if prog.succeeded:
        echo(f"backfill {backfill_id} succeeded: {_n(sum(prog.runs.values()), 'run')}")
        return EXIT_OK
    bad = {a: c for a, c in prog.assets.items() if c["failed"] or c["materialized"] != c["targeted"]}
    print(
        f"ticklake backfill: backfill {backfill_id} ended {prog.status}"
        + (f": {prog.error}" if prog.error else "")
        + f"; runs {dict(prog.runs)}; incomplete assets {bad}",
        file=sys.stderr,
    )
    for run_id in prog.failed_runs[:10]:
        try:
            reasons = failure_reasons(gql, run_id)
        except BackfillError as exc:
            reasons = [f"(could not read its events: {exc})"]
        print(f"  failed run {run_id} ({url}/runs/{run_id}):", file=sys.stderr)
        for r in reasons:
            print(f"    {r}", file=sys.stderr)
    return EXIT_FAILED


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.local.cli import command, timeout_option

    p = command(sub, "backfill", cmd_backfill)
    p.add_argument("start", metavar="START", help="first hour, UTC (2024-08-08T23:00)")
    p.add_argument("end", metavar="END", help="end hour, UTC, exclusive")
    p.add_argument(
        "--select",
        action="append",
        metavar="ASSETS",
        help="asset keys or globs, comma-separated or repeated (default: every hourly asset, the "
        "lake hours and their whole chain up to charts; e.g. lake/trades,clickhouse/* narrows it); "
        "only hourly-partitioned assets",
    )
    p.add_argument("--url", help="Dagster webserver URL (default: the one `ticklake up` started)")
    p.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help="progress poll interval")
    timeout_option(p, None, "give up waiting after this long (the backfill keeps running)")
    p.add_argument("--no-wait", action="store_true", help="launch and return")

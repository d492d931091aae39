"""`ticklake up|status|down` end to end: the real console script, broker, Dagster webserver
and daemon, checked through their own protocols; and that nothing outlives `down`.

The leftover check does not trust the code under test: it scans every process on the
machine for this test's TICKLAKE_HOME in its environment (all services and their
children inherit it), so a stray code server or run worker would be found too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from pipelines.local.cli import build_parser
from runtime.home import resolve_home
from streaming.kafka.broker import port_in_use
from tests.support.stack import (
    TICKLAKE,
    UI,
    UI_PORT,
    ends_the_shared_stack,
    processes_of,
    require_ui_port_free,
    ticklake,
)

REQUIRED_STATUS_KEYS = {
    "home",
    "kafka_bootstrap",
    "dagster_url",
    "catalog_name",
    "catalog_uri",
    "warehouse",
    "clickhouse_dsn",
    "artifacts",
    "services",
}


# --------------------------------------------------------------------------- helpers


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def graphql(query: str) -> dict:
    req = urllib.request.Request(
        f"{UI}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


def assert_nothing_left(home: Path, broker_port: int | None = None) -> None:
    left = processes_of(home)
    assert left == {}, f"processes left behind: {left}"
    assert not port_in_use("127.0.0.1", UI_PORT)
    if broker_port is not None:
        assert not port_in_use("127.0.0.1", broker_port)


# --------------------------------------------------------------------------- fast checks


def test_home_layout_and_derived_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TICKLAKE_HOME", raising=False)
    home = resolve_home()
    assert home.root == tmp_path.resolve() / ".ticklake"
    monkeypatch.setenv("TICKLAKE_HOME", "rel/home")
    home = resolve_home().ensure()
    root = tmp_path.resolve() / "rel" / "home"
    assert home.root == root
    assert home.catalog_uri == f"sqlite:///{root}/catalog.db"
    assert home.warehouse == f"file://{root}/warehouse"
    assert home.clickhouse_dsn is None  # no local ClickHouse server started for it
    assert home.catalog_name == "ticklake"
    for sub in ("warehouse", "clickhouse", "dagster", "artifacts", "run"):
        assert (root / sub).is_dir(), sub
    with pytest.raises(ValueError, match="must not contain"):
        resolve_home(tmp_path / "a?b")


def test_cli_help_and_subcommands():
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert {"up", "down", "status"} <= names
    args = parser.parse_args(["up", "--foreground", "--port", "3111", "--replay", "x"])
    assert (args.foreground, args.dagster_port, str(args.replay)) == (True, 3111, "x")
    assert parser.parse_args(["status", "--json"]).json is True
    out = subprocess.run([str(TICKLAKE), "up", "--help"], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0 and "--foreground" in out.stdout and "--replay" in out.stdout


def test_down_without_a_stack_says_so(ticklake_home):
    res = ticklake(ticklake_home.root, "down")
    assert res.returncode == 0
    assert "nothing to stop" in res.stdout
    status = ticklake(ticklake_home.root, "status", "--json")
    assert status.returncode == 3
    info = json.loads(status.stdout)
    assert REQUIRED_STATUS_KEYS <= info.keys()
    assert {s["state"] for s in info["services"].values()} == {"stopped"}


# --------------------------------------------------------------------------- full stack


@pytest.mark.stack
def test_up_status_and_refused_second_up(shared_stack):
    """On the session's shared `ticklake up --no-services` (tests/support/stack.py; it runs before
    the UI tests use it): tests/test_platform_acceptance.py runs `up` with the services on."""
    home, up = shared_stack.home.root, shared_stack.up
    assert f"UI: {UI}" in up.stdout
    assert "left off (--no-services)" in up.stdout

    # The UI serves, and the code location loaded without error (not just HTTP 200).
    with urllib.request.urlopen(UI, timeout=30) as resp:
        assert resp.status == 200
    ws = graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
        name loadStatus locationOrLoadError { __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message } } } } } }""")["workspaceOrError"]
    assert ws["__typename"] == "Workspace"
    [entry] = ws["locationEntries"]
    assert entry["loadStatus"] == "LOADED"
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    assert entry["locationOrLoadError"]["repositories"]
    daemons = graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
    required = [d for d in daemons["instance"]["daemonHealth"]["allDaemonStatuses"] if d["required"]]
    assert required and all(d["healthy"] for d in required), required

    st = ticklake(home, "status", "--json")
    assert st.returncode == 0, st.stdout + st.stderr
    info = json.loads(st.stdout)
    assert REQUIRED_STATUS_KEYS <= info.keys()
    assert info["home"] == str(home)
    assert info["dagster_url"] == UI
    assert info["catalog_uri"] == f"sqlite:///{home}/catalog.db"
    assert info["warehouse"] == f"file://{home}/warehouse"
    assert info["clickhouse_dsn"].startswith("http://127.0.0.1:")
    # A user's own client, in a process of its own, queries ClickHouse while the stack runs.
    script = (
        "import sys, clickhouse_connect; "
        "print(clickhouse_connect.get_client(dsn=sys.argv[1]).query('SELECT 40 + 2').result_rows[0][0])"
    )
    user = subprocess.run(
        [sys.executable, "-c", script, info["clickhouse_dsn"]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert user.stdout.strip() == "42", user.stderr
    assert info["artifacts"] == str(home / "artifacts")
    assert {"broker", "clickhouse", "dagster-webserver", "dagster-daemon"} <= set(info["services"])
    for name, svc in info["services"].items():
        assert svc["state"] == "running" and svc["healthy"], (name, svc)
        assert Path(svc["log"]).parent == home / "run"
    # Status lists every supervisor sensor and schedule (left off here) and no service run.
    report = info["dagster_services"]
    kinds = {(i["kind"], i["name"]): i["status"] for i in report["instigators"]}
    assert ("sensor", "collector_supervisor") in kinds and ("schedule", "lake_hourly_seal") in kinds
    assert set(kinds.values()) == {"STOPPED"}, kinds
    assert report["runs"] == []
    # Live collection by default: `up` wrote the shipped collectors.yaml; status has a line
    # per shard (not running: services are off here; tests/test_collector_status.py has
    # connected and unreachable shards).
    assert (home / "collectors.yaml").is_file() and "the default: BTC, ETH" in up.stdout
    shards = info["collectors"]["shards"]
    assert len(shards) == 6 and {s["state"] for s in shards} == {"not running"}, shards
    text = ticklake(home, "status").stdout
    assert "binance-spot" in text and "okx-swap" in text and "NOT RUNNING" in text

    # The broker status points at answers metadata and holds the topics, sized locally.
    bootstrap = info["kafka_bootstrap"]
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=20).topics
    for name in (
        "raw.spot.trades.binance",
        "processed.perp.orderbook.delta.okx",
        "feature.future.signals.bybit",
        "dlq.collector",
        "pragma-prices-v1",
    ):
        assert len(topics[name].partitions) == 3, name

    # The catalog and namespace exist in the SQLite file named by status.
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(info["catalog_name"], uri=info["catalog_uri"], warehouse=info["warehouse"])
    assert ("market",) in catalog.list_namespaces()
    assert (home / "dagster" / "dagster.yaml").is_file()

    # A second `up` refuses and changes nothing.
    again = ticklake(home, "up")
    assert again.returncode == 1
    assert "already running" in again.stderr
    pids = {k: v["pid"] for k, v in info["services"].items()}
    info2 = json.loads(ticklake(home, "status", "--json").stdout)
    assert {k: v["pid"] for k, v in info2["services"].items()} == pids

    # Services plus their children (code servers) carry the home in their environment.
    running = processes_of(home)
    assert set(pids.values()) <= set(running), running
    assert len(running) > len(pids)  # the code servers of webserver and daemon


@pytest.mark.stack
@ends_the_shared_stack
def test_dead_services_are_reported_and_down_leaves_nothing(shared_stack):
    """Kills services of the shared stack and stops it, so it runs after its other users
    (tests/support/stack.py orders them): one whole-stack start less in CI."""
    home = shared_stack.home.root
    info = json.loads(ticklake(home, "status", "--json").stdout)
    pids = {k: v["pid"] for k, v in info["services"].items()}
    broker_port = int(info["kafka_bootstrap"].rsplit(":", 1)[1])
    clickhouse_port = int(info["clickhouse_dsn"].rsplit(":", 1)[1])
    # A dead service is reported and blocks `up` until `down` (on this same stack: one
    # start less in CI). A process of this stack that no service owns any more (what a
    # kill -9'd parent leaves behind) carries the stack's id: status reports it, down stops it.
    assert info["orphans"] == []
    stack_id = json.loads((home / "run" / "stack.json").read_text())["stack_id"]
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, "TICKLAKE_STACK_ID": stack_id},
        start_new_session=True,
    )
    os.kill(pids["broker"], signal.SIGKILL)
    os.kill(pids["dagster-daemon"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while port_in_use("127.0.0.1", broker_port):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    st = ticklake(home, "status", "--json")
    assert st.returncode == 1
    dead = json.loads(st.stdout)
    assert dead["status"] == "degraded"
    assert dead["services"]["broker"]["state"] == "dead"
    assert dead["services"]["dagster-daemon"]["state"] == "dead"
    assert dead["services"]["dagster-webserver"]["state"] == "running"
    assert orphan.pid in dead["orphans"]
    again = ticklake(home, "up")
    assert again.returncode == 1
    assert "partly running" in again.stderr and "ticklake down" in again.stderr
    down = shared_stack.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert "broker             not running" in down.stdout
    assert "orphans" in down.stdout
    assert orphan.wait(timeout=30) is not None  # stopped by down (reaped here: it is this test's child)
    assert_nothing_left(home, broker_port)
    assert not port_in_use("127.0.0.1", clickhouse_port)
    assert not (home / "run" / "stack.json").exists() and not (home / "run" / "clickhouse.json").exists()
    after = ticklake(home, "status", "--json")
    assert after.returncode == 3
    assert {s["state"] for s in json.loads(after.stdout)["services"].values()} == {"stopped"}


@pytest.mark.stack
def test_up_with_a_broken_code_location_fails_with_its_error_and_stops_everything(ticklake_home, tmp_path):
    home = ticklake_home.root
    require_ui_port_free()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "defs.py").write_text('raise RuntimeError("deliberately broken definitions")\n')
    (bad / "workspace.yaml").write_text(
        "load_from:\n  - python_file:\n      relative_path: defs.py\n      location_name: broken\n"
    )
    up = ticklake(home, "up", "--workspace", str(bad / "workspace.yaml"))
    if up.returncode == 0:  # never leave a stack behind, even when the assertion fails
        ticklake(home, "down")
    assert up.returncode == 1, up.stdout + up.stderr
    assert "failed to load" in up.stderr
    assert "deliberately broken definitions" in up.stderr
    assert_nothing_left(home)
    assert not (home / "run" / "stack.json").exists()


@pytest.mark.stack
def test_foreground_stops_everything_on_ctrl_c(ticklake_home, tmp_path):
    home = ticklake_home.root
    require_ui_port_free()
    out = tmp_path / "foreground.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen(
            [str(TICKLAKE), "up", "--foreground", "--no-services"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TICKLAKE_HOME": str(home)},
        )
    try:
        deadline = time.monotonic() + 400
        while "Ctrl-C stops everything" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        info = json.loads(ticklake(home, "status", "--json").stdout)
        assert all(s["state"] == "running" for s in info["services"].values()), info
        broker_port = int(info["kafka_bootstrap"].rsplit(":", 1)[1])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            ticklake(home, "down")
    text = out.read_text()
    assert "stopping (SIGINT)" in text
    assert_nothing_left(home, broker_port)


LONG_RUN_DEFS = """
import time
import dagster as dg

@dg.asset
def sleepy():
    time.sleep(600)

defs = dg.Definitions(assets=[sleepy])
"""


def launch_asset_run(asset: str) -> str:
    query = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {
        "selector": {
            "repositoryLocationName": "ticklake",
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [asset]}],
        },
        "runConfigData": {},
    }
    req = urllib.request.Request(
        f"{UI}/graphql",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"query": query, "variables": {"p": params}}).encode(),
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        result = json.loads(resp.read())["data"]["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def run_status(run_id: str) -> str:
    return graphql(f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')["runOrError"]["status"]


@pytest.mark.stack
def test_down_stops_runs_in_progress_and_marks_them_canceled(ticklake_home, tmp_path, monkeypatch):
    home = ticklake_home.root
    require_ui_port_free()
    code = tmp_path / "code"
    code.mkdir()
    (code / "defs.py").write_text(LONG_RUN_DEFS)
    (code / "workspace.yaml").write_text(
        "load_from:\n  - python_file:\n      relative_path: defs.py\n      location_name: ticklake\n"
    )
    up = ticklake(home, "up", "--workspace", str(code / "workspace.yaml"))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        # The queued run is dequeued by the daemon and started: proof the daemon works.
        run_id = launch_asset_run("sleepy")
        deadline = time.monotonic() + 240
        while run_status(run_id) != "STARTED":
            assert time.monotonic() < deadline, run_status(run_id)
            time.sleep(0.5)
        before = len(processes_of(home))
    finally:
        down = ticklake(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert before > 5  # broker, webserver, daemon, two code servers, and the run worker
    assert_nothing_left(home)

    from dagster import DagsterInstance, DagsterRunStatus

    # `down` marks the run CANCELING before it stops the run worker, which then records its
    # run canceled on SIGTERM (a stop asked for, not a failure); a run whose worker could not
    # record it is closed out by `down` as well (test_orphaned_runs_are_marked_failed).
    assert "1 run(s) in progress canceled" in down.stdout, down.stdout
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.CANCELED


def test_orphaned_runs_are_marked_failed_and_release_their_slots(ticklake_home, monkeypatch):
    """A run whose worker died with the stack (SIGKILL, reboot) must not stay STARTED: it
    would hold its `ticklake/service` tag slot and block that service forever."""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from pipelines.local.stack import fail_orphaned_runs, repo_root

    home = ticklake_home
    shutil.copyfile(repo_root() / "dagster.yaml", home.dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    with DagsterInstance.from_config(str(home.dagster_home)) as instance:
        started = instance.add_run(
            DagsterRun(
                job_name="collector",
                run_id="a" * 32,
                status=DagsterRunStatus.STARTED,
                tags={"ticklake/service": "collector-0"},
            )
        )
        done = instance.add_run(DagsterRun(job_name="hourly", run_id="b" * 32, status=DagsterRunStatus.SUCCESS))
        instance.event_log_storage.set_concurrency_slots("test_pool", 1)
        claim = instance.event_log_storage.claim_concurrency_slot("test_pool", started.run_id, "load")
        assert claim.is_claimed

    assert fail_orphaned_runs(home, "test") == [started.run_id]

    with DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert instance.get_run_by_id(started.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(done.run_id).status == DagsterRunStatus.SUCCESS
        info = instance.event_log_storage.get_concurrency_info("test_pool")
        assert info.claimed_slots == []
    assert fail_orphaned_runs(home, "test") == []

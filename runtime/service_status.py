"""Where a running service says it is, and how `ticklake status` judges it healthy.

Every long-running service (collector shard, normalizer, feature processor, lake sink,
ClickHouse live, pragma publisher) runs inside `service_run(...)`, under Dagster and
standalone alike. It

* serves Prometheus metrics on an ephemeral port (`TICKLAKE_METRICS_PORT` fixes one, e.g. in
  a pod) — one HTTP server thread per process, nothing polled;
* writes <home>/run/services/<service>.json (pid, port, run id, start count, last error),
  which `ticklake status` reads; and <home>/run/prometheus/targets/<service>.json, a
  Prometheus file_sd target group, so a local Prometheus (`ticklake up --observe`) finds
  every service without a static port plan;
* sets up the JSON log format with the service, shard and run id fields (runtime/logs.py)
  and remembers the last ERROR line as the service's last error.

The judging side (`service_health`) scrapes each recorded endpoint once: lag, the age of the
last record, restarts and last error come from what the service itself exports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtime import metrics as m
from runtime.logs import configure_json_logging, set_context

HOME_ENV = "TICKLAKE_HOME"
METRICS_PORT_ENV = "TICKLAKE_METRICS_PORT"
METRICS_ADDR_ENV = "TICKLAKE_METRICS_ADDR"
SERVICES_SUBDIR = Path("run") / "services"
TARGETS_SUBDIR = Path("run") / "prometheus" / "targets"
#: A service with records waiting that consumed nothing for this long is stuck.
STUCK_AFTER_S = 180.0
#: How long `ticklake status` waits for one service's /metrics.
SCRAPE_TIMEOUT_S = 15.0

_server_lock = threading.Lock()
_server_port: int | None = None


def _home(home: str | Path | None) -> Path:
    return Path(home if home is not None else (os.environ.get(HOME_ENV) or ".ticklake"))


def file_stem(service: str) -> str:
    return service.replace(":", "-").replace("/", "-")


def services_dir(home: str | Path | None = None) -> Path:
    return _home(home) / SERVICES_SUBDIR


def targets_dir(home: str | Path | None = None) -> Path:
    return _home(home) / TARGETS_SUBDIR


def start_metrics_server(port: int | None = None, addr: str | None = None) -> int:
    """Serve the default registry over HTTP (once per process); returns the bound port.
    Port 0 (the default) lets the OS pick a free one, so services never collide."""
    global _server_port
    from prometheus_client import start_http_server

    with _server_lock:
        if _server_port is None:
            if port is None:
                port = int(os.environ.get(METRICS_PORT_ENV) or 0)
            addr = addr or os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
            server, _thread = start_http_server(port, addr)
            _server_port = int(server.server_port)
        return _server_port


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class ServiceHandle:
    """A running service's record; `error()` stores a last error (also done by ERROR logs)."""

    service: str
    shard: str
    run_id: str
    home: Path
    port: int
    record: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _written_at: float = 0.0
    _pending: threading.Timer | None = None

    @property
    def path(self) -> Path:
        return services_dir(self.home) / f"{file_stem(self.service)}.json"

    @property
    def target_path(self) -> Path:
        return targets_dir(self.home) / f"{file_stem(self.service)}.json"

    def write(self) -> None:
        with self._lock:
            self._written_at = time.monotonic()
            _write_json(self.path, self.record)

    def error(self, message: str, *, force: bool = False) -> None:
        """Record the last error; rewrites the file at most once a second (an error storm
        must not become a disk-write storm) unless forced."""
        self.record["last_error"] = message[:500]
        self.record["last_error_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if force or time.monotonic() - self._written_at >= 1.0:
            self.write()
        elif self._pending is None:
            # Written once the second is over (one timer, not a poll).
            self._pending = threading.Timer(1.0, self._flush)
            self._pending.daemon = True
            self._pending.start()

    def _flush(self) -> None:
        self._pending = None
        self.write()


class _ErrorRecorder(logging.Handler):
    def __init__(self, handle: ServiceHandle) -> None:
        super().__init__(logging.ERROR)
        self.service = handle  # not `handle`: Handler.handle is the method logging calls

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.service.error(record.getMessage())


@contextlib.contextmanager
def service_run(
    service: str,
    *,
    shard: str = "",
    run_id: str = "",
    home: str | Path | None = None,
    port: int | None = None,
    log_json: bool = True,
) -> Iterator[ServiceHandle]:
    """Run a service's body with metrics served and its status/target files written."""
    home_path = _home(home)
    bound = start_metrics_server(port)
    if log_json:
        configure_json_logging()
    set_context(service=service, shard=shard or None, run_id=run_id or None)
    handle = ServiceHandle(service, shard, run_id, home_path, bound)
    previous = read_json(handle.path) or {}
    now = time.time()
    handle.record = {
        "service": service,
        "shard": shard,
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "port": bound,
        "started_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "starts": int(previous.get("starts", 0)) + 1,
        "state": "running",
        "last_error": previous.get("last_error"),
        "last_error_at": previous.get("last_error_at"),
    }
    handle.write()
    addr = os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
    _write_json(
        handle.target_path,
        [
            {
                "targets": [f"{'127.0.0.1' if addr == '0.0.0.0' else addr}:{bound}"],
                "labels": {"service": service, "shard": shard},
            }
        ],
    )
    m.SERVICE_START_TIME.labels(service, shard).set(now)
    recorder = _ErrorRecorder(handle)
    root = logging.getLogger()
    root.addHandler(recorder)
    try:
        yield handle
    except BaseException as exc:
        handle.record["state"] = "failed"
        if not isinstance(exc, KeyboardInterrupt):  # a Dagster termination is a stop, not an error
            handle.error(f"{type(exc).__name__}: {exc}", force=True)
        else:
            handle.record["state"] = "stopped"
        handle.write()
        raise
    else:
        handle.record["state"] = "stopped"
        handle.write()
    finally:
        root.removeHandler(recorder)
        handle.target_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the judging side


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2] != "Z"
    except OSError:
        return True


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> dict[str, list[tuple[dict, float]]]:
    """The samples of one /metrics page: name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def judge(
    record: dict[str, Any],
    samples: dict[str, list[tuple[dict, float]]] | None,
    *,
    scrape_error: str = "",
    alive: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """One service's health line from its record and a scrape of its metrics (pure)."""
    now = time.time() if now is None else now
    service = record.get("service", "?")
    out: dict[str, Any] = {
        "service": service,
        "shard": record.get("shard", ""),
        "run_id": record.get("run_id", ""),
        "pid": record.get("pid"),
        "metrics_port": record.get("port"),
        "state": record.get("state", "unknown"),
        "restarts": max(0, int(record.get("starts", 1)) - 1),
        "last_error": record.get("last_error"),
        "last_error_at": record.get("last_error_at"),
        "lag": None,
        "last_record_age_s": None,
        "healthy": True,
        "problem": "",
    }
    if out["state"] == "stopped":
        return out
    if out["state"] == "failed" or not alive:
        out.update(
            state="dead" if out["state"] == "running" else out["state"],
            healthy=False,
            problem=f"process gone ({record.get('last_error') or 'no error recorded'})",
        )
        return out
    if samples is None:
        out.update(healthy=False, problem=f"metrics endpoint not answering: {scrape_error}")
        return out
    lags = [v for _labels, v in samples.get(m.CONSUMER_LAG_NAME, [])]
    out["lag"] = int(sum(lags)) if lags else None
    # One record per partition may be a transaction marker the position never passes (the
    # upstream producers are transactional): only more than that counts as waiting input.
    waiting = int(sum(v for v in lags if v > 1))
    # One service per process: every sample of the scrape is this service's.
    last = [v for _labels, v in samples.get(m.LAST_RECORD._name, []) if v > 0]
    started = [v for labels, v in samples.get(m.SERVICE_START_TIME._name, []) if labels.get("service") == service]
    if last:
        out["last_record_age_s"] = round(now - max(last), 1)
    # A service that waits for something before it consumes (inference for its first model)
    # has been able to consume only since then: a backlog found the moment a model is
    # served is not a stall.
    ready = [v for _labels, v in samples.get(m.INPUT_READY._name, []) if v > 0]
    since_ready = now - max(ready) if ready else None
    since = (
        out["last_record_age_s"] if out["last_record_age_s"] is not None else (now - started[0] if started else None)
    )
    if since is not None and since_ready is not None:
        since = min(since, since_ready)
    if waiting and since is not None and since > STUCK_AFTER_S:
        out.update(healthy=False, problem=f"stuck: {out['lag']} records behind and nothing consumed for {since:.0f}s")
    return out


def service_health(home: str | Path | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Every recorded service of this home, probed (scraped in parallel: a service busy at
    full speed on a loaded machine may take seconds to answer)."""
    from concurrent.futures import ThreadPoolExecutor

    records = [r for r in (read_json(p) for p in sorted(services_dir(home).glob("*.json"))) if isinstance(r, dict)]

    def probe(record: dict[str, Any]) -> dict[str, Any]:
        alive = _alive(record.get("pid"))
        samples, err = None, ""
        if alive and record.get("state") == "running" and record.get("port"):
            try:
                samples = scrape(int(record["port"]), timeout=SCRAPE_TIMEOUT_S)
            except OSError as exc:
                err = f"{type(exc).__name__}: {exc}"
        return judge(record, samples, scrape_error=err, alive=alive, now=now)

    if not records:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(records))) as pool:
        return list(pool.map(probe, records))


def clear(home: str | Path | None = None) -> None:
    """Forget the records of a previous stack (`ticklake up` calls it before starting)."""
    for d in (services_dir(home), targets_dir(home)):
        for p in d.glob("*.json"):
            p.unlink(missing_ok=True)

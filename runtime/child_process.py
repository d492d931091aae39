"""The lifecycle of a server this process starts as a child in its own process group.

The embedded broker (streaming/kafka/broker.py) and the local ClickHouse server
(streaming/clickhouse/server.py) each start one child with `start_new_session=True` and
must stop it the same way: SIGTERM to the whole group (the child may have children of its
own), SIGKILL when it does not exit in time, and always reap it so no zombie or "still
running" warning is left. Detaching hands the still running child over to someone else
(the stack's state file) without stopping it. One definition, so the two cannot drift.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Self, TypeVar

#: Exec shim: ask the kernel to SIGTERM the child when its parent dies (PR_SET_PDEATHSIG
#: survives exec), so a test run killed with SIGKILL leaves no server behind. Done in a
#: shim rather than a preexec_fn, which is unsafe with the Kafka client's threads alive.
#: The PID stays the same across exec. No-op where prctl does not exist.
DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent exited before the server started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_this_process(cmd: list[str]) -> list[str]:
    """`cmd` started through the DIE_WITH_PARENT shim: it gets SIGTERM when this process dies."""
    return [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *cmd]


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid`; to the process alone where the group
    cannot be signalled (PermissionError), and nothing when it is already gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Terminate `proc`'s process group (SIGKILL after `timeout` seconds) and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    else:
        proc.wait()


T = TypeVar("T")


class ChildServer:
    """Base of a handle on one child server process: the subclass's `start()` prepares and
    calls `_spawn`, then waits for readiness; `stop()` ends the group; usable as a context
    manager. It listens on `host`:`port` and must be ready within `startup_timeout` seconds;
    `extra_env` is added to the child's environment; with `die_with_parent` the child
    dies with this process, even on SIGKILL (DIE_WITH_PARENT)."""

    #: What detach() says and raises when nothing was started (a subclass's own error type).
    kind: str = "server"
    not_started: type[Exception] = RuntimeError
    #: How long stop() waits for SIGTERM before SIGKILL, and then for the kill.
    stop_timeout: float = 10.0

    def __init__(
        self,
        *,
        host: str,
        port: int | None,
        startup_timeout: float,
        env: Mapping[str, str] | None,
        die_with_parent: bool,
    ) -> None:
        self.host, self.port = host, port
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env or {})
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def _spawn(self, log_path: Path, env: Mapping[str, str]) -> None:
        """Start `command()` with its output appended to `log_path`, in its own session: a
        Ctrl-C in the caller's terminal must not kill it behind the owner's back; the owner
        stops it explicitly."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        if self.die_with_parent:
            cmd = dying_with_this_process(cmd)
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        proc, self._proc = self._proc, None
        stop_group(proc, self.stop_timeout if timeout is None else timeout)

    def started(self, value: T | None) -> T:
        """`value`, something the start sets (the process, a chosen port, the server's URL);
        the subclass's not-started error while it is None."""
        if value is None:
            raise self.not_started(f"{self.kind} not started")
        return value

    def detach(self) -> int:
        """Forget the process without stopping it (it keeps running); returns its PID."""
        pid = self.started(self._proc).pid
        # Popen would otherwise warn ("still running") when collected.
        self._proc.returncode = 0
        self._proc = None
        return pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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
from typing import Self


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


class ChildServer:
    """Base of a handle on one child server process: `start()` (the subclass's) sets
    `self._proc`; `stop()` ends the group; usable as a context manager."""

    #: What detach() says and raises when nothing was started (a subclass's own error type).
    kind: str = "server"
    not_started: type[Exception] = RuntimeError
    #: How long stop() waits for SIGTERM before SIGKILL, and then for the kill.
    stop_timeout: float = 10.0

    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        proc, self._proc = self._proc, None
        stop_group(proc, self.stop_timeout if timeout is None else timeout)

    def detach(self) -> int:
        """Forget the process without stopping it (it keeps running); returns its PID."""
        if self._proc is None:
            raise self.not_started(f"{self.kind} not started")
        pid = self._proc.pid
        # Popen would otherwise warn ("still running") when collected.
        self._proc.returncode = 0
        self._proc = None
        return pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

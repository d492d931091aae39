"""Find, identify and stop background processes by PID (Linux /proc, POSIX signals).

`ticklake down` runs in a different process from the `ticklake up` that started the
services, so it only has PIDs. A PID alone is unsafe (it may have been reused), hence
every record carries the process start time; and a service's children (Dagster code
servers, run workers) must go too, hence the process-tree walk before signalling.
Zombies count as gone: they hold no resources and are reaped by whoever adopted them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """Running (not a zombie)."""
    if pid <= 0:
        return False
    if PROC.is_dir():
        fields = _stat_fields(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (stat field 22): with the PID, a unique identity."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid`, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if entry.name.isdigit():
            ppid = parent_of(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = list(children.get(pid, ()))
    while stack:
        child = stack.pop()
        if is_alive(child):
            out.append(child)
        stack.extend(children.get(child, ()))
    return out


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (other than this one) started with `name=value` in their environment.

    Finds what a process tree walk cannot: children orphaned when their parent died."""
    marker = f"{name}={value}".encode()
    found = []
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop_pids(pids: list[int], timeout: float = 20.0) -> list[int]:
    """SIGTERM `pids`, SIGKILL the survivors after `timeout`; returns PIDs still alive."""
    _signal(pids, (), signal.SIGTERM)
    if _wait_gone(pids, timeout):
        return []
    _signal([p for p in pids if is_alive(p)], (), signal.SIGKILL)
    _wait_gone(pids, 5.0)
    return [p for p in pids if is_alive(p)]


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """What `up` writes down about a service so that `down`/`status` can find it later."""

    name: str
    pid: int
    start_time: int | None
    log: str
    command: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, pid: int, log: str | os.PathLike[str], command: Iterable[str] = ()) -> ProcessRecord:
        return cls(name, pid, start_time(pid), str(log), tuple(command))

    def is_running(self) -> bool:
        """Alive and still the same process (the PID was not reused)."""
        if not is_alive(self.pid):
            return False
        return self.start_time is None or start_time(self.pid) == self.start_time

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ProcessRecord:
        return cls(
            data["name"], int(data["pid"]), data.get("start_time"), data.get("log", ""), tuple(data.get("command", ()))
        )


def _reap(pid: int) -> None:
    """Collect the exit status when `pid` is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(pids: Iterable[int], groups: Iterable[int], sig: signal.Signals) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(record: ProcessRecord, timeout: float = 20.0) -> list[int]:
    """SIGTERM the service, its process group and every descendant; SIGKILL what is left
    after `timeout`. Returns PIDs still alive afterwards (empty on success)."""
    if not record.is_running():
        _reap(record.pid)
        return []
    tree = [record.pid, *descendants(record.pid)]
    groups = set()
    for pid in tree:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    # Never signal our own process group (possible if a service was started without a
    # session of its own).
    groups.discard(os.getpgrp())
    _signal(tree, groups, signal.SIGTERM)
    if _wait_gone(tree, timeout):
        return []
    _signal([p for p in tree if is_alive(p)], groups, signal.SIGKILL)
    _wait_gone(tree, 5.0)
    return [p for p in tree if is_alive(p)]


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            _reap(pid)
        if not any(is_alive(p) for p in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)

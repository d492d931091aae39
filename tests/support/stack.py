"""Driving `ticklake` as a user does, and the one `ticklake up --no-services` stack that the
stack tests needing nothing but a running stack share.

A whole-stack start (broker, ClickHouse, Dagster webserver + daemon and their code servers)
is among the most expensive things the suite does; the UI tests and the status checks of
tests/test_stack.py only need one running, in a fresh home, with the platform's services
off. So the `shared_stack` fixture (tests/conftest.py) starts it once per session, on the
default UI port, and `order_shared_stack_users` runs its users last and together: the tests
needing port 3000 free for a stack of their own run before it starts, and the test that
kills its services and stops it (`ends_the_shared_stack`) runs after every other user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.home import TicklakeHome, resolve_home
from streaming.kafka.broker import port_in_use

TICKLAKE = Path(sys.executable).parent / "ticklake"
UI_PORT = 3000
UI = f"http://127.0.0.1:{UI_PORT}"
SHARED_STACK_FIXTURE = "shared_stack"


def ticklake(home: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """The console script with TICKLAKE_HOME=<home>, run from the home's parent directory."""
    env = {**os.environ, "TICKLAKE_HOME": str(home)}
    return subprocess.run(
        [str(TICKLAKE), *args], env=env, capture_output=True, text=True, check=False, timeout=timeout, cwd=home.parent
    )


def processes_of(home: Path) -> dict[int, str]:
    """Live processes whose environment carries TICKLAKE_HOME=<home> (zombies excluded:
    their environment is gone, and they hold no resources)."""
    marker = f"TICKLAKE_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found[int(entry.name)] = cmd[:200]
    return found


def require_ui_port_free() -> None:
    assert not port_in_use("127.0.0.1", UI_PORT), (
        f"port {UI_PORT} is taken (another `ticklake up` or Dagster UI?); these tests need it"
    )


@dataclass
class SharedStack:
    """A running `ticklake up --no-services` (default port) in a home of its own."""

    home: TicklakeHome
    up: subprocess.CompletedProcess[str]
    url: str = UI
    stopped: bool = False

    def down(self) -> subprocess.CompletedProcess[str]:
        """`ticklake down`; the stack counts as stopped whatever it answers (not stopped twice)."""
        self.stopped = True
        return ticklake(self.home.root, "down")


def start_shared_stack(root: Path) -> SharedStack:
    require_ui_port_free()
    home = resolve_home(root / "ticklake-home").ensure()
    up = ticklake(home.root, "up", "--no-services")
    stack = SharedStack(home, up)
    if up.returncode != 0:
        stack.down()  # never leave a half-started stack behind
        raise AssertionError(up.stdout + up.stderr)
    return stack


def stop_shared_stack(stack: SharedStack) -> None:
    """At the end of the session, unless a test stopped it: down succeeds and leaves nothing."""
    if stack.stopped:
        return
    down = stack.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_of(stack.home.root) == {}


def ends_the_shared_stack(test: Callable) -> Callable:
    """Marks the test that stops the shared stack: it runs after every other user."""
    test.ends_shared_stack = True
    return test


def order_shared_stack_users(items: list[pytest.Item]) -> None:
    """The shared stack's users move to the end of the run (collection order kept among them),
    the one that ends it last of all."""
    users = [i for i in items if SHARED_STACK_FIXTURE in getattr(i, "fixturenames", ())]
    if not users:
        return
    ending = [i for i in users if getattr(getattr(i, "function", None), "ends_shared_stack", False)]
    moved = {id(i) for i in users}
    items[:] = [i for i in items if id(i) not in moved] + [i for i in users if i not in ending] + ending

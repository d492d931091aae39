"""Fixtures shared by the whole suite: real services only, started once where possible."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from runtime.home import HOME_ENV, TicklakeHome, resolve_home
from streaming.clickhouse.server import LocalClickHouse
from streaming.kafka.broker import EmbeddedBroker
from tests.support.stack import SharedStack, order_shared_stack_users, start_shared_stack, stop_shared_stack

if TYPE_CHECKING:
    from resources.spark import SparkResource

#: Fixtures that start a real component, and the marker (pyproject.toml) every test using
#: them carries, so `-m "not broker"` and the fast set in README.md select by what a test
#: starts, not by file. Modules that start a component themselves set `pytestmark`.
COMPONENT_FIXTURES = {
    "kafka_broker": "broker",
    "broker": "broker",
    "secured_broker": "broker",
    "clickhouse_server": "chdb",
    "spark": "spark",
    "spark_resource": "spark",
    "shared_stack": "stack",
}


#: Markers of the tests that start a whole `ticklake up` stack or drive its UI. Under the README's
#: `pytest -n 2 --dist loadgroup --no-loadscope-reorder` they run one after another on one worker,
#: in collection order: several need the default UI port free or share the one stack started for
#: them (the `shared_stack` fixture), and two stacks starting at once on two cores would each time
#: the other's waits. The other worker starts with the tests that pin a group of their own (the
#: acceptance replay, which spends most of its run waiting for the stack's sensors and
#: schedules). Every other module is one unit that goes whole to whichever worker is free: its
#: module-scoped fixtures (a lake, a ClickHouse database, a Spark world) are built once, and its
#: tests run in file order, as in a serial run (some build on what an earlier test of their module
#: loaded). Each worker starts the session fixtures it needs (broker, ClickHouse, Spark).
SERIAL_MARKERS = ("stack", "browser")
SERIAL_GROUP = "serial"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in COMPONENT_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(COMPONENT_FIXTURES[fixture])
    order_shared_stack_users(items)
    pinned, serial, rest = [], [], []
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            pinned.append(item)
        elif any(map(item.get_closest_marker, SERIAL_MARKERS)):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
            serial.append(item)
        else:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
            rest.append(item)
    # Handed out in this order (no reordering by size): the pinned tests and the serial group
    # first, the longest work, so that they start on both workers at once; order kept within each.
    items[:] = pinned + serial + rest


def pytest_collection_finish(session: pytest.Session) -> None:
    """In an xdist worker of `--dist loadgroup`, every grouped test must carry its group in its
    node id by now (that is how xdist hands the group to its scheduler). When it does not, the
    groups are silently ignored and the component tests run two at a time, failing on each other
    (seen with pytest 9.2, pytest-xdist issue 1386): stop the run with the reason instead."""
    if not getattr(session.config.option, "loadgroup", False):  # set in xdist workers only
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        reason = (
            f"pytest-xdist did not apply the xdist_group of {len(lost)} tests (e.g. {lost[0]}) with pytest "
            f"{pytest.__version__}: install the pytest range pinned in pyproject.toml"
        )
        print(reason, file=sys.stderr, flush=True)  # the worker's error itself reaches the terminal only as a crash
        raise pytest.UsageError(reason)


@pytest.fixture
def broker(tmp_path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own with the project's topics created: for tests that read or
    write the project's fixed topic names (processors, services), which other tests on the
    shared kafka_broker write to as well. A module may override it (tests/test_lake_sink.py
    wants no topics)."""
    from workloads.kafka import create_project_topics

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        create_project_topics(b.bootstrap)
        yield b


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Tansu broker (memory storage) on a free 127.0.0.1 port for the whole session.

    Shared: create topics with unique names (or the project's own, idempotently) rather
    than assuming an empty broker. `.bootstrap` is the host:port to connect to.
    """
    log = tmp_path_factory.mktemp("kafka") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalClickHouse]:
    """The local ClickHouse server (one process owning a chdb engine, ClickHouse's HTTP
    interface on a free 127.0.0.1 port) for the whole session, as `ticklake up` runs it.

    Shared: work in a database of your own. `.dsn` is the http:// DSN for
    ClickHouseResource(dsn=...) or clickhouse_connect.get_client(dsn=...).
    """
    root = tmp_path_factory.mktemp("clickhouse")
    with LocalClickHouse(root / "data", state_file=root / "clickhouse.json", log_path=root / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def spark_resource() -> Iterator[SparkResource]:
    """One local[2] Spark session (one JVM) for the whole session, started on first use and
    stopped at the end: every Spark test module shares it (SparkResource.spark_session is
    getOrCreate), so CI starts the JVM once."""
    from resources.spark import SparkResource  # pyspark only where Spark is used

    # Python workers (applyInArrow) need this interpreter, with pyarrow; read when the JVM starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    res = SparkResource(master="local[2]", shuffle_partitions=2)
    yield res
    if res._session is not None:
        res._session.stop()


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStack]:
    """One `ticklake up --no-services` on the default UI port, for the tests that only need a
    running stack (tests/support/stack.py): started on first use, its users run last."""
    stack = start_shared_stack(tmp_path_factory.mktemp("shared-stack"))
    yield stack
    stop_shared_stack(stack)


@pytest.fixture
def ticklake_home(tmp_path, monkeypatch: pytest.MonkeyPatch) -> TicklakeHome:
    """A fresh $TICKLAKE_HOME (directories created) exported to the environment."""
    home = resolve_home(tmp_path / "ticklake-home").ensure()
    monkeypatch.setenv(HOME_ENV, str(home.root))
    return home


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread during the test, whatever the runner
    inherited: a shell starting pytest as a background job (`cmd &` without job control) makes
    it ignore SIGINT, and Python then installs no KeyboardInterrupt handler, so a test that
    interrupts its own main thread (what a run termination delivers) would wait forever."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

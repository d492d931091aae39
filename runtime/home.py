"""The local state directory ($TICKLAKE_HOME) and every value derived from it.

One place decides where the local catalog, warehouse, ClickHouse data, Dagster home,
artifacts and the stack's pid files live, so the CLI, the Dagster resources and the
tests agree without passing paths around. Plain Python on purpose (no Dagster import):
the CLI and tests use it before any Dagster process exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "TICKLAKE_HOME"
DEFAULT_HOME = ".ticklake"

CATALOG_NAME = "ticklake"

#: Limits of Dagster concurrency pools on the local instance (dagster.yaml cannot name a
#: pool's limit, so `ticklake up` sets them). Empty: local ClickHouse steps need no pool,
#: the one local ClickHouse server (streaming/clickhouse/server.py) serves them all at once.
LOCAL_POOL_LIMITS: dict[str, int] = {}

#: Written by the local ClickHouse server once it serves (url, port, pid, data path).
CLICKHOUSE_STATE_FILE = "clickhouse.json"


class _Under:
    """One path of the layout, below the home's root: the layout is a table of these."""

    __slots__ = ("parts",)

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, home: TicklakeHome | None, owner: type | None = None) -> Path:
        if home is None:
            return self  # type: ignore[return-value]  # the class attribute itself
        return home.root.joinpath(*self.parts)


@dataclass(frozen=True, slots=True)
class TicklakeHome:
    """Layout of one $TICKLAKE_HOME; `root` is always absolute."""

    root: Path

    catalog_db = _Under("catalog.db")
    warehouse_dir = _Under("warehouse")
    clickhouse_dir = _Under("clickhouse")
    #: The local broker's persistent storage (topics, records, offsets): kept across
    #: `ticklake down`/`up` and broker restarts, like the lake.
    broker_dir = _Under("broker")
    dagster_home = _Under("dagster")
    artifacts_dir = _Under("artifacts")
    #: The local MLflow store (SQLite tracking + registry, file artifacts) when no URI is set.
    mlflow_dir = _Under("mlflow")
    #: Pid files, the stack state file and service logs.
    run_dir = _Under("run")
    clickhouse_state_file = _Under("run", CLICKHOUSE_STATE_FILE)

    @property
    def catalog_name(self) -> str:
        return CATALOG_NAME

    @property
    def catalog_uri(self) -> str:
        return f"sqlite:///{self.catalog_db}"

    @property
    def warehouse(self) -> str:
        return self.warehouse_dir.as_uri()

    @property
    def clickhouse_dsn(self) -> str | None:
        """``http://127.0.0.1:<port>`` of this home's local ClickHouse server (the one process
        that owns the chdb engine of `clickhouse_dir`), as the server recorded it when it
        started serving; None while none was started (`ticklake up` starts it)."""
        try:
            return str(json.loads(self.clickhouse_state_file.read_text())["url"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def log_path(self, service: str) -> Path:
        return self.run_dir / f"{service}.log"

    def ensure(self) -> TicklakeHome:
        """Create every directory of the layout (idempotent)."""
        for d in (
            self.root,
            self.warehouse_dir,
            self.clickhouse_dir,
            self.dagster_home,
            self.artifacts_dir,
            self.run_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def as_dict(self) -> dict[str, str | None]:
        return {
            "home": str(self.root),
            "catalog_name": self.catalog_name,
            "catalog_uri": self.catalog_uri,
            "warehouse": self.warehouse,
            "clickhouse_dsn": self.clickhouse_dsn,
            "artifacts": str(self.artifacts_dir),
            "dagster_home": str(self.dagster_home),
        }


def resolve_home(path: str | os.PathLike[str] | None = None) -> TicklakeHome:
    """The home from an explicit path, else $TICKLAKE_HOME, else ./.ticklake — made absolute.

    Absolute because the path is handed to background processes whose working
    directory may differ from the caller's.
    """
    raw = path if path is not None else (os.environ.get(HOME_ENV) or DEFAULT_HOME)
    root = Path(raw).expanduser().resolve()
    if any(c in str(root) for c in "?#\n"):
        # The path is embedded verbatim in sqlite:// URLs.
        raise ValueError(f"{HOME_ENV} must not contain '?', '#' or newlines: {root!s}")
    return TicklakeHome(root)

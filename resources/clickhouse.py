"""Dagster resource for ClickHouse: one client API for the embedded engine and a server.

Locally the DSN is ``chdb:///abs/path`` (clickhouse-connect's in-process chdb backend);
in production ``https://user@host:8443/db`` with the password from dg.EnvVar. Asset code
only sees a clickhouse-connect Client either way.

chdb allows one engine per process, bound to one data path, and refuses a second path
while a client on the first is open. So chdb clients are cached per process: every
resource instance in a step shares the engine, and switching to another path (tests
with their own tmp dirs) closes the old engine first. Dagster serializes local
ClickHouse steps across processes with the ``clickhouse_local`` pool.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import dagster as dg
from clickhouse_connect.driver.client import Client
from pydantic import Field

from resources.home import CLICKHOUSE_POOL, resolve_home

__all__ = ["CLICKHOUSE_POOL", "ClickHouseResource", "chdb_path", "get_client", "is_chdb", "release_chdb"]

_SCHEMES = ("chdb", "http", "https")
_lock = threading.Lock()
_chdb: tuple[str, Client] | None = None


def is_chdb(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def chdb_path(dsn: str) -> str:
    """Absolute engine directory of a ``chdb:///abs/path`` DSN (relative paths are refused:
    a service and a step with different working directories must not get two engines)."""
    parsed = urlparse(dsn)
    if parsed.scheme != "chdb" or parsed.netloc or not parsed.path.startswith("/"):
        raise ValueError(f"local ClickHouse DSN must be chdb:///absolute/path, got {dsn!r}")
    return os.path.realpath(parsed.path)


def _validate(dsn: str) -> None:
    scheme = urlparse(dsn).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"ClickHouse DSN scheme must be one of {_SCHEMES}, got {scheme!r}")
    if scheme in ("http", "https") and urlparse(dsn).password:
        raise ValueError("put the ClickHouse password in dg.EnvVar / the password argument, not in the DSN")


def get_client(dsn: str, password: str | None = None, settings: dict[str, Any] | None = None) -> Client:
    """A client for `dsn`. chdb: the process-wide cached client (see module doc); a server:
    a new client (HTTP clients are cheap and pool connections internally)."""
    global _chdb
    _validate(dsn)
    if not is_chdb(dsn):
        return clickhouse_connect.get_client(dsn=dsn, password=password or "", settings=settings or {})
    path = chdb_path(dsn)
    with _lock:
        if _chdb is not None and _chdb[0] == path:
            return _chdb[1]
        if _chdb is not None:
            _chdb[1].close()
            _chdb = None
        os.makedirs(path, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}", settings=settings or {})
        _chdb = (path, client)
        return client


def release_chdb() -> None:
    """Close the cached embedded engine (end of a test, or before another process needs the path)."""
    global _chdb
    with _lock:
        if _chdb is not None:
            _chdb[1].close()
            _chdb = None


class ClickHouseResource(dg.ConfigurableResource):
    """ClickHouse connection; local default is the chdb engine under $TICKLAKE_HOME/clickhouse."""

    dsn: str | None = Field(default=None, description="chdb:///abs/path (local) or https://user@host:8443/db")
    password: str | None = Field(default=None, description="secret for a server DSN: only through dg.EnvVar")

    def resolved_dsn(self) -> str:
        return self.dsn or resolve_home().clickhouse_dsn

    def is_local(self) -> bool:
        return is_chdb(self.resolved_dsn())

    def get_client(self) -> Client:
        return get_client(self.resolved_dsn(), self.password)

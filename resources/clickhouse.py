"""Dagster resource for ClickHouse: one client code path for the local stack and production.

Every DSN is a ClickHouse HTTP endpoint read by clickhouse-connect. Locally it is
``http://127.0.0.1:<port>`` of the local ClickHouse server (streaming/clickhouse/server.py:
one process owns the chdb engine of $TICKLAKE_HOME/clickhouse and serves ClickHouse's HTTP
interface; `ticklake up` starts it and records its address in the home); in production
``https://user@host:8443/db`` with the password from dg.EnvVar. The live consumer, the
hourly loads, the parity check and a user's own client are all HTTP clients of the same
server, at the same time: no step holds or waits for the engine, hence no Dagster pool.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlparse

import clickhouse_connect
import dagster as dg
from clickhouse_connect.driver.client import Client
from pydantic import Field

from resources.fields import secret_field
from resources.secrets import SecretsResource
from runtime.home import resolve_home

CLICKHOUSE_PASSWORD_ENV = "TICKLAKE_CLICKHOUSE_PASSWORD"

__all__ = ["ClickHouseResource", "LocalClickHouseNotRunning", "get_client"]

_SCHEMES = ("http", "https")


class LocalClickHouseNotRunning(RuntimeError):
    """No DSN configured and no local ClickHouse server recorded in the home."""


def _validate(dsn: str) -> None:
    parsed = urlparse(dsn)
    if parsed.scheme not in _SCHEMES:
        hint = (
            " (the in-process chdb:// engine is no longer used by clients: the local ClickHouse "
            "server owns it; use its http://127.0.0.1:<port> DSN from `ticklake status`)"
            if parsed.scheme == "chdb"
            else ""
        )
        raise ValueError(f"ClickHouse DSN scheme must be one of {_SCHEMES}, got {parsed.scheme!r}{hint}")
    if parsed.password:
        raise ValueError("put the ClickHouse password in dg.EnvVar / the password argument, not in the DSN")


def get_client(dsn: str, password: str | None = None, settings: dict[str, Any] | None = None) -> Client:
    """A new clickhouse-connect client for `dsn` (cheap: it pools HTTP connections; one per
    thread, as clickhouse-connect's sessions require)."""
    _validate(dsn)
    return clickhouse_connect.get_client(dsn=dsn, password=password or "", settings=settings or {})


class ClickHouseResource(dg.ConfigurableResource):
    """ClickHouse connection; local default: the local ClickHouse server of $TICKLAKE_HOME."""

    dsn: str | None = Field(
        default=None,
        description="http(s)://[user@]host:port[/db]; unset: the local "
        "ClickHouse server `ticklake up` started for $TICKLAKE_HOME",
    )
    password: str | None = secret_field("secret for a server DSN: only through dg.EnvVar")
    # Optional[...] rather than `| None`: Dagster resolves nested resource annotations at runtime.
    secrets: Optional[SecretsResource] = Field(  # noqa: UP045
        default=None,
        description=f"where an unset password comes from (${CLICKHOUSE_PASSWORD_ENV}, then Secrets Manager)",
    )

    def resolved_password(self) -> str | None:
        if self.password or self.secrets is None:
            return self.password
        return self.secrets.get(CLICKHOUSE_PASSWORD_ENV)

    def resolved_dsn(self) -> str:
        """The configured DSN, else the local server's, resolved at use time (so a step
        finds the server of the running stack, whatever port it got)."""
        if self.dsn:
            return self.dsn
        home = resolve_home()
        dsn = home.clickhouse_dsn
        if dsn is None:
            raise LocalClickHouseNotRunning(
                f"no local ClickHouse server is running for {home.root} (none recorded in "
                f"{home.clickhouse_state_file}): `ticklake up` starts it, or configure the resource's dsn"
            )
        return dsn

    def get_client(self) -> Client:
        return get_client(self.resolved_dsn(), self.resolved_password())

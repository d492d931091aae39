"""A throwaway PostgreSQL server for tests: Debian's `postgresql` package, started with
initdb/pg_ctl into a temporary directory, torn down with it.

Why not a container or a mock: the production Dagster instance (deploy/dagster.yaml) keeps
runs, event logs and schedules in Postgres, and only a real server proves the dagster-postgres
storage migrates and works. The server refuses to run as root, so under root (CI, this
machine) it runs as `nobody` with a data directory chowned to that user. Trust
authentication on 127.0.0.1 only; fsync off (a test database need not survive a crash).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streaming.kafka.broker import find_free_port

UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    db_name: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db_name}"

    def connect(self):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=self.db_name)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()


def postgres_bin_dir() -> Path | None:
    """Where initdb/pg_ctl live: PATH, else the Debian package's versioned directory
    (/usr/lib/postgresql/<major>/bin is not on PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _run_as(user: pwd.struct_passwd | None):
    """subprocess kwargs that drop root to `user` (uid, gid, no supplementary groups)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def postgres_server(db_name: str = "ticklake_test", user: str = "dagster") -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (see .ci/run)")
    runner = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="ticklake-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if runner is not None:
        os.chown(root, runner.pw_uid, runner.pw_gid)
        os.chown(sock, runner.pw_uid, runner.pw_gid)
    as_runner = _run_as(runner)
    port = find_free_port()
    started = False
    try:
        try:
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    user,
                    "--auth=trust",
                    "--no-locale",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                cwd=root,
                **as_runner,
            )
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            )
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"],
                check=True,
                capture_output=True,
                cwd=root,
                **as_runner,
            )
            started = True
            subprocess.run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db_name],
                check=True,
                capture_output=True,
                cwd=root,
                **as_runner,
            )
        except subprocess.CalledProcessError as exc:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stderr!r}\n{server_log}") from exc
        yield PostgresServer("127.0.0.1", port, user, db_name, data)
    finally:
        if started:
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
                cwd=root,
                **as_runner,
            )
        shutil.rmtree(root, ignore_errors=True)

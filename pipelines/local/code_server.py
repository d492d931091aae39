"""The local stack's one Dagster code server, which the webserver and the daemon both use.

Why a separate process: with a `python_module` workspace, `dagster-daemon` throws its code
server away every 60 s (dagster/_daemon/controller.py, RELOAD_WORKSPACE_INTERVAL; not
configurable) and starts a new one, which imports the whole code location again: measured
~6.5 CPU-seconds a minute, about 11 % of a core on an otherwise idle stack. Against a
`grpc_server` location the daemon only re-fetches the repository snapshot (milliseconds)
and the webserver starts no server of its own either. This is Dagster's production shape
(a code server per location) and keeps the location name of workspace.yaml, so sensor and
schedule state carries over. Runs are launched by this server (DefaultRunLauncher), so the
service runs are its descendants and `ticklake down` stops them with it.

It is a plain `dagster api grpc` server rather than `dagster code-server start`: the latter
is a proxy that runs the same gRPC server as a child (heartbeat included) and forwards
every call to it, ~1.6 % of a core idle for nothing the local stack uses (its reload
endpoint; `ticklake down` + `up` picks up code changes).
"""

from __future__ import annotations

from pathlib import Path

import yaml

#: Must match workspace.yaml: instigator state (sensors on/off) is keyed by location name.
LOCATION_NAME = "ticklake"
DEFINITIONS_MODULE = "pipelines.definitions"


def command(dagster_script: str, host: str, port: int, root: Path) -> list[str]:
    return [
        dagster_script,
        "api",
        "grpc",
        "-h",
        host,
        "-p",
        str(port),
        "-m",
        DEFINITIONS_MODULE,
        "-d",
        str(root),
        "--location-name",
        LOCATION_NAME,
    ]


def write_workspace(path: Path, host: str, port: int) -> Path:
    """A workspace file naming the running code server (written into the stack's home)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by `ticklake up`: the stack's code server (pipelines/local/code_server.py).\n"
        + yaml.safe_dump(
            {"load_from": [{"grpc_server": {"host": host, "port": port, "location_name": LOCATION_NAME}}]},
            sort_keys=False,
        )
    )
    return path


def loaded(host: str, port: int) -> bool:
    """True once the server answers with its repositories (the code is imported)."""
    from dagster._grpc.client import DagsterGrpcClient  # the client Dagster itself uses

    try:
        DagsterGrpcClient(port=port, host=host).list_repositories()
        return True
    except Exception:  # noqa: BLE001 - not up yet, or still importing the location
        return False

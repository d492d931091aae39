"""`ticklake` command line: run the local platform (up/down/status) and, later, operate it.

Each subcommand lives in its own `_register_<name>(subparsers)` function that adds its
parser and handler with `command()`; other commands (backfill, capture verify, ...) are added the
same way and appended to REGISTRARS. Handlers return the process exit code, and their
docstring is the command's help: the first line in the command list, the rest its --help.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines.local.options import UpOptions
from runtime.console import output_survives_closed_reader
from runtime.home import DEFAULT_HOME, HOME_ENV, TicklakeHome, resolve_home

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: `status`: nothing is running (LSB convention for "program is not running").
EXIT_NOT_RUNNING = 3


def _home(args: argparse.Namespace) -> TicklakeHome:
    return resolve_home(args.home)


def _err(msg: str) -> None:
    print(f"ticklake: {msg}", file=sys.stderr)


def command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """Add subcommand `name`, run by `func`, whose docstring documents it once: its first
    paragraph is the help in the command list, the rest the description in the command's
    --help (argparse refills both). The caller adds its options to the returned parser."""
    help, _, description = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    p = sub.add_parser(name, help=help, description=description or None)
    p.set_defaults(func=func)
    return p


def timeout_option(p: argparse.ArgumentParser, default: float | None, help: str) -> None:
    """The --timeout option (seconds) of a command that waits for something."""
    p.add_argument("--timeout", type=float, default=default, metavar="SECONDS", help=help)


# --------------------------------------------------------------------------- up


def _cmd_up(args: argparse.Namespace) -> int:
    """start the local stack (Kafka broker, topics, Iceberg catalog, Dagster)

    Start the embedded Tansu Kafka broker on a free 127.0.0.1 port (storage in <home>/broker,
    kept across down/up; restarted if it crashes), create every topic, create the SQLite
    Iceberg catalog and the `market` namespace, then start the Dagster webserver and daemon.
    Returns once the broker answers metadata requests, the code location is loaded and the
    daemons heartbeat, and after turning on every supervisor sensor and schedule (collectors,
    processors, lake sink, publishers, lake seal/maintenance); the services keep running in
    the background until `ticklake down`. Refuses to start a second stack for the same home.
    """
    from pipelines.local import stack
    from pipelines.local.replay import parse_speed

    home = _home(args)
    # Each option's destination is its UpOptions field (see _register_up).
    options = UpOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(UpOptions)})
    try:
        options.speed = parse_speed(options.speed)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if options.speed != "max" and options.replay is None:
        _err("--speed applies to --replay only")
        return EXIT_USAGE
    try:
        state = stack.up(home, options)
    except stack.AlreadyRunning as exc:
        _err(str(exc))
        return EXIT_ERROR
    except stack.StackError as exc:
        _err(f"up failed (nothing it started is left running):\n{exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted; everything started so far was stopped")
        return 130
    if args.foreground:
        return stack.run_foreground(home, state)
    print(f"ticklake is up. UI: {state.dagster_url}   stop with: ticklake down")
    return EXIT_OK


def _register_up(sub: argparse._SubParsersAction) -> None:
    """The options of `up` besides --foreground are the fields of UpOptions
    (pipelines/local/options.py): each stored under its field's name, defaulting to its value."""
    p = command(sub, "up", _cmd_up)
    defaults = dataclasses.asdict(UpOptions())
    p.set_defaults(**defaults)  # before the options: each takes its default from here
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C (or SIGTERM) stops everything")
    p.add_argument(
        "--port",
        dest="dagster_port",
        type=int,
        metavar="PORT",
        help="port of the Dagster UI on 127.0.0.1 (default: %(default)s)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="partitions per topic on the local broker (default: %(default)s)",
    )
    p.add_argument(
        "--replay",
        type=Path,
        metavar="PATH",
        help="run the platform from a capture (file or directory of captures) instead of "
        "live venues: an exchange emulator serves it and the collectors point at it; "
        "once it is exhausted and drained, the hours it covers close and are sealed",
    )
    p.add_argument(
        "--speed",
        metavar="N|max",
        help="replay speed: a multiplier of the recorded pace, or max (default: %(default)s)",
    )
    p.add_argument(
        "--no-services",
        dest="services",
        action="store_false",
        help="leave every sensor and schedule off (start them from the UI)",
    )
    p.add_argument(
        "--observe",
        action="store_true",
        help="also start a local Prometheus (Debian `prometheus` binary) scraping every service's "
        "metrics, with the alert rules of deploy/prometheus/rules; `status` prints its URL",
    )
    p.add_argument(
        "--workspace",
        type=Path,
        metavar="FILE",
        help="Dagster workspace file (default: the repository's workspace.yaml)",
    )
    timeout_option(p, defaults["timeout"], "how long to wait for each service to become ready (default: %(default)s)")


# --------------------------------------------------------------------------- down


def _cmd_down(args: argparse.Namespace) -> int:
    """stop everything `ticklake up` started

    Stop the Dagster daemon, the webserver and the broker (in that order) by the PIDs recorded
    under $TICKLAKE_HOME/run, including their child processes (code servers, runs): SIGTERM,
    then SIGKILL after the timeout. The broker keeps data in memory, so Kafka topics are gone
    afterwards; the catalog, warehouse and Dagster history stay.
    """
    from pipelines.local import stack

    try:
        stack.down(_home(args), timeout=args.timeout)
    except stack.StackError as exc:
        _err(str(exc))
        return EXIT_ERROR
    return EXIT_OK


def _register_down(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "down", _cmd_down)
    timeout_option(p, 20.0, "grace period before SIGKILL (default: %(default)s)")


# --------------------------------------------------------------------------- status


def _print_status(info: dict, overall: str) -> None:
    print(f"ticklake {overall}   home {info['home']}")
    for name, svc in info["services"].items():
        pid = f"pid {svc['pid']}" if svc["pid"] else ""
        line = f"  {name:<18} {svc['state']:<8} {pid:<11}"
        if svc["state"] == "running":
            line += f" {'ok' if svc['healthy'] else 'UNHEALTHY'}  {svc.get('detail', '')}"
        print(line)
        print(f"  {'':<18} log {svc['log']}")
    print(f"  {'kafka':<18} {info['kafka_bootstrap'] or '-'}")
    print(f"  {'dagster UI':<18} {info['dagster_url'] or '-'}")
    cat = info["catalog"]
    tables = (
        f"{len(cat['tables'])} tables in `{cat['namespace']}`"
        if "tables" in cat
        else cat.get("error", "not created yet")
    )
    print(f"  {'iceberg catalog':<18} {info['catalog_name']} {info['catalog_uri']} ({tables})")
    print(f"  {'warehouse':<18} {info['warehouse']}")
    print(f"  {'clickhouse DSN':<18} {info['clickhouse_dsn'] or '- (the local server is not running)'}")
    print(f"  {'artifacts':<18} {info['artifacts']}")
    if info.get("orphans"):
        print(f"  {'orphans':<18} {info['orphans']} (their service died; `ticklake down` stops them)")
    _print_collectors(info.get("collectors") or {})
    _print_health(info)
    report = info.get("dagster_services")
    if report is not None:
        if "error" in report:
            print(f"  {'sensors/schedules':<18} unknown: {report['error']}")
        else:
            for item in report["instigators"]:
                print(f"  {item['kind'] + ' ' + item['name']:<46} {item['status']}")
            runs = report["runs"]
            print(f"  {'service runs':<18} {len(runs)} live")
            for run in runs:
                print(f"    {run['service']:<40} {run['status']:<10} {run['job']} {run['run_id']}")


def _print_collectors(col: dict) -> None:
    """Per shard: state, newest frame's age, and the reason when it is not connected."""
    from collectors.status import CAPTURE_EXHAUSTED

    shards = col.get("shards") or []
    print(
        f"  {'collectors':<18} {col.get('config', '-')}: {len(shards)} shard(s){'; ' + col['detail'] if col.get('detail') else ''}"
    )
    for sh in shards:
        age = sh.get("last_frame_age_s")
        frame = f"last frame {age:.0f}s ago" if age is not None else "no frame yet"
        state = (
            sh["state"]
            if sh.get("connected") or sh["state"] in ("disabled", "stopped", CAPTURE_EXHAUSTED)
            else sh["state"].upper()
        )
        print(
            f"    {sh['shard']:<22} {state:<12} {frame:<22} {sh['exchange']} {sh['market']} "
            f"{','.join(sh.get('symbols', []))}"
        )
        if sh.get("reason"):
            print(f"    {'':<22} {sh['reason']}")


def _print_health(info: dict) -> None:
    """Per long-running service: lag, last record age, restarts, last error; per lake table
    the newest sealed hour; then what makes the stack unhealthy."""
    health = info.get("service_health") or []
    if health:
        print(f"  {'services':<18} {len(health)} recorded (metrics on 127.0.0.1:<port>)")
    for h in health:
        age = h.get("last_record_age_s")
        line = (
            f"    {h['service']:<30} {'ok' if h['healthy'] else 'UNHEALTHY':<9} {h['state']:<8} "
            f"port {h.get('metrics_port') or '-':<6} lag {h['lag'] if h['lag'] is not None else '-':<7} "
            f"last record {f'{age:.0f}s ago' if age is not None else '-':<10} restarts {h['restarts']}"
        )
        print(line)
        if h.get("problem"):
            print(f"    {'':<30} {h['problem']}")
        elif h.get("last_error"):
            print(f"    {'':<30} last error {h.get('last_error_at') or ''}: {h['last_error'][:160]}")
    sealed = info.get("lake_sealed_hours") or {}
    if sealed:
        print(f"  {'lake sealed hours':<18} " + ", ".join(f"{k} {v or '-'}" for k, v in sealed.items()))
    if info.get("prometheus_url"):
        print(f"  {'prometheus':<18} {info['prometheus_url']}")
    for problem in info.get("problems") or []:
        print(f"  UNHEALTHY          {problem}")


def _cmd_status(args: argparse.Namespace) -> int:
    """show each part of the local stack and where its logs are

    Probe each service live (Kafka metadata, Dagster GraphQL location and daemon heartbeats),
    each long-running service through its metrics endpoint (lag, last record age, last error,
    restarts) and each lake table's newest sealed hour, and print where state and logs live.
    Exit code: 0 all running and healthy, 3 nothing running, 1 anything in between (a dead or
    stuck service, an unreachable collector).
    """
    from pipelines.local import stack

    try:
        info = stack.status(_home(args))
    except stack.StackError as exc:
        _err(str(exc))
        return EXIT_ERROR
    state = stack.overall(info)
    info["status"] = state
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_status(info, state)
    return {"running": EXIT_OK, "stopped": EXIT_NOT_RUNNING}.get(state, EXIT_ERROR)


def _register_status(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "status", _cmd_status)
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: home, kafka_bootstrap, dagster_url, catalog_name, "
        "catalog_uri, warehouse, clickhouse_dsn, artifacts, services, service_health, "
        "lake_sealed_hours, problems, status",
    )


# --------------------------------------------------------------------------- capture (collectors)


def _register_capture(sub: argparse._SubParsersAction) -> None:
    # `capture verify` lives with the collectors (collectors/verify.py); imported lazily.
    from collectors.verify import add_capture_parser

    add_capture_parser(sub)


# --------------------------------------------------------------------------- backfill (lake)


def _register_backfill(sub: argparse._SubParsersAction) -> None:
    from pipelines.local.backfill import register

    register(sub)


# --------------------------------------------------------------------------- parser

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_up,
    _register_down,
    _register_status,
    _register_capture,
    _register_backfill,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticklake",
        description="ticklake: crypto market data -> Kafka -> Iceberg -> ClickHouse, run by Dagster.",
        epilog=(
            f"State lives in ${HOME_ENV} (default ./{DEFAULT_HOME}): catalog.db, warehouse/, "
            "clickhouse/, dagster/, artifacts/ and run/ (pid files, logs)."
        ),
    )
    parser.add_argument("--home", metavar="DIR", help=f"state directory (default: ${HOME_ENV} or ./{DEFAULT_HOME})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    with output_survives_closed_reader():  # `ticklake down | head -1` still stops everything
        args = build_parser().parse_args(argv)
        try:
            return args.func(args)
        except ValueError as exc:  # e.g. an invalid home path
            _err(str(exc))
            return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

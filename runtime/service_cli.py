"""A service's settings, declared once, feed both its Dagster run config and its `python -m` entry.

Each service declares its tunables as one `ServiceSettings` class next to its loop (field,
type, default, a docstring saying why); a service running a ServiceLoop extends `LoopSettings`,
which declares the loop's run bounds (idle_exit_s, max_seconds) once for all of them. The
Dagster job's config class is that class mixed into `dg.Config` (pipelines/services/*.py),
and the standalone entry's argparse parser is generated from the same fields here, so the two
cannot drift apart:

* `snake_case` fields become `--kebab-case` options; `bool` fields are switches;
* `list[...]` fields are repeatable options named in the singular (`exchanges` ->
  `--exchange`), as the hand-written parsers always were;
* `json_schema_extra={"cli": "--name"}` on a field names its option explicitly (a name
  without dashes, equal to the field's, makes it an optional positional).

Options that only a standalone process needs (`--bootstrap`, `--metrics-port`, ...) are added
by the entry itself. Plain pydantic and argparse: no Dagster import in a standalone process.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


class ServiceSettings(BaseModel):
    """Base of every service's settings (attribute docstrings are the field descriptions)."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class LoopSettings(ServiceSettings):
    """Settings of a service that runs a runtime.service_loop.ServiceLoop: the bounds of its
    `run()`, which the standalone entry and the Dagster op both pass on."""

    idle_exit_s: float | None = None
    """Stop after this long without progress (no batch handled: tests, one-off catch-up runs);
    None = run until stopped."""
    max_seconds: float | None = None
    """Stop after this long in all (tests, bounded runs); None = no limit."""


def _inner(annotation: Any) -> tuple[Any, bool]:
    """(type without Optional, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def option_name(name: str, field: Any) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "cli" in extra:
        return str(extra["cli"])
    base, _ = _inner(field.annotation)
    if typing.get_origin(base) is list and name.endswith("s"):
        name = name[:-1]
    return "--" + name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, settings: type[BaseModel]) -> None:
    """One option per field of `settings` (dest = the field name)."""
    for name, field in settings.model_fields.items():
        base, _optional = _inner(field.annotation)
        help_text = (field.description or "").split("\n")[0] or None
        flag = option_name(name, field)
        metavar = flag.lstrip("-").replace("-", "_").upper()
        if not flag.startswith("-"):  # a positional (its name is the field's)
            parser.add_argument(flag, nargs="?", default=None, type=base, metavar=metavar, help=help_text)
        elif typing.get_origin(base) is list:
            (item,) = typing.get_args(base) or (str,)
            parser.add_argument(flag, dest=name, action="append", type=item, metavar=metavar, help=help_text)
        elif base is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=base, metavar=metavar, help=help_text)


def settings_from_args(settings: type[BaseModel], args: argparse.Namespace) -> Any:
    """The settings instance of parsed options (unset options keep the field defaults)."""
    given = {name: getattr(args, name) for name in settings.model_fields if getattr(args, name, None) is not None}
    return settings(**given)


def settings_parser(settings: type[BaseModel], *, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_settings_arguments(parser, settings)
    return parser


def standalone(
    settings: type[LoopSettings],
    build: Callable[[Any, argparse.Namespace, Any], Any],
    *,
    service: str,
    prog: str,
    doc: str,
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The `python -m` entry of a service: options from `settings` (plus --bootstrap,
    --metrics-port and `add_arguments`; the description is the first line of the module's `doc`),
    then `build(conn, args, settings)` -> the loop, `conn` being the Kafka connection of
    --bootstrap or the environment, run in
    this (main) thread under service_run until SIGTERM/SIGINT (a stop request: the batch in
    flight commits) or its idle_exit_s / max_seconds, then its summary() logged."""
    from runtime.kafka_config import connection_from_env
    from runtime.service_status import service_run

    parser = settings_parser(settings, prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap (default $TICKLAKE_KAFKA_BOOTSTRAP)")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (default: ephemeral, for `ticklake status`)"
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    values = settings_from_args(settings, args)
    with service_run(service, port=args.metrics_port, home=getattr(args, "home", None)):
        loop = build(connection_from_env(bootstrap_servers=args.bootstrap), args, values)
        loop.install_signal_handlers()
        loop.run(idle_exit_s=values.idle_exit_s, max_seconds=values.max_seconds)
        log.info("%s stopped: %s", service, loop.summary())
    return 0


def service_main(
    module: str,
    settings: type[LoopSettings],
    build: Callable[[Any, argparse.Namespace, Any], Any],
    *,
    service: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[list[str] | None], int]:
    """The `main(argv=None)` of a loop service, declared once in its module as
    `main = service_main(__name__, Settings, build, service=...)`: `standalone` with the prog
    and help derived from the module itself rather than written out in each, so they cannot
    go stale when the module moves. prog is "python -m " + the module's import name (under
    `python -m` its `__name__` is "__main__"; the real name is its `__spec__.name`), the
    help text its docstring, both read when the entry runs (the module is complete then)."""

    def main(argv: list[str] | None = None) -> int:
        mod = sys.modules[module]
        spec = getattr(mod, "__spec__", None)
        name = spec.name if module == "__main__" and spec is not None else module
        return standalone(
            settings,
            build,
            service=service,
            prog=f"python -m {name}",
            doc=mod.__doc__ or "",
            argv=argv,
            add_arguments=add_arguments,
        )

    return main

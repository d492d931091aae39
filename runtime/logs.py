"""The one log format of every service: a JSON object per line.

Each line carries `ts`, `level`, `logger`, `event` and always `service`, `shard`, `symbol`
and `run_id` (null when not applicable), so a log search can follow one instrument or one
Dagster run across services. The service, shard and run id are process context, set once by
`service_run` (runtime/service_status.py); per-event fields (symbol, reason, ...) come from
`log_event(logger, level, event, **fields)` and override the context.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Process-wide context: every service runs in a process of its own.
_CONTEXT: dict[str, Any] = {"service": None, "shard": None, "run_id": None}
CONTEXT_FIELDS = ("service", "shard", "symbol", "run_id")


def set_context(**fields: Any) -> None:
    _CONTEXT.update(fields)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_CONTEXT,
            "symbol": None,
        }
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def configure_json_logging(level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Attach the JSON handler to the root logger (idempotent); the project's loggers log at
    `level`. Other root handlers with a plain format are left alone."""
    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h.formatter, JsonFormatter):
            return h
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    # "__main__": a service started as `python -m streaming.processors.feature_processor` logs under that
    # name, outside the package loggers, and its own lines would otherwise drop to WARNING.
    for name in (
        "__main__",
        "ticklake",
        "collectors",
        "streaming",
        "features",
        "pipelines",
        "resources",
        "assets",
        "ml",
        "workloads",
    ):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level > level:
            lg.setLevel(level)
    return handler

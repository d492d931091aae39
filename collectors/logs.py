"""Structured JSON logs for long-running collectors: one object per line, with the shard,
symbol and request ids as fields so a log search can follow one instrument."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LOGGER = "ticklake.collectors"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def get_logger(name: str = LOGGER) -> logging.Logger:
    return logging.getLogger(name)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def configure_json_logging(level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Attach a JSON handler to the collectors' logger (idempotent)."""
    logger = logging.getLogger(LOGGER)
    for h in logger.handlers:
        if isinstance(h.formatter, JsonFormatter):
            return h
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler

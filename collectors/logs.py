"""Structured JSON logs for long-running collectors: one object per line, with the shard,
symbol and request ids as fields so a log search can follow one instrument. The format and
its setup are the platform's one logging module (runtime/logs.py); this keeps the
collectors' logger name."""

from __future__ import annotations

import logging

from runtime.logs import JsonFormatter, configure_json_logging, log_event

LOGGER = "ticklake.collectors"

__all__ = ["LOGGER", "JsonFormatter", "configure_json_logging", "get_logger", "log_event"]


def get_logger(name: str = LOGGER) -> logging.Logger:
    return logging.getLogger(name)

"""What `ticklake up` can be told: `UpOptions`, one field per option of the `up` command.

The CLI (pipelines/local/cli.py) names each option's destination after its field and takes
its default from here, and builds the options from the parsed arguments field by field; the
stack (pipelines/local/stack.py) reads them. Kept apart from stack.py so that building the
CLI parser does not import the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DAGSTER_PORT = 3000


@dataclass(slots=True)
class UpOptions:
    dagster_port: int = DEFAULT_DAGSTER_PORT
    partitions: int = 3
    replay: Path | None = None
    workspace: Path | None = None
    timeout: float = 300.0
    #: replay speed multiplier (1 = as recorded) or "max"
    speed: str = "max"
    #: turn on every supervisor sensor and schedule once Dagster is up (--no-services: off)
    services: bool = True
    #: start a local Prometheus scraping every service (--observe)
    observe: bool = False

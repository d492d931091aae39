"""One machine-readable line per benchmark figure, beside the human table each script prints.

Every figure is a value measured beside a named baseline in the same run (ratio = value /
baseline_value, so the ratio stays meaningful on a loaded machine where absolute rates
drift). A script calls ``emit`` next to its own print; ``bench/run_all.py`` picks the lines
out of the script's stdout by their prefix, adds the commit and writes
``bench/results/<date>.jsonl`` plus a Markdown table. Kept dependency-free so any bench
script (and the CI smoke test) can import it.
"""

from __future__ import annotations

import json
import math
import sys

PREFIX = "BENCH-FIGURE "


def emit(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    target: str = "",
    note: str = "",
    floor: str | None = None,
) -> dict:
    """Print one figure line (and return it). ``baseline`` names what ``baseline_value`` is.
    A value that could not be measured (NaN, e.g. no feature row arrived) is written as null.
    ``target`` is one of the forms bench/targets.py reads; ``floor`` names another figure of the
    same run that bounds this one (the least work the product must do, done bare, against the
    same baseline): a missed target is explained by it only if the floor misses it too."""
    value = float(value)
    if not math.isfinite(value):
        value = None
    fig = {
        "name": name,
        "value": None if value is None else round(value, 4),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if baseline_value is None else round(float(baseline_value), 4),
        "ratio": (
            round(value / float(baseline_value), 4) if value is not None and baseline_value not in (None, 0) else None
        ),
        "target": target,
        "note": note,
        "floor": floor,
    }
    print(PREFIX + json.dumps(fig), file=sys.stdout, flush=True)
    return fig


def parse(stdout: str) -> list[dict]:
    """The figure lines of a script's output, in order."""
    return [json.loads(line[len(PREFIX) :]) for line in stdout.splitlines() if line.startswith(PREFIX)]

"""Sources declared complete: event-time ranges no further record will ever arrive for.

A live venue never ends, so a live hour closes by the watermark rule (watermark past hour
end + grace). A replayed capture does end: once it is exhausted and the pipeline has
drained, every hour it covers is final even though no later event will ever push the
watermark past it. Such a declaration is kept where every reader of the closed-hour rule
already looks, the catalog: a property of the lake namespace listing completed ranges,
so the seal asset, the late-hour sensor and `ticklake status` agree without asking any
process. A new replay over an overlapping range withdraws the old declaration first.
Plain Python over pyiceberg, no Kafka, no Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError

from schemas.tables import HOUR_US, NAMESPACE

COMPLETE_KEY = "ticklake.complete-ranges"


@dataclass(frozen=True, slots=True)
class CompleteRange:
    """No record with from_us <= exchange_ts < until_us will arrive any more (µs, UTC)."""

    source: str
    from_us: int
    until_us: int

    def covers_hour(self, hour_start_us: int) -> bool:
        return self.from_us <= hour_start_us and hour_start_us + HOUR_US <= self.until_us

    def overlaps(self, from_us: int, until_us: int) -> bool:
        return self.from_us < until_us and from_us < self.until_us


def hour_span(first_us: int, last_us: int, margin_us: int = 60_000_000) -> tuple[int, int]:
    """Whole hours around [first, last] (widened by `margin_us`: venue event times run a
    little ahead of or behind the receive times a capture records)."""
    lo = first_us - margin_us
    hi = last_us + margin_us
    return lo - lo % HOUR_US, hi - hi % HOUR_US + HOUR_US


def read_complete_ranges(catalog: Catalog) -> list[CompleteRange]:
    try:
        props = catalog.load_namespace_properties(NAMESPACE)
    except NoSuchNamespaceError:
        return []
    raw = props.get(COMPLETE_KEY)
    if not raw:
        return []
    return [CompleteRange(str(r["source"]), int(r["from_us"]), int(r["until_us"])) for r in json.loads(raw)]


def _write(catalog: Catalog, ranges: Iterable[CompleteRange]) -> None:
    text = json.dumps([asdict(r) for r in sorted(ranges, key=lambda r: (r.from_us, r.source))], separators=(",", ":"))
    catalog.update_namespace_properties(NAMESPACE, updates={COMPLETE_KEY: text})


def mark_complete(catalog: Catalog, source: str, spans: Sequence[tuple[int, int]]) -> list[CompleteRange]:
    """Declare `spans` ([from_us, until_us) each) final for `source`, replacing what the
    source declared before. A replay of several captures declares one span per run of
    hours its files cover, never the gap between them (a capture of August beside one of
    December must not close every hour in between)."""
    new = [CompleteRange(source, lo, hi) for lo, hi in merge_spans(spans)]
    if not new:
        raise ValueError(f"nothing to declare complete: {list(spans)}")
    _write(catalog, [*(r for r in read_complete_ranges(catalog) if r.source != source), *new])
    return new


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-adjacent spans covering exactly the union of `spans`;
    empty spans are dropped."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(s for s in spans if s[1] > s[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def withdraw_overlapping(catalog: Catalog, from_us: int, until_us: int) -> list[CompleteRange]:
    """Forget completed ranges overlapping [from_us, until_us): data for them is coming again."""
    ranges = read_complete_ranges(catalog)
    gone = [r for r in ranges if r.overlaps(from_us, until_us)]
    if gone:
        _write(catalog, [r for r in ranges if r not in gone])
    return gone


def hour_completed(hour_start: datetime, ranges: Sequence[CompleteRange]) -> bool:
    start_us = int(hour_start.timestamp()) * 1_000_000
    return any(r.covers_hour(start_us) for r in ranges)

"""Event-time watermarks of the lake tables, and when an hour counts as closed.

The sink stores each table's watermark (max exchange_ts seen minus the allowed lateness)
in the table's own snapshot summary, so every reader — the hourly seal, the late-hour
sensor, `ticklake status` — asks the catalog, not the sink process. A Prometheus gauge
shows the same number live.

An hour is closed when the lake watermark has passed hour end + grace, or when a finished
source (a replayed capture) declared it complete. The lake watermark
is the maximum over the tables: one sink process consumes every processed topic in one
loop, so its tables advance together, and a sparse table (liquidations, funding) that
saw nothing for an hour must not hold its hours open forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from runtime.metrics import LAKE_WATERMARK as WATERMARK_GAUGE
from schemas.tables import TABLES
from streaming.kafka.source_complete import CompleteRange, hour_completed
from streaming.lake.state import HOUR_US, latest_sink_state

#: Defaults: venues deliver within seconds; grace covers a sink restart plus catch-up.
DEFAULT_ALLOWED_LATENESS_US = 10_000_000
DEFAULT_CLOSE_GRACE = timedelta(minutes=5)


@dataclass(slots=True)
class WatermarkTracker:
    """Max event time per table, monotonic; the watermark trails it by the allowed lateness."""

    allowed_lateness_us: int = DEFAULT_ALLOWED_LATENESS_US
    max_event_us: dict[str, int] = field(default_factory=dict)

    def seed(self, table: str, max_event_us: int | None) -> None:
        if max_event_us is not None:
            self.max_event_us[table] = max(self.max_event_us.get(table, max_event_us), max_event_us)
            self._publish(table)

    def observe(self, table: str, max_ts_us: int) -> None:
        if max_ts_us > self.max_event_us.get(table, -1):
            self.max_event_us[table] = max_ts_us
            self._publish(table)

    def watermark_us(self, table: str) -> int | None:
        mx = self.max_event_us.get(table)
        return None if mx is None else mx - self.allowed_lateness_us

    def is_late(self, table: str, ts_us: int) -> bool:
        wm = self.watermark_us(table)
        return wm is not None and ts_us < wm

    def _publish(self, table: str) -> None:
        WATERMARK_GAUGE.labels(table).set((self.watermark_us(table) or 0) / 1e6)


def read_watermarks(catalog: Catalog) -> dict[str, datetime | None]:
    """Watermark of every lake table from its newest sink snapshot (None: no data yet)."""
    out: dict[str, datetime | None] = {}
    for spec in TABLES.values():
        try:
            table = catalog.load_table(spec.identifier)
        except NoSuchTableError:
            out[spec.name] = None
            continue
        wm = latest_sink_state(table).watermark_us
        out[spec.name] = None if wm is None else datetime.fromtimestamp(wm / 1e6, tz=UTC)
    return out


def lake_watermark(watermarks: Mapping[str, datetime | None]) -> datetime | None:
    known = [w for w in watermarks.values() if w is not None]
    return max(known) if known else None


def hour_end(hour_start: datetime) -> datetime:
    return hour_start + timedelta(microseconds=HOUR_US)


def is_hour_closed(
    hour_start: datetime,
    watermark: datetime | None,
    grace: timedelta = DEFAULT_CLOSE_GRACE,
    complete: Sequence[CompleteRange] = (),
) -> bool:
    """Closed by the watermark, or because a finished source (a replayed capture) declared
    the hour complete (streaming/kafka/source_complete.py): nothing will ever move a watermark
    past the last hour of a capture."""
    if hour_completed(hour_start, complete):
        return True
    return watermark is not None and watermark >= hour_end(hour_start) + grace


def closed_hours_until(watermark: datetime | None, grace: timedelta = DEFAULT_CLOSE_GRACE) -> datetime | None:
    """Start of the newest closed hour, or None."""
    if watermark is None:
        return None
    limit = watermark - grace  # hour_end must be <= limit
    newest_end = limit.replace(minute=0, second=0, microsecond=0)
    return newest_end - timedelta(hours=1)

"""What the lake sink writes into each Iceberg snapshot summary, and how it is read back.

Iceberg has no multi-table transaction, so every table carries its own bookkeeping in
its own snapshots: the Kafka offsets of ITS topics (topics map 1:1 to tables through the
event type), its event-time watermark and a per-hour ledger of rows committed. Data and
bookkeeping land in one atomic commit, which is what makes the sink exactly-once: after a
crash each table resumes from the offsets of its own last sink snapshot, so a table can
neither skip nor re-apply a record whatever happened to the other tables.

Values are cumulative (offsets of every partition ever consumed; the ledger of the last
`LEDGER_HOURS` hours) so only the newest sink snapshot is ever needed: expiring older
snapshots loses nothing. Plain Python over pyiceberg metadata, no Kafka, no Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from schemas.tables import HOUR_US  # the lake modules take it from here

OFFSETS_KEY = "ticklake.offsets"
WATERMARK_KEY = "ticklake.watermark-us"
MAX_EVENT_KEY = "ticklake.max-event-us"
LEDGER_KEY = "ticklake.hour-ledger"
WRITER_KEY = "ticklake.writer"
SEALED_HOUR_KEY = "ticklake.sealed-hour"
TOPIC_IDS_KEY = "ticklake.topic-ids"
SINK_WRITER = "lake-sink"
SEAL_WRITER = "lake-seal"

#: Hours kept in the cumulative ledger: longer than processed.* retention (5 d), so the
#: row-count check of any hour whose source can still be replayed has its expected count.
LEDGER_HOURS = 7 * 24

#: topic -> partition -> next offset to consume
Offsets = dict[str, dict[int, int]]


@dataclass(slots=True)
class HourCount:
    """Per hour: records consumed from committed offsets, and rows written (records minus
    event_id duplicates the sink dropped)."""

    records: int = 0
    rows: int = 0

    def to_list(self) -> list[int]:
        return [self.records, self.rows]


@dataclass(slots=True)
class SinkState:
    """The bookkeeping of one table as of its newest sink snapshot."""

    offsets: Offsets = field(default_factory=dict)
    watermark_us: int | None = None
    max_event_us: int | None = None
    ledger: dict[int, HourCount] = field(default_factory=dict)  # hour start (µs) -> counts
    snapshot_id: int | None = None
    #: Kafka topic ids the offsets belong to: a recreated topic gets a new id, and its old
    #: offsets then mean nothing (a reset that grew past the old offset is invisible otherwise)
    topic_ids: dict[str, str] = field(default_factory=dict)

    def copy(self) -> SinkState:
        return SinkState(
            offsets={t: dict(p) for t, p in self.offsets.items()},
            watermark_us=self.watermark_us,
            max_event_us=self.max_event_us,
            ledger={h: HourCount(c.records, c.rows) for h, c in self.ledger.items()},
            snapshot_id=self.snapshot_id,
            topic_ids=dict(self.topic_ids),
        )

    def summary(self) -> dict[str, str]:
        """Snapshot summary properties (strings only, as Iceberg requires)."""
        props = {
            WRITER_KEY: SINK_WRITER,
            OFFSETS_KEY: json.dumps(
                {t: {str(p): o for p, o in sorted(ps.items())} for t, ps in sorted(self.offsets.items())},
                separators=(",", ":"),
            ),
            LEDGER_KEY: json.dumps(
                {str(h): c.to_list() for h, c in sorted(self.ledger.items())}, separators=(",", ":")
            ),
        }
        if self.topic_ids:
            props[TOPIC_IDS_KEY] = json.dumps(dict(sorted(self.topic_ids.items())), separators=(",", ":"))
        if self.watermark_us is not None:
            props[WATERMARK_KEY] = str(self.watermark_us)
        if self.max_event_us is not None:
            props[MAX_EVENT_KEY] = str(self.max_event_us)
        return props

    def trim_ledger(self, hours: int = LEDGER_HOURS) -> None:
        if not self.ledger:
            return
        newest = max(self.ledger)
        for h in [h for h in self.ledger if h < newest - hours * HOUR_US]:
            del self.ledger[h]


def hour_floor(ts_us: int) -> int:
    return ts_us - ts_us % HOUR_US


def parse_state(props: Mapping[str, str], snapshot_id: int | None = None) -> SinkState:
    offsets = {t: {int(p): int(o) for p, o in ps.items()} for t, ps in json.loads(props.get(OFFSETS_KEY, "{}")).items()}
    ledger = {int(h): HourCount(int(v[0]), int(v[1])) for h, v in json.loads(props.get(LEDGER_KEY, "{}")).items()}
    wm = props.get(WATERMARK_KEY)
    mx = props.get(MAX_EVENT_KEY)
    return SinkState(
        offsets=offsets,
        watermark_us=int(wm) if wm is not None else None,
        max_event_us=int(mx) if mx is not None else None,
        ledger=ledger,
        snapshot_id=snapshot_id,
        topic_ids=json.loads(props.get(TOPIC_IDS_KEY, "{}")),
    )


def ancestors(table: Table) -> Iterator[Snapshot]:
    """Current snapshot, then its parents (the main branch's history, newest first)."""
    meta = table.metadata
    snap = table.current_snapshot()
    while snap is not None:
        yield snap
        snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None


def summary_props(snap: Snapshot) -> dict[str, str]:
    return dict(snap.summary.additional_properties) if snap.summary is not None else {}


def latest_sink_state(table: Table) -> SinkState:
    """State of the newest sink snapshot on the main branch (empty when there is none).

    Seals and maintenance commits do not carry the sink's keys, so the walk skips them. If
    the history was cut (expired snapshots) before a sink snapshot was reached, the newest
    sink snapshot the table still has is used."""
    for snap in ancestors(table):
        if _is_sink(snap):
            return parse_state(summary_props(snap), snap.snapshot_id)
    sinks = [s for s in table.metadata.snapshots if _is_sink(s)]
    if sinks:
        newest = max(sinks, key=lambda s: (s.sequence_number or 0, s.timestamp_ms))
        return parse_state(summary_props(newest), newest.snapshot_id)
    return SinkState()


def _is_sink(snap: Snapshot) -> bool:
    props = summary_props(snap)
    return props.get(WRITER_KEY) == SINK_WRITER and OFFSETS_KEY in props

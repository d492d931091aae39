"""The newest sealed hour of each lake table, from the tables' own snapshot summaries.

The hourly seal (streaming/lake/seal.py) and a promoted rebuild stamp `ticklake.sealed-hour`
into the summary of the snapshot that sealed the hour, so freshness needs no other record:
`ticklake status` reads it for its per-table line and the lake sink exports it as the
`ticklake_lake_newest_sealed_hour_timestamp_seconds` gauge (read at scrape time, cached),
which the sealed-hour freshness alert watches.
"""

from __future__ import annotations

from datetime import datetime

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from schemas.tables import TABLES
from streaming.lake.state import SEALED_HOUR_KEY, summary_props


def newest_sealed_hour(table: Table) -> datetime | None:
    newest: datetime | None = None
    for snap in table.metadata.snapshots:
        raw = summary_props(snap).get(SEALED_HOUR_KEY)
        if raw:
            try:
                hour = datetime.fromisoformat(raw)
            except ValueError:
                continue
            newest = hour if newest is None or hour > newest else newest
    return newest


def newest_sealed_hours(catalog: Catalog) -> dict[str, datetime | None]:
    """Per lake table (None: never sealed, or no such table yet)."""
    out: dict[str, datetime | None] = {}
    for spec in TABLES.values():
        try:
            out[spec.name] = newest_sealed_hour(catalog.load_table(spec.identifier))
        except NoSuchTableError:
            out[spec.name] = None
    return out


def sealed_hour_timestamps(catalog: Catalog) -> dict[str, float | None]:
    """The same as unix seconds, the gauge's unit."""
    return {k: (v.timestamp() if v is not None else None) for k, v in newest_sealed_hours(catalog).items()}

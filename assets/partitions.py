"""The partitions every time-sliced asset shares: one hourly (UTC) and one daily definition.

One object, imported everywhere: Dagster only draws lineage between partitioned assets
and lets a backfill span them when their partitions definitions agree, and a second,
slightly different hourly definition (another start date or timezone) would silently
break both.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

#: First hour of lake data the platform knows about (older bulk files go to daily assets).
START = "2024-01-01-00:00"
HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"

HOURLY = dg.HourlyPartitionsDefinition(start_date=START, timezone="UTC")
DAILY = dg.DailyPartitionsDefinition(start_date=START[:10], timezone="UTC")


def hour_start(partition_key: str) -> datetime:
    """UTC start of an hourly partition key ("2024-08-09-00:00")."""
    return datetime.strptime(partition_key, HOUR_KEY_FORMAT).replace(tzinfo=UTC)


def hour_key(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime(HOUR_KEY_FORMAT)

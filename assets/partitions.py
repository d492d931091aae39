"""The partitions every time-sliced asset shares: one hourly (UTC) and one daily definition.

One object, imported everywhere: Dagster only draws lineage between partitioned assets
and lets a backfill span them when their partitions definitions agree, and a second,
slightly different hourly definition (another start date or timezone) would silently
break both.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

#: First hour a lake partition exists for. Every hour of data the platform can hold needs
#: one: a replayed capture, a rebuild or a bulk day of any age is sealed and built into the
#: hourly chain only if its hour is a partition (an hour before START is dropped by the
#: seal sensors and cannot be materialized). The venues collected (Binance, OKX, Bybit) all
#: started trading in 2017 or later, so no capture of them predates it; the shipped samples
#: reach back to 2019. The cost of earlier hours is only more (empty) partitions, which
#: Dagster keeps as time ranges.
START = "2017-01-01-00:00"
HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"

HOURLY = dg.HourlyPartitionsDefinition(start_date=START, timezone="UTC")
DAILY = dg.DailyPartitionsDefinition(start_date=START[:10], timezone="UTC")


def hour_start(partition_key: str) -> datetime:
    """UTC start of an hourly partition key ("2024-08-09-00:00")."""
    return datetime.strptime(partition_key, HOUR_KEY_FORMAT).replace(tzinfo=UTC)


def hour_key(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime(HOUR_KEY_FORMAT)

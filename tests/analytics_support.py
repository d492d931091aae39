"""Shared by the analytics tests: a lake hour built from the genuine Binance capture.

The capture's raw envelopes (collectors' own adapter) go through the normalizer's record
logic, the processed envelopes are written with the lake sink's file writer and the hour
is sealed, exactly as the platform would have it; no hand-made rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
from pyiceberg.catalog import Catalog

from assets.partitions import hour_start
from resources.home import TicklakeHome
from resources.lake import LakeResource
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import event_type_from_pb
from schemas.tables import TABLES
from streaming.instruments import InstrumentCatalog
from streaming.lake_seal import seal_hour
from streaming.lake_writer import LakeFileWriter, commit_files
from streaming.normalizer import Normalizer
from streaming.serde import encode
from tests import processing_support as ps

#: The capture runs 2024-08-08 23:54:14 .. 2024-08-09 00:00:01 UTC.
CAPTURE_HOUR = "2024-08-08-23:00"
NEXT_HOUR = "2024-08-09-00:00"


def hour_us(key: str) -> int:
    return int(hour_start(key).timestamp()) * 1_000_000


def processed_capture() -> list[pb.Envelope]:
    """The capture's raw envelopes normalized record by record (what processed.* would hold)."""
    cat = InstrumentCatalog()
    cat.load_exchange_info("binance", "spot", ps.BTCUSDT_SPOT_INFO)
    norm = Normalizer(cat)
    out = []
    offsets: dict[str, int] = defaultdict(int)
    for env in ps.capture_raw_events():
        topic = ps.raw_topic(env)
        rec = encode(env)
        o = norm.process(topic, 0, offsets[topic], rec.value, rec.headers)
        offsets[topic] += 1
        if o.kind == "ok":
            out.append(o.env)
    return out


@dataclass
class CapturedLake:
    lake: LakeResource
    catalog: Catalog
    envelopes: list[pb.Envelope]


def write_lake(home: TicklakeHome, envelopes: list[pb.Envelope], seal: tuple[str, ...] = (CAPTURE_HOUR,)) -> CapturedLake:
    lake = LakeResource(uri=home.catalog_uri, warehouse=home.warehouse, name=home.catalog_name)
    tables = lake.ensure_tables()
    by_type: dict = defaultdict(list)
    for env in envelopes:
        by_type[event_type_from_pb(env.event_type)].append(env)
    for et, envs in by_type.items():
        table = tables[TABLES[et].name]
        # Several micro-batch files per hour, as the sink leaves them before sealing.
        for i in range(0, len(envs), 10_000):
            rows = envelopes_to_table(et, envs[i:i + 10_000])
            files = LakeFileWriter(table).write(rows)
            table = commit_files(table, files, {"writer": "test"}).refresh()
        for key in seal:
            seal_hour(table, hour_us(key))
    return CapturedLake(lake, lake.load_catalog(), envelopes)


def utc(key: str) -> datetime:
    return hour_start(key).astimezone(UTC)


def as_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)

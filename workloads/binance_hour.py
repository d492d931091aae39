"""The genuine Binance capture hour, taken through the platform's own code.

hftbacktest's Binance spot BTCUSDT capture (workloads/samples.py: BINANCE_SPOT_HFT) goes
through the collectors' own adapter (raw envelopes), the normalizer's record logic
(processed envelopes), the lake sink's file writer and the hour seal, exactly as the
platform would have it; no hand-made rows. Analytics tests and bench/bench_analytics.py
build on it.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pyiceberg.catalog import Catalog

from assets.partitions import hour_start
from collectors.exchanges.binance_instruments import parse_binance
from resources.lake import LakeResource
from runtime.home import TicklakeHome
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.instruments import by_native
from schemas.model import event_type_from_pb
from schemas.serde import encode
from schemas.tables import TABLES
from streaming.lake.seal import seal_hour
from streaming.lake.writer import LakeFileWriter, commit_files
from streaming.processors.instruments import InstrumentCatalog
from streaming.processors.normalizer import Normalizer
from workloads.kafka import raw_topic
from workloads.samples import BINANCE_SPOT_HFT

#: The capture runs 2024-08-08 23:54:14 .. 2024-08-09 00:00:01 UTC.
CAPTURE_HOUR = "2024-08-08-23:00"
NEXT_HOUR = "2024-08-09-00:00"

#: Binance /api/v3/exchangeInfo entry for BTCUSDT in the documented shape (values as the
#: venue published them for the capture's day: tick 0.01, lot 0.00001, 8 base decimals).
BTCUSDT_SPOT_INFO = {
    "timezone": "UTC",
    "serverTime": 1723161600000,
    "rateLimits": [],
    "exchangeFilters": [],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "baseAssetPrecision": 8,
            "quoteAsset": "USDT",
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "MARKET"],
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "0.01000000",
                    "maxPrice": "1000000.00000000",
                    "tickSize": "0.01000000",
                },
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            ],
        }
    ],
}


def hour_us(key: str) -> int:
    return int(hour_start(key).timestamp()) * 1_000_000


def utc(key: str) -> datetime:
    return hour_start(key).astimezone(UTC)


def capture_raw_events() -> list[pb.Envelope]:
    """Raw envelopes from the genuine Binance capture (see `_capture_raw_events`); fresh
    messages on every call, the replay itself runs once per process."""
    return [pb.Envelope.FromString(b) for b in _raw_capture_bytes()]


def processed_capture() -> list[pb.Envelope]:
    """The capture's raw envelopes normalized record by record (what processed.* would hold);
    fresh messages on every call, normalized once per process."""
    return [pb.Envelope.FromString(b) for b in _processed_capture_bytes()]


@functools.cache
def _raw_capture_bytes() -> tuple[bytes, ...]:
    """Several test modules and benchmarks build on the capture in one process; replaying and
    normalizing its 41k frames each time cost seconds of CPU per module. Kept serialized so no
    caller can change what the next one gets."""
    return tuple(env.SerializeToString() for env in _capture_raw_events())


@functools.cache
def _processed_capture_bytes() -> tuple[bytes, ...]:
    return tuple(env.SerializeToString() for env in _processed_capture())


def _capture_raw_events(receive_clock: Callable[[int], int] | None = None) -> list[pb.Envelope]:
    """Raw envelopes from the genuine Binance capture, through the collectors' own adapter
    with the venue's exchange info (the venue's one parser, collectors/exchanges/binance_instruments.py).
    `receive_clock` maps a record's captured receive time to the one the adapter is given
    (default: as captured; `ticklake up --replay` receives at wall-clock time, see
    `replayed_capture`).

    The capture holds one REST depth snapshot and no way to answer a resync request, so a
    single refused frame would silently end the book there (the adapter waits for a snapshot
    that never comes). Any dead letter or resync request is therefore a failure here, not
    data quietly lost to every test built on this helper."""
    from collectors.capture import REST, WS, detect, read, rest_params
    from collectors.exchanges.base import RestRequest
    from collectors.verify import adapter_for

    info = detect(BINANCE_SPOT_HFT)
    adapter = adapter_for(info)
    adapter.set_instruments(by_native(parse_binance(BTCUSDT_SPOT_INFO, futures=False)))
    events: list[pb.Envelope] = []
    dead: list[str] = []
    unserved: list[RestRequest] = []
    clock = receive_clock or (lambda us: us)
    for rec in read(info):
        if rec.kind == WS:
            out = adapter.on_frame(rec.payload, clock(rec.recv_ts_us))
            unserved += out.requests  # WS-triggered REST calls: resync snapshots
        elif rec.kind == REST:
            params = rest_params(rec.url)
            req = RestRequest(
                path=urlsplit(rec.url).path, params=tuple(params.items()), native_symbol=params.get("symbol", "")
            )
            out = adapter.on_rest(req, 200, rec.payload, clock(rec.recv_ts_us))
        else:
            continue
        dead += [d.reason for d in out.dead_letters]
        events.extend(out.events)
    resyncs = sum(st.stats.resyncs for st in adapter.states.values())
    # The first frame asks for the initial snapshot, which the capture holds; anything more is a resync.
    assert not dead and resyncs == 0 and len(unserved) <= 1, (
        f"capture replay lost data: {len(dead)} dead letters {dead[:3]}, {resyncs} resyncs, "
        f"{len(unserved)} REST requests from frames"
    )
    return events


def replayed_capture() -> list[pb.Envelope]:
    """The capture normalized as `ticklake up --replay` gets it: the collector talks to the
    venue emulator and stamps receive times with the wall clock, while the stream carries the
    capture's own event times (a spot REST depth snapshot carries none)."""
    return _processed_capture(_capture_raw_events(lambda _us: time.time_ns() // 1000))


def _processed_capture(raw: list[pb.Envelope] | None = None) -> list[pb.Envelope]:
    cat = InstrumentCatalog()
    cat.load_exchange_info("binance", "spot", BTCUSDT_SPOT_INFO)
    norm = Normalizer(cat)
    out = []
    offsets: dict[str, int] = defaultdict(int)
    for env in capture_raw_events() if raw is None else raw:
        topic = raw_topic(env)
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


def write_lake(
    home: TicklakeHome, envelopes: list[pb.Envelope], seal: tuple[str, ...] = (CAPTURE_HOUR,)
) -> CapturedLake:
    """The envelopes written to the home's lake in several micro-batch files per hour (as the
    sink leaves them), then the `seal` hours sealed."""
    lake = LakeResource(uri=home.catalog_uri, warehouse=home.warehouse, name=home.catalog_name)
    tables = lake.ensure_tables()
    by_type: dict = defaultdict(list)
    for env in envelopes:
        by_type[event_type_from_pb(env.event_type)].append(env)
    for et, envs in by_type.items():
        table = tables[TABLES[et].name]
        for i in range(0, len(envs), 10_000):
            rows = envelopes_to_table(et, envs[i : i + 10_000])
            files = LakeFileWriter(table).write(rows)
            table = commit_files(table, files, {"writer": "test"}).refresh()
        for key in seal:
            seal_hour(table, hour_us(key))
    return CapturedLake(lake, lake.load_catalog(), envelopes)

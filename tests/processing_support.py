"""Shared helpers of the stream-processing tests (normalizer, feature processor, runbook).

Each of those test modules starts its *own* broker: the processors read and write the
project's fixed topic names (schemas/topics.py), which other suites on the session broker
also produce to, and a test that counts records must know exactly what went in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from confluent_kafka import Producer

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.instruments import InstrumentRef, by_native, parse_binance
from schemas.model import EventType, Exchange, Market, event_type_from_pb
from schemas.topics import event_topic
from streaming import kafka_config as kc
from streaming.instruments import InstrumentCatalog
from streaming.kafka_io import partitions_for, plain_consumer, read_all
from streaming.serde import encode
from streaming.topic_admin import admin_client, ensure_topics
from streaming.topic_config import TopicConfig
from tests.synthetic_events import DEFAULT_INSTRUMENTS

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"
HFT_CAPTURE = SAMPLES / "binance" / "hftbacktest_spot_btcusdt_20240808.gz"

#: Binance /api/v3/exchangeInfo entry for BTCUSDT in the documented shape (values as the
#: venue published them for the capture's day: tick 0.01, lot 0.00001, 8 base decimals).
BTCUSDT_SPOT_INFO = {
    "timezone": "UTC", "serverTime": 1723161600000, "rateLimits": [], "exchangeFilters": [],
    "symbols": [{
        "symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "baseAssetPrecision": 8,
        "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
             "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
             "stepSize": "0.00001000"},
        ],
    }],
}


def connection(bootstrap: str) -> kc.KafkaConnection:
    return kc.connection_from_env(bootstrap_servers=bootstrap)


def create_project_topics(bootstrap: str, exchanges=("binance",), markets=("spot",), partitions: int = 2):
    cfg = TopicConfig.local(partitions).with_overrides({"exchanges": list(exchanges), "markets": list(markets)})
    return ensure_topics(admin_client(bootstrap), cfg)


def synthetic_catalog() -> InstrumentCatalog:
    return InstrumentCatalog(
        InstrumentRef(i.exchange.value, i.market.value, i.native, i.symbol, i.symbol.split("-")[0],
                      i.symbol.split("-")[1], "0." + "0" * (i.price_scale - 1) + "1",
                      "0." + "0" * (i.size_scale - 1) + "1", "TRADING")
        for i in DEFAULT_INSTRUMENTS)


def raw_topic(env: pb.Envelope) -> str:
    from schemas.model import exchange_from_pb, market_from_pb
    return event_topic("raw", market_from_pb(env.market), event_type_from_pb(env.event_type),
                       exchange_from_pb(env.exchange))


def produce(bootstrap: str, items: Iterable[tuple]) -> int:
    """Items are (topic, key, value, headers[, timestamp_ms])."""
    p = Producer(kc.producer_config(connection(bootstrap), linger_ms=5))
    n = 0
    for topic, key, value, headers, *ts in items:
        p.produce(topic, value=value, key=key, headers=headers, timestamp=ts[0] if ts else 0)
        n += 1
        if n % 5000 == 0:
            p.flush()
    assert p.flush(30) == 0
    return n


def produce_raw(bootstrap: str, envs: Iterable[pb.Envelope]) -> int:
    def items():
        for e in envs:
            r = encode(e)
            yield raw_topic(e), r.key, r.value, r.headers
    return produce(bootstrap, items())


def read_topics(bootstrap: str, topics: list[str], group: str = "test-reader") -> list:
    c = plain_consumer(connection(bootstrap), group)
    try:
        return read_all(c, partitions_for(c, topics))
    finally:
        c.close()


def capture_raw_events() -> list[pb.Envelope]:
    """Raw envelopes from the genuine Binance capture, through the collectors' own adapter
    with the venue's exchange info (the shared parser of schemas/instruments.py).

    The capture holds one REST depth snapshot and no way to answer a resync request, so a
    single refused frame would silently end the book there (the adapter waits for a snapshot
    that never comes). Any dead letter or resync request is therefore a failure here, not
    data quietly lost to every test built on this helper."""
    from collectors.capture import REST, WS, detect, read, rest_params
    from collectors.exchanges.base import RestRequest
    from collectors.verify import adapter_for

    info = detect(HFT_CAPTURE)
    adapter = adapter_for(info)
    adapter.set_instruments(by_native(parse_binance(BTCUSDT_SPOT_INFO, futures=False)))
    events: list[pb.Envelope] = []
    dead: list[str] = []
    unserved: list[RestRequest] = []
    for rec in read(info):
        if rec.kind == WS:
            out = adapter.on_frame(rec.payload, rec.recv_ts_us)
            unserved += out.requests          # WS-triggered REST calls: resync snapshots
        elif rec.kind == REST:
            params = rest_params(rec.url)
            req = RestRequest(path=urlsplit(rec.url).path, params=tuple(params.items()),
                              native_symbol=params.get("symbol", ""))
            out = adapter.on_rest(req, 200, rec.payload, rec.recv_ts_us)
        else:
            continue
        dead += [d.reason for d in out.dead_letters]
        events.extend(out.events)
    resyncs = sum(st.stats.resyncs for st in adapter.states.values())
    # The first frame asks for the initial snapshot, which the capture holds; anything more is a resync.
    assert not dead and resyncs == 0 and len(unserved) <= 1, (
        f"capture replay lost data: {len(dead)} dead letters {dead[:3]}, {resyncs} resyncs, "
        f"{len(unserved)} REST requests from frames")
    return events


def run_module(module: str, args: list[str], bootstrap: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), kc.KAFKA_BOOTSTRAP_ENV: bootstrap}
    fh = open(log, "ab")  # noqa: SIM115 - the child process writes to it after we return
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {path} appeared:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_exit(proc: subprocess.Popen, timeout: float, log: Path) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError("processor did not finish:\n" + log.read_text()[-3000:]) from None
    assert rc == 0, log.read_text()[-3000:]


def feature_input_types() -> tuple[EventType, ...]:
    return (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)


def processed_feature_topics(market: Market = Market.SPOT, exchange: Exchange = Exchange.BINANCE) -> list[str]:
    return [event_topic("processed", market, et, exchange) for et in feature_input_types()]

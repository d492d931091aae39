"""Normalizer: instrument reference data, per-record rules, and raw -> processed on a real
broker (from the genuine Binance capture), including kill -9 inside a transaction."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from collectors.exchanges.binance_instruments import parse_binance
from collectors.exchanges.bybit_instruments import parse_bybit
from collectors.exchanges.okx_instruments import parse_okx
from runtime.dlq import parse_dead_letter
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.model import EventType, Exchange, Market
from schemas.serde import decode, encode
from schemas.topics import dlq_topic, event_topic
from streaming.processors.dedup import OffsetWindowDedup
from streaming.processors.instruments import InstrumentCatalog, fetch_instruments
from streaming.processors.normalizer import (
    Normalizer,
    NormalizerService,
    build_catalog,
    input_topics_for,
)
from tests.support import processing as ps
from tests.support.envelopes import envelope
from workloads.binance_hour import BTCUSDT_SPOT_INFO, capture_raw_events
from workloads.kafka import (
    connection,
    produce,
    produce_raw,
    raw_topic,
)
from workloads.samples import BINANCE_SPOT_HFT
from workloads.synthetic import SyntheticMarket, synthetic_catalog

RAW_TRADES = event_topic("raw", "spot", EventType.TRADE, "binance")


# -- reference data ------------------------------------------------------------------------

BINANCE_FAPI = {
    "timezone": "UTC",
    "serverTime": 1,
    "rateLimits": [],
    "exchangeFilters": [],
    "assets": [],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "pair": "BTCUSDT",
            "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "status": "TRADING",
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "marginAsset": "USDT",
            "pricePrecision": 2,
            "quantityPrecision": 3,
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.10", "minPrice": "556.80", "maxPrice": "4529764"},
                {"filterType": "LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": "1000"},
            ],
        },
        {
            "symbol": "BTCUSDT_240927",
            "pair": "BTCUSDT",
            "contractType": "CURRENT_QUARTER",
            "deliveryDate": 1727424000000,
            "status": "TRADING",
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "pricePrecision": 1,
            "quantityPrecision": 3,
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.1"},
                {"filterType": "LOT_SIZE", "stepSize": "0.001"},
            ],
        },
    ],
}

BYBIT_LINEAR = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {
        "category": "linear",
        "nextPageCursor": "",
        "list": [
            {
                "symbol": "BTCUSDT",
                "contractType": "LinearPerpetual",
                "status": "Trading",
                "baseCoin": "BTC",
                "quoteCoin": "USDT",
                "launchTime": "1585526400000",
                "deliveryTime": "0",
                "priceScale": "2",
                "priceFilter": {"minPrice": "0.10", "maxPrice": "199999.80", "tickSize": "0.10"},
                "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001", "qtyStep": "0.001"},
                "settleCoin": "USDT",
            },
            {
                "symbol": "BTCPERP",
                "contractType": "LinearPerpetual",
                "status": "Trading",
                "baseCoin": "BTC",
                "quoteCoin": "USDC",
                "deliveryTime": "0",
                "priceFilter": {"tickSize": "0.50"},
                "lotSizeFilter": {"qtyStep": "0.001"},
                "settleCoin": "USDC",
            },
            {
                "symbol": "BTC-27DEC24",
                "contractType": "LinearFutures",
                "status": "Trading",
                "baseCoin": "BTC",
                "quoteCoin": "USDC",
                "deliveryTime": "1735286400000",
                "priceFilter": {"tickSize": "0.50"},
                "lotSizeFilter": {"qtyStep": "0.001"},
                "settleCoin": "USDC",
            },
        ],
    },
    "retExtInfo": {},
    "time": 1,
}

BYBIT_SPOT = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {
        "category": "spot",
        "list": [
            {
                "symbol": "BTCUSDT",
                "baseCoin": "BTC",
                "quoteCoin": "USDT",
                "innovation": "0",
                "status": "Trading",
                "marginTrading": "both",
                "lotSizeFilter": {
                    "basePrecision": "0.000001",
                    "quotePrecision": "0.00000001",
                    "minOrderQty": "0.000048",
                    "maxOrderQty": "71.73956243",
                },
                "priceFilter": {"tickSize": "0.01"},
            }
        ],
    },
    "retExtInfo": {},
    "time": 1,
}

OKX = {
    "code": "0",
    "msg": "",
    "data": [
        {
            "instType": "SPOT",
            "instId": "BTC-USDT",
            "baseCcy": "BTC",
            "quoteCcy": "USDT",
            "settleCcy": "",
            "ctVal": "",
            "uly": "",
            "instFamily": "",
            "tickSz": "0.1",
            "lotSz": "0.00000001",
            "minSz": "0.00001",
            "state": "live",
        },
        {
            "instType": "SWAP",
            "instId": "BTC-USDT-SWAP",
            "baseCcy": "",
            "quoteCcy": "",
            "settleCcy": "USDT",
            "ctVal": "0.01",
            "ctValCcy": "BTC",
            "ctType": "linear",
            "uly": "BTC-USDT",
            "instFamily": "BTC-USDT",
            "tickSz": "0.1",
            "lotSz": "0.01",
            "state": "live",
        },
        {
            "instType": "FUTURES",
            "instId": "BTC-USD-240927",
            "uly": "BTC-USD",
            "instFamily": "BTC-USD",
            "ctVal": "100",
            "ctValCcy": "USD",
            "settleCcy": "BTC",
            "tickSz": "0.1",
            "lotSz": "1",
            "expTime": "1727424000000",
            "state": "live",
        },
    ],
}


def test_exchange_info_bodies_parse_into_reference_data():
    spot = {r.native: r for r in parse_binance(BTCUSDT_SPOT_INFO, futures=False)}
    assert spot["BTCUSDT"].canonical == "BTC-USDT"
    assert (spot["BTCUSDT"].price_scale, spot["BTCUSDT"].size_scale) == (2, 8)  # baseAssetPrecision wins
    fut = {r.native: r for r in parse_binance(BINANCE_FAPI, futures=True)}
    assert fut["BTCUSDT"].canonical == "BTC-USDT-PERP" and fut["BTCUSDT"].tick_size == "0.10"
    assert fut["BTCUSDT_240927"].canonical == "BTC-USDT-240927" and fut["BTCUSDT_240927"].market == "future"
    by = {r.native: r for r in parse_bybit(BYBIT_LINEAR)}
    assert by["BTCUSDT"].canonical == "BTC-USDT-PERP" and by["BTCUSDT"].lot_units(3) == 1
    assert by["BTCPERP"].canonical == "BTC-USDC-PERP" and by["BTCPERP"].tick_units(2) == 50
    assert by["BTC-27DEC24"].canonical == "BTC-USDC-241227"
    bs = parse_bybit(BYBIT_SPOT)[0]
    assert (bs.canonical, bs.lot_size, bs.size_scale) == ("BTC-USDT", "0.000001", 6)
    ok = {r.native: r for r in parse_okx(OKX)}
    assert ok["BTC-USDT"].canonical == "BTC-USDT" and ok["BTC-USDT"].size_scale == 8
    assert ok["BTC-USDT-SWAP"].canonical == "BTC-USDT-PERP" and ok["BTC-USDT-SWAP"].contract_value == "0.01"
    assert ok["BTC-USD-240927"].canonical == "BTC-USD-240927"
    with pytest.raises(ValueError):
        parse_bybit({"retCode": 10001, "retMsg": "params error"})
    with pytest.raises(ValueError):
        parse_okx(b"<html>")


class _Venue(BaseHTTPRequestHandler):
    """Serves exchange-info bodies; Bybit linear comes in two pages (cursor)."""

    def do_GET(self):
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/v5/market/instruments-info" and q.get("category") == "linear":
            lst = BYBIT_LINEAR["result"]["list"]
            if q.get("cursor") == "page2":
                page = {**BYBIT_LINEAR, "result": {"category": "linear", "list": lst[1:], "nextPageCursor": ""}}
            else:
                page = {**BYBIT_LINEAR, "result": {"category": "linear", "list": lst[:1], "nextPageCursor": "page2"}}
            body = page
        elif u.path == "/v5/market/instruments-info" and q.get("category") == "inverse":
            body = {"retCode": 0, "retMsg": "OK", "result": {"category": "inverse", "list": [], "nextPageCursor": ""}}
        elif u.path == "/api/v3/exchangeInfo":
            body = BTCUSDT_SPOT_INFO
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_catalog_fetched_over_http_and_cached(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Venue)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}"
    try:
        perps = fetch_instruments(Exchange.BYBIT, Market.PERP, url)
        assert sorted(r.native for r in perps) == ["BTCPERP", "BTCUSDT"]  # both pages, futures filtered out
        cache = tmp_path / "instruments.json"
        cat, _ = build_catalog(
            str(cache), {(Exchange.BINANCE, Market.SPOT): url}, venues=[(Exchange.BINANCE, Market.SPOT)]
        )
        assert cat.get("binance", "spot", "btcusdt").canonical == "BTC-USDT"
        assert InstrumentCatalog.load(cache).get("binance", "spot", "BTCUSDT") == cat.get("binance", "spot", "BTCUSDT")
    finally:
        srv.shutdown()


# -- per-record rules -----------------------------------------------------------------------


def _catalog() -> InstrumentCatalog:
    cat = InstrumentCatalog()
    cat.load_exchange_info("binance", "perp", BINANCE_FAPI)
    return cat


def _raw(env: pb.Envelope, topic: str | None = None, et: EventType | None = None):
    r = encode(env)
    return (topic or event_topic("raw", "perp", et or EventType.TRADE, "binance")), r.value, r.headers


def _with(env: pb.Envelope, fn) -> pb.Envelope:
    e = pb.Envelope()
    e.CopyFrom(env)
    fn(e)
    return stamp_event_id(e)


def test_dedup_window_spans_input_offsets_not_ids():
    d = OffsetWindowDedup(span=3)
    assert d.first_time(10, "a") is True
    assert d.first_time(11, "b") is True
    assert d.first_time(13, "a") is False  # offset 10 is within the 3 offsets before 13
    assert d.first_time(14, "a") is True  # offset 10 fell out of the span: "a" is new again
    assert d.duplicates == 1
    assert len(d) == 2 and "b" in d  # b (offset 11) is still inside the span ending at 14


def test_records_are_enriched_or_refused_with_a_reason():
    n = Normalizer(_catalog())
    good = _with(
        envelope(EventType.TRADE, 0), lambda e: (setattr(e.trade, "px", 6000010), setattr(e, "symbol", "BTC-USDT"))
    )
    topic, value, headers = _raw(good)
    o = n.process(topic, 0, 0, value, headers)
    assert o.kind == "ok" and o.topic == "processed.perp.trades.binance"
    e = o.env
    assert e.symbol == "BTC-USDT-PERP"  # canonical from reference data
    assert (e.price_scale, e.tick_size, e.size_scale, e.lot_size) == (1, 1, 3, 1)  # tick "0.10"
    assert e.trade.px == 600001
    assert e.ingest_latency_us == good.ingest_ts - good.exchange_ts == 350
    assert decode(encode(e).value, verify_id=True).event_id == e.event_id
    assert n.process(topic, 0, 1, value, headers).kind == "duplicate"

    offsets = itertools.count(10)

    def reason(env, et=EventType.TRADE, topic=None):
        t, v, h = _raw(env, topic, et)
        out = n.process(t, 0, next(offsets), v, h)
        assert out.kind == "dlq", out
        return out.reason.split(":")[0]

    snap = _with(envelope(EventType.BOOK_SNAPSHOT, 1), lambda e: e.book_snapshot.bids[0].__setattr__("px", 7000000))
    assert reason(snap, EventType.BOOK_SNAPSHOT) == "book"  # crossed
    assert reason(_with(good, lambda e: setattr(e.trade, "px", 6000011)), EventType.TRADE) == "off_grid"
    assert reason(_with(good, lambda e: setattr(e.trade, "qty", 0))) == "range"
    # (native_symbol is not part of the event_id, so the time moves too: otherwise a duplicate)
    assert (
        reason(
            _with(
                good, lambda e: (setattr(e, "native_symbol", "DOGEUSDT"), setattr(e, "exchange_ts", e.exchange_ts + 1))
            )
        )
        == "unknown_instrument"
    )
    assert reason(_with(good, lambda e: setattr(e, "exchange_ts", e.ingest_ts + 60_000_000))) == "ts_range"
    assert reason(good, topic="raw.spot.trades.binance") == "mismatch"
    assert reason(_with(good, lambda e: setattr(e, "seq", 1)), EventType.TRADE) == "seq_regression"
    t, _, h = _raw(good)
    assert n.process(t, 0, 99, b"\x08\x96\x01garbage", h).reason.startswith("decode:")
    assert n.process("raw.nonsense", 0, 100, b"x", None).reason.startswith("bad_topic:")
    assert n.counters.counts["decode"] == 1 and n.counters.total == 9


# -- on the broker ----------------------------------------------------------------------------


def _expected(raw_msgs, catalog) -> dict[str, bytes]:
    """What the normalizer must publish: the pure logic over the same records in partition order."""
    n = Normalizer(catalog)
    out: dict[str, bytes] = {}
    for m in sorted(raw_msgs, key=lambda m: (m.topic(), m.partition(), m.offset())):
        o = n.process(m.topic(), m.partition(), m.offset(), m.value(), m.headers())
        if o.kind == "ok":
            out[o.env.event_id] = encode(o.env).value
    return out


def _processed(bootstrap) -> list:
    topics = list(input_topics_for(["binance"], ["spot"]))
    return ps.read_topics(bootstrap, [t.replace("raw.", "processed.", 1) for t in topics])


def test_capture_normalized_on_the_broker_with_duplicates_and_malformed_records(broker):
    cat = InstrumentCatalog()
    cat.load_exchange_info("binance", "spot", BTCUSDT_SPOT_INFO)
    events = capture_raw_events()
    assert len(events) > 30_000
    produce_raw(broker.bootstrap, events)
    produce_raw(broker.bootstrap, events[1000:1200])  # a collector overlap
    bad_snapshot = _with(
        next(e for e in events if e.event_type == EventType.BOOK_SNAPSHOT.pb),
        lambda e: e.book_snapshot.bids[0].__setattr__("px", e.book_snapshot.asks[0].px),
    )
    produce_raw(broker.bootstrap, [bad_snapshot])
    produce(broker.bootstrap, [(RAW_TRADES, b"BTC-USDT", b"\xff\x00not protobuf", None)])
    svc = NormalizerService(connection(broker.bootstrap), Normalizer(cat), input_topics_for(["binance"], ["spot"]))
    stats = svc.run(idle_exit_s=2.0)
    assert stats.records_in == len(events) + 200 + 2

    processed = _processed(broker.bootstrap)
    ids = Counter(decode(m.value(), m.headers(), verify_id=True).event_id for m in processed)
    assert len(ids) == len(processed) == len(events)  # duplicates removed
    env = decode(processed[0].value(), processed[0].headers())
    assert env.symbol == "BTC-USDT" and env.tick_size == 1 and env.size_scale == 8 and env.lot_size == 1000
    by_type = Counter(m.topic() for m in processed)
    assert by_type["processed.spot.trades.binance"] == sum(e.event_type == EventType.TRADE.pb for e in events)
    dlq = [parse_dead_letter(m.value()) for m in ps.read_topics(broker.bootstrap, [dlq_topic("normalize")])]
    assert sorted(d.reason.split(":")[0] for d in dlq) == ["book", "decode"]
    assert all(d.stage == "normalize" and d.source.startswith("raw.spot.") and d.raw for d in dlq)
    raw = ps.read_topics(broker.bootstrap, input_topics_for(["binance"], ["spot"]))
    assert {decode(m.value()).event_id: m.value() for m in processed} == _expected(raw, cat)


def test_kill_9_inside_a_transaction_then_restart_publishes_each_record_once(broker, tmp_path):
    cache = tmp_path / "instruments.json"
    synthetic_catalog().save(cache)
    events = SyntheticMarket(seed=21).events(9000, 300)
    produce_raw(broker.bootstrap, events)
    hold, log = tmp_path / "in-txn", tmp_path / "normalizer.log"
    args = ["--exchange", "binance", "--market", "spot", "--instruments-cache", str(cache), "--batch-max-ms", "50"]
    first = ps.run_module(
        "streaming.processors.normalizer",
        args + ["--test-hold-in-txn", str(hold), "--test-hold-after-batches", "2"],
        broker.bootstrap,
        log,
    )
    ps.wait_for_file(hold, first, log=log)
    ps.kill9(first)  # open transaction, its records already in the log
    second = ps.run_module("streaming.processors.normalizer", args + ["--idle-exit-s", "3"], broker.bootstrap, log)
    ps.wait_exit(second, 180, log)

    processed = _processed(broker.bootstrap)
    copies: dict[str, set[bytes]] = defaultdict(set)
    for m in processed:
        copies[decode(m.value(), m.headers()).event_id].add(m.value())
    raw = ps.read_topics(broker.bootstrap, input_topics_for(["binance"], ["spot"]))
    expected = _expected(raw, synthetic_catalog())
    assert len(expected) == len(events)
    assert set(copies) == set(expected)  # nothing missing, nothing extra
    assert all(v == {expected[k]} for k, v in copies.items())  # every copy byte-identical
    # the killed transaction had flushed its records and this broker shows them: some are read twice
    assert len(processed) > len(expected)


def test_reference_data_from_the_replay_emulator_enriches_captured_events(tmp_path):
    """The emulator serves each venue's exchange-info endpoint for what its feeds carry; the
    normalizer's catalog is fetched from there over HTTP (as `ticklake up --replay` does)."""
    import asyncio

    from collectors.replay import Emulator

    async def fetch_catalog():
        emu = Emulator()
        emu.play_capture(BINANCE_SPOT_HFT, speed=None, gate=False)
        async with emu:
            url = emu.rest_base(Exchange.BINANCE, Market.SPOT)
            for _ in range(100):  # the feed registers its instruments as it starts
                cat, _ = await asyncio.to_thread(
                    build_catalog,
                    str(tmp_path / "i.json"),
                    {(Exchange.BINANCE, Market.SPOT): url},
                    [(Exchange.BINANCE, Market.SPOT)],
                )
                if len(cat):
                    return cat
                (tmp_path / "i.json").unlink(missing_ok=True)
                await asyncio.sleep(0.1)
        raise AssertionError("emulator never listed an instrument")

    cat = asyncio.run(fetch_catalog())
    ref = cat.get("binance", "spot", "BTCUSDT")
    assert ref.canonical == "BTC-USDT" and ref.tick_size.rstrip("0") == "0.01"
    n = Normalizer(cat)
    events = capture_raw_events()[:3000]
    outs = []
    for i, e in enumerate(events):
        r = encode(e)
        outs.append(n.process(raw_topic(e), 0, i, r.value, r.headers))
    assert [o.reason for o in outs if o.kind != "ok"] == []
    assert {(o.env.symbol, o.env.tick_size, o.env.price_scale) for o in outs} == {("BTC-USDT", 1, 2)}

"""Production mode: adapters with the venues' exchange info loaded (genuine instrument bodies
from ../shared/samples/reference, read at test time) still publish every mark, index and
funding price -- the collector and the normalizer both accept them, none goes to a DLQ.

Binance ships no genuine exchangeInfo sample, so its body is written here in the documented
/fapi/v1/exchangeInfo shape (BTCUSDT's real tick 0.10 / step 0.001 / precisions 2 and 3).
"""

from __future__ import annotations

import json
from decimal import Decimal

from collectors.exchanges.base import RestRequest
from collectors.exchanges.binance import BinanceUsdmAdapter
from collectors.exchanges.bybit import BybitAdapter
from collectors.exchanges.okx import OkxAdapter
from schemas.model import EventType, event_type_from_pb, market_from_pb
from schemas.serde import encode
from schemas.topics import event_topic
from streaming.processors.instruments import InstrumentCatalog
from streaming.processors.normalizer import Normalizer
from tests.support.adapters import dec
from workloads.samples import (
    BINANCE_USDM_TARDIS,
    BYBIT_TARDIS_DERIV,
    OKX_TARDIS_SWAP,
    SAMPLES,
)

OKX_SWAP_BODY = SAMPLES / "reference" / "nautilus_okx_instruments_swap.json"
BYBIT_INVERSE_BODY = SAMPLES / "reference" / "nautilus_bybit_instruments_inverse.json"

BINANCE_FAPI_BODY = json.dumps(
    {
        "timezone": "UTC",
        "serverTime": 1597536008000,
        "symbols": [
            {
                "symbol": "BTCUSDT",
                "pair": "BTCUSDT",
                "contractType": "PERPETUAL",
                "status": "TRADING",
                "baseAsset": "BTC",
                "quoteAsset": "USDT",
                "marginAsset": "USDT",
                "pricePrecision": 2,
                "quantityPrecision": 3,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764", "tickSize": "0.10"},
                    {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                ],
            },
            {
                "symbol": "BTCBUSD_210129",
                "pair": "BTCBUSD",
                "contractType": "CURRENT_QUARTER",
                "status": "TRADING",
                "baseAsset": "BTC",
                "quoteAsset": "BUSD",
                "marginAsset": "BUSD",
                "pricePrecision": 1,
                "quantityPrecision": 3,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "576.3", "maxPrice": "1000000", "tickSize": "0.1"},
                    {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "500", "stepSize": "0.001"},
                ],
            },
        ],
    }
)

INSTRUMENTS = RestRequest(path="/instruments", params=(), purpose="instruments")


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _load(adapter, body: bytes | str):
    res = adapter.on_rest(INSTRUMENTS, 200, body.encode() if isinstance(body, str) else body, 1)
    assert res.dead_letters == [] and adapter.specs, res.dead_letters
    return adapter


def _normalized(adapter, events, body, recv_us):
    """Every event through the normalizer with a catalog from the same exchange-info body."""
    cat = InstrumentCatalog()
    cat.load_exchange_info(
        adapter.exchange,
        adapter.market,
        body,
        **({"category": adapter.category} if isinstance(adapter, BybitAdapter) else {}),
    )
    norm = Normalizer(cat)
    outs = []
    for i, env in enumerate(events):
        env.ingest_ts = max(env.ingest_ts, recv_us)
        rec = encode(env)
        topic = event_topic("raw", market_from_pb(env.market), event_type_from_pb(env.event_type), adapter.exchange)
        outs.append(norm.process(topic, 0, i, rec.value, rec.headers))
    return outs


def test_binance_usdm_mark_and_funding_with_exchange_info():
    ad = _load(BinanceUsdmAdapter(), BINANCE_FAPI_BODY)
    assert ad.specs["BTCUSDT"].price_scale == 1
    events = []
    for f in _lines(BINANCE_USDM_TARDIS):
        if f.get("generated") or f["data"].get("e") != "markPriceUpdate":
            continue
        res = ad.on_frame(json.dumps(f), f["data"]["E"] * 1000 + 1)
        assert res.dead_letters == [], res.dead_letters[0].reason
        raw = f["data"]
        (mark,) = [e for e in res.events if e.event_type == EventType.MARK_PRICE.pb]
        assert dec(mark.mark_price.mark_px, mark.price_scale) == Decimal(raw["p"])
        if raw.get("i"):
            assert dec(mark.mark_price.index_px, mark.price_scale) == Decimal(raw["i"])
        if raw.get("P"):
            assert dec(mark.mark_price.estimated_settle_px, mark.price_scale) == Decimal(raw["P"])
        for fund in (e for e in res.events if e.event_type == EventType.FUNDING.pb):
            assert dec(fund.funding.mark_px, fund.price_scale) == Decimal(raw["p"])
        events += res.events
    kinds = {event_type_from_pb(e.event_type) for e in events}
    assert kinds == {EventType.MARK_PRICE, EventType.FUNDING} and len(events) >= 4
    outs = _normalized(ad, events, BINANCE_FAPI_BODY, 2_000_000_000_000_000)
    assert [o.kind for o in outs] == ["ok"] * len(events), [o.reason for o in outs if o.kind != "ok"]


def test_bybit_inverse_tickers_mark_index_funding_with_genuine_instruments():
    body = BYBIT_INVERSE_BODY.read_bytes()
    ad = _load(BybitAdapter(category="inverse"), body)
    assert ad.specs["BTCUSD"].price_scale == 1  # tickSize 0.5
    events = []
    frames = [f for f in _lines(BYBIT_TARDIS_DERIV) if f.get("topic") == "tickers.BTCUSD"]
    assert len(frames) == 2  # snapshot + delta
    for f in frames:
        res = ad.on_frame(json.dumps(f), f["ts"] * 1000 + 1)
        assert res.dead_letters == [], res.dead_letters[0].reason
        events += res.events
    by_type = {}
    for e in events:
        by_type.setdefault(event_type_from_pb(e.event_type), []).append(e)
    assert set(by_type) == {EventType.TICKER, EventType.MARK_PRICE, EventType.FUNDING}
    snap = frames[0]["data"]
    mark = by_type[EventType.MARK_PRICE][0]
    assert dec(mark.mark_price.index_px, mark.price_scale) == Decimal(snap["indexPrice"])  # "28566.94"
    assert dec(mark.mark_price.mark_px, mark.price_scale) == Decimal(snap["markPrice"])
    tk = by_type[EventType.TICKER][-1]
    assert tk.price_scale == 1 and dec(tk.ticker.bid_px, 1) == Decimal(frames[1]["data"]["bid1Price"])
    outs = _normalized(ad, events, body, 2_000_000_000_000_000)
    assert [o.kind for o in outs] == ["ok"] * len(events), [o.reason for o in outs if o.kind != "ok"]


def test_okx_mark_price_with_genuine_instruments():
    """The genuine OKX mark-price frame (WNCG-USDT-SWAP, markPx "2.1729") moved onto an
    instrument the genuine body lists (ETH-USDT-SWAP, tickSz 0.01): a mark price finer than
    the tick must still be published."""
    body = OKX_SWAP_BODY.read_bytes()
    ad = _load(OkxAdapter(), body)
    assert ad.specs["ETH-USDT-SWAP"].price_scale == 2
    (frame,) = [f for f in _lines(OKX_TARDIS_SWAP) if f.get("arg", {}).get("channel") == "mark-price"]
    text = json.dumps(frame).replace("WNCG-USDT-SWAP", "ETH-USDT-SWAP")
    res = ad.on_frame(text, 1_700_000_000_000_000)
    assert res.dead_letters == [], res.dead_letters[0].reason
    (env,) = res.events
    assert env.price_scale == 4 and dec(env.mark_price.mark_px, 4) == Decimal(frame["data"][0]["markPx"])
    outs = _normalized(ad, res.events, body, 2_000_000_000_000_000)
    assert [o.kind for o in outs] == ["ok"], outs[0].reason


def test_one_padded_mark_price_does_not_widen_the_scale_for_the_session():
    """Without exchange info: a mark price printed with 18 decimals of padding once must not
    make every later mark price overflow int64 at scale 18 (they were all dead-lettered)."""
    ad = BinanceUsdmAdapter()
    frame = {
        "stream": "btcusdt@markPrice@1s",
        "data": {
            "e": "markPriceUpdate",
            "E": 1597536008000,
            "s": "BTCUSDT",
            "p": "11857.560000000000000000",
            "i": "11851.86949091",
            "r": "0.00015640",
            "T": 1597564800000,
        },
    }
    first = ad.on_frame(json.dumps(frame), 1)
    frame["data"]["p"], frame["data"]["E"] = "11858.12000000", 1597536009000
    second = ad.on_frame(json.dumps(frame), 2)
    for res in (first, second):
        assert res.dead_letters == [] and len(res.events) == 2
    assert [e.price_scale for e in first.events + second.events] == [8, 8, 8, 8]
    assert second.events[0].mark_price.mark_px == 1185812000000

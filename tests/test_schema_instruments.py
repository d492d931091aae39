"""One instrument reference rule for both layers: what the collectors' adapters lock as raw
scales from an exchange-info body equals what the normalizer's catalog derives from it."""

from __future__ import annotations

import json

import pytest

from collectors.exchanges.base import RestRequest
from collectors.exchanges.binance import BinanceSpotAdapter, BinanceUsdmAdapter
from collectors.exchanges.binance_instruments import parse_binance
from collectors.exchanges.bybit import BybitAdapter
from collectors.exchanges.okx import OkxAdapter
from schemas.instruments import InstrumentDataError, by_native
from streaming.processors.instruments import InstrumentCatalog
from tests import test_normalizer as tn
from workloads.binance_hour import BTCUSDT_SPOT_INFO

INFO_REQ = RestRequest(path="/info", params=(), purpose="instruments")


def _adapter_specs(adapter, body) -> dict:
    res = adapter.on_rest(INFO_REQ, 200, json.dumps(body).encode(), 1)
    assert res.dead_letters == []
    return adapter.specs


@pytest.mark.parametrize(
    "adapter, exchange, market, body, category",
    [
        (BinanceSpotAdapter(), "binance", "spot", BTCUSDT_SPOT_INFO, None),
        (BinanceUsdmAdapter(), "binance", "perp", tn.BINANCE_FAPI, None),
        (BybitAdapter(category="linear"), "bybit", "perp", tn.BYBIT_LINEAR, None),
        (BybitAdapter(category="spot"), "bybit", "spot", tn.BYBIT_SPOT, None),
        (OkxAdapter(), "okx", "spot", tn.OKX, None),
    ],
)
def test_collector_and_catalog_scales_come_from_one_rule(adapter, exchange, market, body, category):
    specs = _adapter_specs(adapter, body)
    cat = InstrumentCatalog()
    cat.load_exchange_info(exchange, market, body, category)
    assert specs and len(specs) == len(cat)
    for native, spec in specs.items():
        ref = cat.get(spec.exchange, spec.market, native)
        assert ref is not None and (spec.price_scale, spec.size_scale) == (ref.price_scale, ref.size_scale)
        assert (spec.base, spec.quote, spec.canonical) == (ref.base, ref.quote, ref.canonical)


def test_binance_spot_size_scale_holds_book_quantities_finer_than_the_lot():
    (ref,) = parse_binance(BTCUSDT_SPOT_INFO, futures=False)
    assert (ref.lot_size, ref.price_scale, ref.size_scale) == ("0.00001000", 2, 8)
    ad = BinanceSpotAdapter(instruments=by_native([ref]))
    # A depth diff as the genuine capture carries it: a quantity with 6 significant decimals.
    res = ad.on_frame(
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9,'
        b'"p":"61737.63000000","q":"25.42618900","T":2,"m":true}}',
        3,
    )
    assert res.dead_letters == [] and res.events[0].trade.qty == 2_542_618_900


def test_unusable_entries_are_left_out_and_counted_bad_bodies_dead_lettered():
    odd = {"symbol": "X", "baseAsset": "X", "quoteAsset": "USDT", "filters": []}  # no PRICE_FILTER
    body = {**BTCUSDT_SPOT_INFO, "symbols": [*BTCUSDT_SPOT_INFO["symbols"], odd]}
    with pytest.raises(InstrumentDataError, match="PRICE_FILTER"):
        parse_binance(body, futures=False)
    rejects: list[str] = []
    assert [r.native for r in parse_binance(body, futures=False, rejects=rejects)] == ["BTCUSDT"]
    assert len(rejects) == 1 and "PRICE_FILTER" in rejects[0]

    ad = BinanceSpotAdapter()
    res = ad.on_rest(INFO_REQ, 200, json.dumps(body).encode(), 1)
    assert res.dead_letters == [] and list(ad.specs) == ["BTCUSDT"]
    assert ad.ignored == {"instrument entry unusable": 1}
    res = ad.on_rest(INFO_REQ, 200, b'{"code":-1003,"msg":"Too many requests"}', 2)
    assert len(res.dead_letters) == 1 and "symbols" in res.dead_letters[0].reason
    res = OkxAdapter().on_rest(INFO_REQ, 200, b"<html>", 3)
    assert len(res.dead_letters) == 1 and "not JSON" in res.dead_letters[0].reason

"""The venue registry holds together what each venue declares once: every (exchange, market)
resolves to hosts, an adapter of that venue whose default URLs are on those hosts and whose
paths the emulator serves, the capture readers recognise every declared feed, and the
emulator (the adapters' test oracle) loads no adapter or instrument-parsing code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from collectors.emulator.sim import Client
from collectors.emulator.venues import make_sim
from collectors.exchanges import registry
from schemas.model import Exchange, Market
from schemas.symbols import native_symbol

#: one listed instrument per (exchange, market) the default collectors config carries
CASES = [
    (ex, mk, canonical)
    for ex in Exchange
    for mk, canonical in ((Market.SPOT, "BTC-USDT"), (Market.PERP, "BTC-USDT-PERP"), (Market.PERP, "BTC-USD-PERP"))
]


def test_every_exchange_is_registered_for_every_market():
    assert set(registry.VENUES) == set(Exchange)
    for ex in Exchange:
        for mk in Market:
            ep = registry.endpoints(ex, mk)
            assert ep.ws.startswith("wss://") and ep.rest.startswith("https://"), (ex, mk, ep)
            assert registry.rate_limit(ex, mk).limit > 0
            assert registry.instrument_requests(ex, mk), (ex, mk)


@pytest.mark.parametrize("ex, mk, canonical", CASES, ids=lambda v: str(v))
def test_adapter_urls_are_on_the_declared_hosts_and_served_by_the_emulator(ex, mk, canonical):
    native = native_symbol(ex, mk, canonical)
    adapter = registry.make_adapter(ex, mk, (canonical,))
    assert adapter.exchange is ex
    host = registry.feed(ex, mk, (canonical,)).endpoints.ws
    sim = make_sim(ex, mk)
    urls = adapter.ws_urls("", [native])
    assert urls
    for url in urls:
        assert url.startswith(host + "/"), url
        client = Client(sim, None, "127.0.0.2", url[len(host) :])
        assert sim.accept(client) is None, url  # the emulator host speaks this path
    served = {path for path, *_ in sim.routes()}
    wanted = {r.path for r in registry.instrument_requests(ex, mk)}
    if getattr(adapter, "depth_path", ""):
        wanted.add(adapter.depth_path)
    assert wanted <= served, wanted - served


def test_capture_urls_name_their_feed():
    for ex, venue in registry.VENUES.items():
        for feed in venue.feeds:
            assert registry.flavor_of_url(feed.stream_url) == (ex, feed.name)
            assert registry.feed_of_flavor(ex, feed.name) is feed
    assert registry.flavor_of_url("wss://stream.bybit.com/realtime") == (Exchange.BYBIT, "legacy")
    assert registry.feed_of_flavor(Exchange.BYBIT, "legacy") is None
    assert registry.flavor_of_url("wss://example.com/ws") == (None, "")


def test_bybit_shard_feed_follows_its_symbols():
    assert registry.feed(Exchange.BYBIT, Market.PERP, ("BTC-USD-PERP",)).name == "inverse"
    assert registry.feed(Exchange.BYBIT, Market.PERP, ("BTC-USD-PERP", "ETH-USDT-PERP")).name == "linear"
    assert registry.feed(Exchange.BYBIT, Market.PERP).name == "linear"
    assert registry.make_adapter(Exchange.BYBIT, Market.PERP, ("BTC-USD-PERP",)).category == "inverse"
    assert registry.make_adapter(Exchange.BYBIT, Market.PERP, ("BTC-USD-PERP",), category="linear").category == "linear"


def test_emulator_imports_no_adapter_or_instrument_parsing():
    code = (
        "import sys, collectors.replay, collectors.emulator.venues\n"
        "for v in ('binance', 'bybit', 'okx'): __import__('collectors.emulator.' + v)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('collectors.exchanges.')\n"
        "             and not m.endswith(('_venue', '.venue', '.registry')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

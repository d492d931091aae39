"""Bybit, declared once: the v5 public API, one host for every category (spot, linear,
inverse), the category in the stream path.

The category is Bybit's own split of markets: a spot shard uses ``spot``, a derivatives
shard ``inverse`` when every symbol is USD-quoted (coin-margined) and ``linear`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collectors.exchanges.venue import Endpoints, Feed, InstrumentRequest, Venue
from collectors.ratelimit import RateLimitPolicy
from schemas.instruments import InstrumentRef
from schemas.model import Exchange, Market

ENDPOINTS = Endpoints("wss://stream.bybit.com", "https://api.bybit.com")
STREAM_PREFIX = "/v5/public"
ORDERBOOK_PATH = "/v5/market/orderbook"
INSTRUMENTS_PATH = "/v5/market/instruments-info"
TIME_PATH = "/v5/market/time"
CATEGORIES = ("spot", "linear", "inverse")
#: 600 requests / 5 s per IP; over it the IP gets 403 for ~10 min.
RATE_LIMIT = RateLimitPolicy("bybit", 5.0, 600, None, frozenset({429}), frozenset({403}), 1.0, 600.0)


def _feed(category: str) -> Feed:
    market = Market.SPOT if category == "spot" else Market.PERP
    return Feed(
        category,
        market,
        ENDPOINTS,
        RATE_LIMIT,
        stream_path=f"{STREAM_PREFIX}/{category}",
        depth_path=ORDERBOOK_PATH,
        adapter_options={"category": category},
    )


SPOT, LINEAR, INVERSE = (_feed(c) for c in CATEGORIES)


def feed_for(market: Market, symbols: Sequence[str] = ()) -> Feed:
    if market is Market.SPOT:
        return SPOT
    inverse = bool(symbols) and all(s.split("-")[1] == "USD" for s in symbols)
    return INVERSE if inverse else LINEAR


def flavor_of_url(url: str) -> str | None:
    u = url.lower()
    if "bybit" not in u:
        return None
    for cat in CATEGORIES:
        if f"{STREAM_PREFIX}/{cat}" in u:
            return cat
    return "legacy"  # pre-v5 API: no feed, neither verified nor served


def adapter(feed: Feed, **options: Any) -> Any:
    from collectors.exchanges.bybit import BybitAdapter

    return BybitAdapter(**{**feed.adapter_options, **options})


def parse_instruments(
    body: bytes | str | dict, market: Market, *, category: str | None = None, rejects: list[str] | None = None
) -> list[InstrumentRef]:
    from collectors.exchanges.bybit_instruments import parse_bybit

    return parse_bybit(body, category, rejects=rejects)


def next_cursor(body: bytes | str | dict) -> str:
    from collectors.exchanges.bybit_instruments import bybit_next_cursor

    return bybit_next_cursor(body)


def instrument_requests(market: Market) -> list[InstrumentRequest]:
    categories = ("spot",) if market is Market.SPOT else ("linear", "inverse")
    return [
        InstrumentRequest(
            INSTRUMENTS_PATH,
            {"category": c, "limit": "1000"},
            lambda body, c=c, **kw: parse_instruments(body, market, category=c, **kw),
            next_cursor,
        )
        for c in categories
    ]


def channel_options(channels: list[str]) -> dict[str, Any]:
    """Recorded topic prefixes (``orderbook.50``, ``publicTrade``): channel names, and the
    deepest book recorded as the adapter's depth."""
    depths = [int(c.split(".")[1]) for c in channels if c.startswith("orderbook.") and c.split(".")[1].isdigit()]
    opts: dict[str, Any] = {"channels": tuple(dict.fromkeys(c.split(".")[0] for c in channels))}
    if depths:
        opts["depth"] = max(depths)
    return opts


VENUE = Venue.declare(Exchange.BYBIT, (SPOT, LINEAR, INVERSE), globals())

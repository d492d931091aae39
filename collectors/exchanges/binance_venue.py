"""Binance, declared once: spot (stream.binance.com, /api/v3) and USD-M futures
(fstream.binance.com, /fapi/v1: perpetuals and dated contracts).

Hosts only in the endpoints; the adapter appends its streams (spot /stream, USD-M since 2026
/public/stream and /market/stream) and REST paths. The emulator serves the same paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collectors.exchanges.venue import Endpoints, Feed, InstrumentRequest, Venue
from collectors.ratelimit import RateLimitPolicy
from schemas.instruments import InstrumentRef
from schemas.model import Exchange, Market

SPOT_REST_PREFIX = "/api/v3"
USDM_REST_PREFIX = "/fapi/v1"
SPOT_DEPTH_PATH = SPOT_REST_PREFIX + "/depth"
USDM_DEPTH_PATH = USDM_REST_PREFIX + "/depth"
SPOT_INFO_PATH = SPOT_REST_PREFIX + "/exchangeInfo"
USDM_INFO_PATH = USDM_REST_PREFIX + "/exchangeInfo"

#: REST weight per minute per IP (spot 6000, USD-M 2400); 429 then a 418 ban, both with
#: Retry-After.
SPOT_RATE_LIMIT = RateLimitPolicy(
    "binance-spot", 60.0, 6000, "X-MBX-USED-WEIGHT-1M", frozenset({429}), frozenset({418}), 1.0, 120.0
)
USDM_RATE_LIMIT = RateLimitPolicy(
    "binance-usdm", 60.0, 2400, "X-MBX-USED-WEIGHT-1M", frozenset({429}), frozenset({418}), 1.0, 120.0
)

SPOT = Feed(
    "spot",
    Market.SPOT,
    Endpoints("wss://stream.binance.com:9443", "https://api.binance.com"),
    SPOT_RATE_LIMIT,
    stream_path="/stream",
    depth_path=SPOT_DEPTH_PATH,
)
USDM = Feed(
    "usdm",
    Market.PERP,
    Endpoints("wss://fstream.binance.com", "https://fapi.binance.com"),
    USDM_RATE_LIMIT,
    stream_path="/stream",
    depth_path=USDM_DEPTH_PATH,
)


def feed_for(market: Market, symbols: Sequence[str] = ()) -> Feed:
    return SPOT if market is Market.SPOT else USDM


def flavor_of_url(url: str) -> str | None:
    u = url.lower()
    if "fstream.binance" in u or "fstream-" in u:
        return USDM.name
    if "binance" in u and "dstream" not in u:  # dstream: COIN-M, not collected
        return SPOT.name
    return None


def adapter(feed: Feed, **options: Any) -> Any:
    from collectors.exchanges.binance import BinanceSpotAdapter, BinanceUsdmAdapter

    return (BinanceSpotAdapter if feed is SPOT else BinanceUsdmAdapter)(**options)


def parse_instruments(
    body: bytes | str | dict, market: Market, *, category: str | None = None, rejects: list[str] | None = None
) -> list[InstrumentRef]:
    from collectors.exchanges.binance_instruments import parse_binance

    return parse_binance(body, futures=market is not Market.SPOT, rejects=rejects)


def instrument_requests(market: Market) -> list[InstrumentRequest]:
    path = SPOT_INFO_PATH if market is Market.SPOT else USDM_INFO_PATH
    return [InstrumentRequest(path, {}, lambda body, **kw: parse_instruments(body, market, **kw))]


def channel_options(channels: list[str]) -> dict[str, Any]:
    """Recorded stream suffixes (``depth@100ms``, ``trade``) are the adapter's streams."""
    return {"streams": tuple(channels)}


VENUE = Venue.declare(Exchange.BINANCE, (SPOT, USDM), globals())

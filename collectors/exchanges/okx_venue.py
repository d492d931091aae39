"""OKX, declared once: the v5 public API, one host for every market (the market is read
from each instId), so a single feed ("mixed", as captures name it) serves spot, swaps and
futures alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collectors.exchanges.venue import Endpoints, Feed, InstrumentRequest, Venue
from collectors.ratelimit import RateLimitPolicy
from schemas.instruments import InstrumentRef
from schemas.model import Exchange, Market

STREAM_PATH = "/ws/v5/public"
BUSINESS_STREAM_PATH = "/ws/v5/business"
BOOKS_PATH = "/api/v5/market/books"
INSTRUMENTS_PATH = "/api/v5/public/instruments"
TIME_PATH = "/api/v5/public/time"
#: instType of the instruments endpoint per market
INST_TYPES = {Market.SPOT: "SPOT", Market.PERP: "SWAP", Market.FUTURE: "FUTURES"}

#: per-endpoint limits per IP (order book 40 / 2 s); 429 (code 50011) when exceeded.
RATE_LIMIT = RateLimitPolicy("okx", 2.0, 40, None, frozenset({429}), frozenset(), 2.0, 120.0)

MIXED = Feed(
    "mixed",
    Market.SPOT,
    Endpoints("wss://ws.okx.com:8443", "https://www.okx.com"),
    RATE_LIMIT,
    stream_path=STREAM_PATH,
    depth_path=BOOKS_PATH,
)


def feed_for(market: Market, symbols: Sequence[str] = ()) -> Feed:
    return MIXED


def flavor_of_url(url: str) -> str | None:
    u = url.lower()
    return MIXED.name if "okx.com" in u or "okex.com" in u else None


def adapter(feed: Feed, **options: Any) -> Any:
    from collectors.exchanges.okx import OkxAdapter

    return OkxAdapter(**options)


def parse_instruments(
    body: bytes | str | dict, market: Market, *, category: str | None = None, rejects: list[str] | None = None
) -> list[InstrumentRef]:
    from collectors.exchanges.okx_instruments import parse_okx

    return parse_okx(body, rejects=rejects)


def instrument_requests(market: Market) -> list[InstrumentRequest]:
    return [
        InstrumentRequest(
            INSTRUMENTS_PATH, {"instType": INST_TYPES[market]}, lambda body, **kw: parse_instruments(body, market, **kw)
        )
    ]


#: order-book channels of the public stream
BOOK_CHANNELS = ("books", "books-l2-tbt", "books50-l2-tbt")


def channel_options(channels: list[str]) -> dict[str, Any]:
    """Recorded channels as the adapter's channels, the first book channel as its book."""
    books = [c for c in channels if c in BOOK_CHANNELS]
    opts: dict[str, Any] = {"channels": tuple(channels)}
    if books:
        opts["book_channel"] = books[0]
    return opts


VENUE = Venue.declare(Exchange.OKX, (MIXED,), globals())

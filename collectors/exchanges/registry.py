"""The venue registry: exchange -> its one declaration (collectors/exchanges/<venue>_venue.py).

Every caller that needs something venue-specific asks here: the shard config's default
endpoints, the runner's and capture verify's adapters, the capture readers' URLs, the
instrument fetcher's requests and parsers, the emulator's simulator modules. Adding a venue
is one entry in ``VENUES`` plus its own modules (declaration, adapter, instrument parser,
emulator), in the spirit of cryptofeed's EXCHANGE_MAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collectors.exchanges import binance_venue, bybit_venue, okx_venue
from collectors.exchanges.venue import Endpoints, Feed, InstrumentRequest, Venue
from collectors.ratelimit import RateLimitPolicy
from schemas.instruments import InstrumentRef
from schemas.model import Exchange, Market

#: The venues, in the order a recorded URL is matched against their hosts.
VENUES: dict[Exchange, Venue] = {v.exchange: v for v in (binance_venue.VENUE, okx_venue.VENUE, bybit_venue.VENUE)}


def venue(exchange: Exchange | str) -> Venue:
    return VENUES[Exchange(exchange)]


def feed(exchange: Exchange | str, market: Market | str, symbols: Sequence[str] = ()) -> Feed:
    """The feed a shard of (exchange, market) and these canonical symbols connects to."""
    return venue(exchange).feed_for(Market(market), tuple(symbols))


def endpoints(exchange: Exchange | str, market: Market | str) -> Endpoints:
    """Production hosts of (exchange, market)."""
    return feed(exchange, market).endpoints


def rate_limit(exchange: Exchange | str, market: Market | str) -> RateLimitPolicy:
    """The venue's REST limit per egress IP for (exchange, market)."""
    return feed(exchange, market).rate_limit


def make_adapter(exchange: Exchange | str, market: Market | str, symbols: Sequence[str] = (), **options: Any) -> Any:
    """The adapter of (exchange, market); ``symbols`` (canonical) pick the feed where a market
    spans several (Bybit linear vs inverse)."""
    v = venue(exchange)
    return v.adapter(v.feed_for(Market(market), tuple(symbols)), **options)


def feed_of_flavor(exchange: Exchange | str, flavor: str) -> Feed | None:
    """The feed a capture of this flavour was recorded from (None: no adapter speaks it)."""
    return venue(exchange).feed(flavor)


def adapter_for_feed(exchange: Exchange | str, feed_: Feed, **options: Any) -> Any:
    return venue(exchange).adapter(feed_, **options)


def flavor_of_url(url: str) -> tuple[Exchange | None, str]:
    """(exchange, feed flavour) of a recorded URL, by the venues' hosts; (None, "") if none."""
    for ex, v in VENUES.items():
        flavor = v.flavor_of_url(url)
        if flavor is not None:
            return ex, flavor
    return None, ""


def instrument_requests(exchange: Exchange | str, market: Market | str) -> list[InstrumentRequest]:
    return venue(exchange).instrument_requests(Market(market))


def parse_exchange_info(
    exchange: Exchange | str,
    market: Market | str,
    body: bytes | str | dict,
    *,
    category: str | None = None,
    rejects: list[str] | None = None,
) -> list[InstrumentRef]:
    """Any venue's exchange-info body fetched for (exchange, market). Every row the body
    lists is returned: Binance /fapi covers perpetuals and dated futures in one response,
    and callers key by venue symbol, whose market the row itself states."""
    return venue(exchange).parse_instruments(body, Market(market), category=category, rejects=rejects)


__all__ = [
    "VENUES",
    "adapter_for_feed",
    "endpoints",
    "feed",
    "feed_of_flavor",
    "flavor_of_url",
    "instrument_requests",
    "make_adapter",
    "parse_exchange_info",
    "rate_limit",
    "venue",
]

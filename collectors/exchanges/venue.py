"""The shape of a venue declaration: what each venue states once about itself.

Every venue has one module ``collectors/exchanges/<venue>_venue.py`` that builds a ``Venue``:
its hosts and paths per feed, how a recorded URL tells its feed, which adapter serves a
market, where its instrument reference data is fetched and how it is parsed, and which
emulator module plays it. Callers (shard config defaults, the runner, capture verify, the
capture readers, the instrument fetcher, the emulator) read these through
``collectors/exchanges/registry.py`` instead of spelling URLs or dispatching on the
exchange themselves, so a fourth venue is one registry entry plus its own modules.

Declarations only: a venue module imports its adapter, instrument parser and emulator
lazily, so the emulator (the test oracle) can read endpoint paths without importing any
parsing code of the collectors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collectors.ratelimit import RateLimitPolicy
from schemas.instruments import InstrumentRef
from schemas.model import Exchange, Market


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs handed to the venue adapter (which appends paths and streams)."""

    ws: str
    rest: str


@dataclass(frozen=True, slots=True)
class Feed:
    """One protocol flavour of a venue: a host pair and the paths served there.

    ``name`` is also the flavour a capture reader reports (Binance spot|usdm, Bybit
    spot|linear|inverse, OKX mixed), so a recorded file and a live shard find the same feed.
    """

    name: str
    #: the market an adapter and an emulator host of this feed are keyed by
    market: Market
    endpoints: Endpoints
    #: the venue's REST limit per egress IP on this feed's host
    rate_limit: RateLimitPolicy
    #: path of the public stream as recorded captures name it (Binance /stream, ...)
    stream_path: str
    #: REST order-book snapshot path ("" when the venue pushes snapshots on the socket)
    depth_path: str = ""
    #: adapter constructor defaults that select this feed (e.g. Bybit's category)
    adapter_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stream_url(self) -> str:
        return self.endpoints.ws + self.stream_path

    @property
    def depth_url(self) -> str:
        return self.endpoints.rest + self.depth_path


@dataclass(frozen=True, slots=True)
class InstrumentRequest:
    """One exchange-info request covering (part of) a market, and its parser."""

    path: str
    params: Mapping[str, str]
    #: (body, *, rejects) -> rows; every row the body lists (callers filter by market)
    parse: Callable[..., list[InstrumentRef]]
    #: cursor of the next page ("" on the last), for venues that paginate
    next_cursor: Callable[[bytes | str | dict], str] | None = None


@dataclass(frozen=True)
class Venue:
    exchange: Exchange
    feeds: tuple[Feed, ...]
    #: the feed a shard of (market, canonical symbols) connects to
    feed_for: Callable[[Market, Sequence[str]], Feed]
    #: the feed name a recorded URL belongs to (None: not this venue's host)
    flavor_of_url: Callable[[str], str | None]
    #: (feed, **options) -> adapter instance
    adapter: Callable[..., Any]
    #: market -> exchange-info requests that list its instruments
    instrument_requests: Callable[[Market], list[InstrumentRequest]]
    #: (body, market, *, category, rejects) -> rows of one exchange-info body
    parse_instruments: Callable[..., list[InstrumentRef]]
    #: recorded channel names (non-empty) -> adapter options that subscribe exactly those
    channel_options: Callable[[list[str]], dict[str, Any]]
    #: module of the venue's emulator (collectors/emulator/<venue>.py)
    emulator: str

    def feed(self, name: str) -> Feed | None:
        return next((f for f in self.feeds if f.name == name), None)

    @classmethod
    def declare(cls, exchange: Exchange, feeds: tuple[Feed, ...], module: Mapping[str, Any]) -> Venue:
        """A venue module's declaration: its hooks are the module's own functions named as the
        fields in ``HOOKS`` (so each venue states them by defining them, not by listing them
        again), and its emulator is ``collectors/emulator/<exchange>.py``. Pass ``globals()``."""
        hooks = {name: module[name] for name in HOOKS}
        return cls(exchange, feeds, **hooks, emulator=f"collectors.emulator.{exchange.value}")


#: the functions every ``<venue>_venue.py`` defines, read by ``Venue.declare``
HOOKS = ("feed_for", "flavor_of_url", "adapter", "instrument_requests", "parse_instruments", "channel_options")

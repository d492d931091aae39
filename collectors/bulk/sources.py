"""A bulk source: one (venue, market, symbol, file type) — the static dimension of the
daily backfill partitions, spelled ``<venue>.<market>.<SYMBOL>.<type>`` in partition keys
(``binance.spot.BTCUSDT.trades``, ``binance.um.BTCUSDT.aggTrades``,
``bybit.linear.XRPUSDT.ob500``). The market token is the venue's own (Binance spot/um/cm,
Bybit category) because it selects the archive path; the lake market follows from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from collectors.bulk.binance_vision import EVENT_TYPES as BINANCE_EVENT_TYPES
from collectors.bulk.common import SHARD_PREFIX
from schemas.model import EventType, Exchange, Market
from schemas.symbols import validate_native

BYBIT_TYPES: dict[str, tuple[EventType, ...]] = {
    "ob500": (EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA),
    "trades": (EventType.TRADE,),
}
BYBIT_MARKETS = ("linear", "inverse")
LOADABLE_BINANCE_MARKETS = ("spot", "um")
_KEY = re.compile(r"^(binance|bybit)\.([a-z]+)\.([A-Z0-9_\-]{2,40})\.([A-Za-z0-9]+)$")
_BYBIT_FUTURE = re.compile(r"^([A-Z0-9]+USD[FGHJKMNQUVXZ]\d\d|[A-Z0-9]+-\d{1,2}[A-Z]{3}\d{2})$")


class SourceError(ValueError):
    """A source key that names no supported archive (or one with no lake table)."""


@dataclass(frozen=True, slots=True)
class BulkSource:
    venue: str  # binance | bybit
    market: str  # binance: spot|um|cm; bybit: linear|inverse
    symbol: str  # venue symbol
    data_type: str  # binance: trades|aggTrades|bookTicker; bybit: ob500|trades

    @classmethod
    def parse(cls, key: str) -> BulkSource:
        m = _KEY.fullmatch(key)
        if not m:
            raise SourceError(f"bulk source key must be <venue>.<market>.<SYMBOL>.<type>, got {key!r}")
        src = cls(*m.groups())
        src.validate()
        return src

    def validate(self) -> None:
        validate_native(self.symbol)
        if self.venue == "binance":
            if self.market not in LOADABLE_BINANCE_MARKETS:
                raise SourceError(
                    f"Binance market must be one of {LOADABLE_BINANCE_MARKETS}: {self.key} "
                    "(COIN-M archives parse, but its /dapi exchange info is not in the instrument "
                    "catalog, so their scales are unknown)"
                )
            if self.data_type not in BINANCE_EVENT_TYPES:
                raise SourceError(
                    f"{self.key}: Binance {self.data_type!r} files have no lake event table "
                    f"(klines and bookDepth are parsed and verified only; see docs/decisions.md); "
                    f"loadable types: {sorted(BINANCE_EVENT_TYPES)}"
                )
        else:
            if self.market not in BYBIT_MARKETS:
                raise SourceError(f"Bybit history market must be one of {BYBIT_MARKETS}: {self.key}")
            if self.data_type not in BYBIT_TYPES:
                raise SourceError(f"{self.key}: Bybit history types are {sorted(BYBIT_TYPES)}")

    @property
    def key(self) -> str:
        return f"{self.venue}.{self.market}.{self.symbol}.{self.data_type}"

    @property
    def shard(self) -> str:
        """The envelope `shard` of every row this source writes (the re-run filter)."""
        return SHARD_PREFIX + self.key

    @property
    def exchange(self) -> Exchange:
        return Exchange(self.venue)

    @property
    def lake_market(self) -> Market:
        if self.venue == "binance":
            if self.market == "spot":
                return Market.SPOT
            tail = self.symbol.partition("_")[2]
            return Market.FUTURE if tail.isdigit() and len(tail) == 6 else Market.PERP
        return Market.FUTURE if _BYBIT_FUTURE.fullmatch(self.symbol) else Market.PERP

    @property
    def event_types(self) -> tuple[EventType, ...]:
        if self.venue == "binance":
            return (BINANCE_EVENT_TYPES[self.data_type],)
        return BYBIT_TYPES[self.data_type]

    @property
    def has_integer_ids(self) -> bool:
        """Sources whose rows carry contiguous venue ids in `seq` (gap-checkable)."""
        return (self.venue == "binance" and self.data_type in ("trades", "aggTrades")) or (
            self.venue == "bybit" and self.data_type == "ob500"
        )

"""Names of the canonical dimensions (exchange, market, event type) as Python enums.

The .proto enums are the wire definition; these mirror them with the lower-case tokens
used in topic names, table partitions and symbols. tests/test_schemas.py asserts the two
stay in step, so adding a venue means touching the .proto and this file, nothing else.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from schemas.gen.ticklake.v1 import events_pb2 as pb


class ProtoEnum(StrEnum):
    """A lower-case mirror of a .proto enum: member NAME is the .proto value `<prefix>NAME`.

    Subclasses name their .proto enum and its value prefix once, in the class line
    (`class Market(ProtoEnum, proto=pb.Market, prefix="MARKET_")`); the wire number and the
    way back from it are then the same code for every mirrored enum."""

    def __init_subclass__(cls, *, proto=None, prefix: str = "", **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._proto = proto
        cls._prefix = prefix

    @property
    def pb(self) -> int:
        """The .proto enum number of this member."""
        hit = _TO_PB.get(self)
        if hit is None:
            hit = _TO_PB[self] = self._proto.Value(self._prefix + self.name)
        return hit

    @classmethod
    def from_pb(cls, value: int) -> Self:
        """The member of a .proto enum number (KeyError for UNSPECIFIED and unknown numbers).
        Memoized: the normalizer and the feature processor ask several times per event, and
        the descriptor lookup + name rewrite + member lookup was ~13 % of their CPU."""
        key = (cls, value)
        hit = _FROM_PB.get(key)
        if hit is None:
            hit = _FROM_PB[key] = cls[cls._proto.Name(value).removeprefix(cls._prefix)]
        return hit


#: ProtoEnum's memo tables (members and numbers never change at run time).
_TO_PB: dict[ProtoEnum, int] = {}
_FROM_PB: dict[tuple[type, int], ProtoEnum] = {}


class Exchange(ProtoEnum, proto=pb.Exchange, prefix="EXCHANGE_"):
    BINANCE = "binance"
    BYBIT = "bybit"
    OKX = "okx"


class Market(ProtoEnum, proto=pb.Market, prefix="MARKET_"):
    SPOT = "spot"
    PERP = "perp"
    FUTURE = "future"


class EventType(ProtoEnum, proto=pb.EventType, prefix="EVENT_TYPE_"):
    TRADE = "trade"
    BOOK_SNAPSHOT = "book_snapshot"
    BOOK_DELTA = "book_delta"
    FUNDING = "funding"
    MARK_PRICE = "mark_price"
    LIQUIDATION = "liquidation"
    TICKER = "ticker"

    @property
    def payload_field(self) -> str:
        """Name of the Envelope oneof member carrying this type's payload."""
        return self.value


exchange_from_pb = Exchange.from_pb
market_from_pb = Market.from_pb
event_type_from_pb = EventType.from_pb


#: Markets whose instruments carry funding, mark price and liquidations.
DERIVATIVE_MARKETS = frozenset({Market.PERP, Market.FUTURE})

"""Names of the canonical dimensions (exchange, market, event type) as Python enums.

The .proto enums are the wire definition; these mirror them with the lower-case tokens
used in topic names, table partitions and symbols. tests/test_schemas.py asserts the two
stay in step, so adding a venue means touching the .proto and this file, nothing else.
"""

from __future__ import annotations

from enum import StrEnum

from schemas.gen.ticklake.v1 import events_pb2 as pb


class Exchange(StrEnum):
    BINANCE = "binance"
    BYBIT = "bybit"
    OKX = "okx"

    @property
    def pb(self) -> int:
        return pb.Exchange.Value(f"EXCHANGE_{self.name}")


class Market(StrEnum):
    SPOT = "spot"
    PERP = "perp"
    FUTURE = "future"

    @property
    def pb(self) -> int:
        return pb.Market.Value(f"MARKET_{self.name}")


class EventType(StrEnum):
    TRADE = "trade"
    BOOK_SNAPSHOT = "book_snapshot"
    BOOK_DELTA = "book_delta"
    FUNDING = "funding"
    MARK_PRICE = "mark_price"
    LIQUIDATION = "liquidation"
    TICKER = "ticker"

    @property
    def pb(self) -> int:
        return pb.EventType.Value(f"EVENT_TYPE_{self.name}")

    @property
    def payload_field(self) -> str:
        """Name of the Envelope oneof member carrying this type's payload."""
        return self.value


def exchange_from_pb(value: int) -> Exchange:
    return Exchange[pb.Exchange.Name(value).removeprefix("EXCHANGE_")]


def market_from_pb(value: int) -> Market:
    return Market[pb.Market.Name(value).removeprefix("MARKET_")]


def event_type_from_pb(value: int) -> EventType:
    return EventType[pb.EventType.Name(value).removeprefix("EVENT_TYPE_")]


#: Markets whose instruments carry funding, mark price and liquidations.
DERIVATIVE_MARKETS = frozenset({Market.PERP, Market.FUTURE})

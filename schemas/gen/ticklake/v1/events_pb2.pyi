from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Exchange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCHANGE_UNSPECIFIED: _ClassVar[Exchange]
    EXCHANGE_BINANCE: _ClassVar[Exchange]
    EXCHANGE_BYBIT: _ClassVar[Exchange]
    EXCHANGE_OKX: _ClassVar[Exchange]

class Market(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MARKET_UNSPECIFIED: _ClassVar[Market]
    MARKET_SPOT: _ClassVar[Market]
    MARKET_PERP: _ClassVar[Market]
    MARKET_FUTURE: _ClassVar[Market]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_TRADE: _ClassVar[EventType]
    EVENT_TYPE_BOOK_SNAPSHOT: _ClassVar[EventType]
    EVENT_TYPE_BOOK_DELTA: _ClassVar[EventType]
    EVENT_TYPE_FUNDING: _ClassVar[EventType]
    EVENT_TYPE_MARK_PRICE: _ClassVar[EventType]
    EVENT_TYPE_LIQUIDATION: _ClassVar[EventType]
    EVENT_TYPE_TICKER: _ClassVar[EventType]

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_BUY: _ClassVar[Side]
    SIDE_SELL: _ClassVar[Side]

class SnapshotReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SNAPSHOT_REASON_UNSPECIFIED: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_INITIAL: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_RESYNC: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_VENUE: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_PERIODIC: _ClassVar[SnapshotReason]

class QtyUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QTY_UNIT_UNSPECIFIED: _ClassVar[QtyUnit]
    QTY_UNIT_BASE: _ClassVar[QtyUnit]
    QTY_UNIT_LINEAR_CONTRACT: _ClassVar[QtyUnit]
    QTY_UNIT_INVERSE_CONTRACT: _ClassVar[QtyUnit]
EXCHANGE_UNSPECIFIED: Exchange
EXCHANGE_BINANCE: Exchange
EXCHANGE_BYBIT: Exchange
EXCHANGE_OKX: Exchange
MARKET_UNSPECIFIED: Market
MARKET_SPOT: Market
MARKET_PERP: Market
MARKET_FUTURE: Market
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_TRADE: EventType
EVENT_TYPE_BOOK_SNAPSHOT: EventType
EVENT_TYPE_BOOK_DELTA: EventType
EVENT_TYPE_FUNDING: EventType
EVENT_TYPE_MARK_PRICE: EventType
EVENT_TYPE_LIQUIDATION: EventType
EVENT_TYPE_TICKER: EventType
SIDE_UNSPECIFIED: Side
SIDE_BUY: Side
SIDE_SELL: Side
SNAPSHOT_REASON_UNSPECIFIED: SnapshotReason
SNAPSHOT_REASON_INITIAL: SnapshotReason
SNAPSHOT_REASON_RESYNC: SnapshotReason
SNAPSHOT_REASON_VENUE: SnapshotReason
SNAPSHOT_REASON_PERIODIC: SnapshotReason
QTY_UNIT_UNSPECIFIED: QtyUnit
QTY_UNIT_BASE: QtyUnit
QTY_UNIT_LINEAR_CONTRACT: QtyUnit
QTY_UNIT_INVERSE_CONTRACT: QtyUnit

class PriceLevel(_message.Message):
    __slots__ = ("px", "qty")
    PX_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    px: int
    qty: int
    def __init__(self, px: _Optional[int] = ..., qty: _Optional[int] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("trade_id", "px", "qty", "taker_side", "first_trade_id", "last_trade_id")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    PX_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    TAKER_SIDE_FIELD_NUMBER: _ClassVar[int]
    FIRST_TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    trade_id: str
    px: int
    qty: int
    taker_side: Side
    first_trade_id: int
    last_trade_id: int
    def __init__(self, trade_id: _Optional[str] = ..., px: _Optional[int] = ..., qty: _Optional[int] = ..., taker_side: _Optional[_Union[Side, str]] = ..., first_trade_id: _Optional[int] = ..., last_trade_id: _Optional[int] = ...) -> None: ...

class BookSnapshot(_message.Message):
    __slots__ = ("bids", "asks", "depth", "reason", "checksum")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    depth: int
    reason: SnapshotReason
    checksum: int
    def __init__(self, bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., depth: _Optional[int] = ..., reason: _Optional[_Union[SnapshotReason, str]] = ..., checksum: _Optional[int] = ...) -> None: ...

class BookDelta(_message.Message):
    __slots__ = ("bids", "asks", "first_seq", "prev_seq", "checksum")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    first_seq: int
    prev_seq: int
    checksum: int
    def __init__(self, bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., first_seq: _Optional[int] = ..., prev_seq: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class Funding(_message.Message):
    __slots__ = ("rate", "next_funding_ts", "predicted_rate", "mark_px")
    RATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_FUNDING_TS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_RATE_FIELD_NUMBER: _ClassVar[int]
    MARK_PX_FIELD_NUMBER: _ClassVar[int]
    rate: int
    next_funding_ts: int
    predicted_rate: int
    mark_px: int
    def __init__(self, rate: _Optional[int] = ..., next_funding_ts: _Optional[int] = ..., predicted_rate: _Optional[int] = ..., mark_px: _Optional[int] = ...) -> None: ...

class MarkPrice(_message.Message):
    __slots__ = ("mark_px", "index_px", "estimated_settle_px")
    MARK_PX_FIELD_NUMBER: _ClassVar[int]
    INDEX_PX_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SETTLE_PX_FIELD_NUMBER: _ClassVar[int]
    mark_px: int
    index_px: int
    estimated_settle_px: int
    def __init__(self, mark_px: _Optional[int] = ..., index_px: _Optional[int] = ..., estimated_settle_px: _Optional[int] = ...) -> None: ...

class Liquidation(_message.Message):
    __slots__ = ("side", "px", "qty", "order_status")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PX_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    ORDER_STATUS_FIELD_NUMBER: _ClassVar[int]
    side: Side
    px: int
    qty: int
    order_status: str
    def __init__(self, side: _Optional[_Union[Side, str]] = ..., px: _Optional[int] = ..., qty: _Optional[int] = ..., order_status: _Optional[str] = ...) -> None: ...

class Ticker(_message.Message):
    __slots__ = ("bid_px", "bid_qty", "ask_px", "ask_qty", "last_px", "volume_24h", "open_interest")
    BID_PX_FIELD_NUMBER: _ClassVar[int]
    BID_QTY_FIELD_NUMBER: _ClassVar[int]
    ASK_PX_FIELD_NUMBER: _ClassVar[int]
    ASK_QTY_FIELD_NUMBER: _ClassVar[int]
    LAST_PX_FIELD_NUMBER: _ClassVar[int]
    VOLUME_24H_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    bid_px: int
    bid_qty: int
    ask_px: int
    ask_qty: int
    last_px: int
    volume_24h: int
    open_interest: int
    def __init__(self, bid_px: _Optional[int] = ..., bid_qty: _Optional[int] = ..., ask_px: _Optional[int] = ..., ask_qty: _Optional[int] = ..., last_px: _Optional[int] = ..., volume_24h: _Optional[int] = ..., open_interest: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("event_id", "exchange", "market", "event_type", "symbol", "native_symbol", "exchange_ts", "ingest_ts", "seq", "price_scale", "size_scale", "ingest_latency_us", "tick_size", "lot_size", "shard", "qty_unit", "contract_value", "contract_value_ccy", "exchange_ts_is_receipt", "trade", "book_snapshot", "book_delta", "funding", "mark_price", "liquidation", "ticker")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    MARKET_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_TS_FIELD_NUMBER: _ClassVar[int]
    INGEST_TS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PRICE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SIZE_SCALE_FIELD_NUMBER: _ClassVar[int]
    INGEST_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    TICK_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOT_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    QTY_UNIT_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VALUE_CCY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_TS_IS_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    BOOK_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BOOK_DELTA_FIELD_NUMBER: _ClassVar[int]
    FUNDING_FIELD_NUMBER: _ClassVar[int]
    MARK_PRICE_FIELD_NUMBER: _ClassVar[int]
    LIQUIDATION_FIELD_NUMBER: _ClassVar[int]
    TICKER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    exchange: Exchange
    market: Market
    event_type: EventType
    symbol: str
    native_symbol: str
    exchange_ts: int
    ingest_ts: int
    seq: int
    price_scale: int
    size_scale: int
    ingest_latency_us: int
    tick_size: int
    lot_size: int
    shard: str
    qty_unit: QtyUnit
    contract_value: str
    contract_value_ccy: str
    exchange_ts_is_receipt: bool
    trade: Trade
    book_snapshot: BookSnapshot
    book_delta: BookDelta
    funding: Funding
    mark_price: MarkPrice
    liquidation: Liquidation
    ticker: Ticker
    def __init__(self, event_id: _Optional[str] = ..., exchange: _Optional[_Union[Exchange, str]] = ..., market: _Optional[_Union[Market, str]] = ..., event_type: _Optional[_Union[EventType, str]] = ..., symbol: _Optional[str] = ..., native_symbol: _Optional[str] = ..., exchange_ts: _Optional[int] = ..., ingest_ts: _Optional[int] = ..., seq: _Optional[int] = ..., price_scale: _Optional[int] = ..., size_scale: _Optional[int] = ..., ingest_latency_us: _Optional[int] = ..., tick_size: _Optional[int] = ..., lot_size: _Optional[int] = ..., shard: _Optional[str] = ..., qty_unit: _Optional[_Union[QtyUnit, str]] = ..., contract_value: _Optional[str] = ..., contract_value_ccy: _Optional[str] = ..., exchange_ts_is_receipt: _Optional[bool] = ..., trade: _Optional[_Union[Trade, _Mapping]] = ..., book_snapshot: _Optional[_Union[BookSnapshot, _Mapping]] = ..., book_delta: _Optional[_Union[BookDelta, _Mapping]] = ..., funding: _Optional[_Union[Funding, _Mapping]] = ..., mark_price: _Optional[_Union[MarkPrice, _Mapping]] = ..., liquidation: _Optional[_Union[Liquidation, _Mapping]] = ..., ticker: _Optional[_Union[Ticker, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("stage", "reason", "source", "raw", "ingest_ts", "exchange", "native_symbol")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    INGEST_TS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    reason: str
    source: str
    raw: bytes
    ingest_ts: int
    exchange: str
    native_symbol: str
    def __init__(self, stage: _Optional[str] = ..., reason: _Optional[str] = ..., source: _Optional[str] = ..., raw: _Optional[bytes] = ..., ingest_ts: _Optional[int] = ..., exchange: _Optional[str] = ..., native_symbol: _Optional[str] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MarketType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MARKET_TYPE_UNSPECIFIED: _ClassVar[MarketType]
    MARKET_TYPE_SPOT: _ClassVar[MarketType]
    MARKET_TYPE_PERPETUAL: _ClassVar[MarketType]
MARKET_TYPE_UNSPECIFIED: MarketType
MARKET_TYPE_SPOT: MarketType
MARKET_TYPE_PERPETUAL: MarketType

class PriceMessage(_message.Message):
    __slots__ = ("message_id", "event_timestamp", "publish_timestamp", "producer", "version", "data_type", "market_type", "token_ticker", "source_id", "network_id", "price", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    MARKET_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TICKER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    event_timestamp: str
    publish_timestamp: str
    producer: str
    version: str
    data_type: str
    market_type: MarketType
    token_ticker: str
    source_id: str
    network_id: str
    price: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, message_id: _Optional[str] = ..., event_timestamp: _Optional[str] = ..., publish_timestamp: _Optional[str] = ..., producer: _Optional[str] = ..., version: _Optional[str] = ..., data_type: _Optional[str] = ..., market_type: _Optional[_Union[MarketType, str]] = ..., token_ticker: _Optional[str] = ..., source_id: _Optional[str] = ..., network_id: _Optional[str] = ..., price: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Level(_message.Message):
    __slots__ = ("price", "quantity")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    price: str
    quantity: str
    def __init__(self, price: _Optional[str] = ..., quantity: _Optional[str] = ...) -> None: ...

class OrderbookMessage(_message.Message):
    __slots__ = ("message_id", "event_timestamp", "publish_timestamp", "producer", "version", "data_type", "market_type", "token_ticker", "source_id", "network_id", "bids", "asks", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    MARKET_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TICKER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    event_timestamp: str
    publish_timestamp: str
    producer: str
    version: str
    data_type: str
    market_type: MarketType
    token_ticker: str
    source_id: str
    network_id: str
    bids: _containers.RepeatedCompositeFieldContainer[Level]
    asks: _containers.RepeatedCompositeFieldContainer[Level]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, message_id: _Optional[str] = ..., event_timestamp: _Optional[str] = ..., publish_timestamp: _Optional[str] = ..., producer: _Optional[str] = ..., version: _Optional[str] = ..., data_type: _Optional[str] = ..., market_type: _Optional[_Union[MarketType, str]] = ..., token_ticker: _Optional[str] = ..., source_id: _Optional[str] = ..., network_id: _Optional[str] = ..., bids: _Optional[_Iterable[_Union[Level, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[Level, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

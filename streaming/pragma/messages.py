"""The pragma v1.1 bodies: typed records, pure builders, and their JSON / Protobuf encodings.

One record type per topic, shared by the publisher (which builds them) and the consumer
helper (which returns them), so "what is in a message" has one definition in Python; the
JSON Schema files and the .proto are the same definition for other languages, and the
tests validate every built message against the schemas.

Values are decimal strings made from scaled integers with schemas.scaled.from_scaled: no
float ever touches a price or a quantity.

``message_id`` is a UUIDv5 of the feed key and the identity of what the message reports
(the source event id for prices, the book sequence and time for depth), so a message
republished after a restart or a replay carries the same id and consumers can dedup on it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas.gen.pragma.v1 import pragma_pb2 as ppb
from schemas.scaled import from_scaled
from streaming.pragma.keys import FeedKey

VERSION = "1.1"
PRICE = "price"
MARKET_DEPTH = "market_depth"

JSON_CONTENT_TYPE = "application/json"
PROTO_PRICE_CONTENT_TYPE = "application/x-protobuf; messageType=pragma.v1.PriceMessage"
PROTO_DEPTH_CONTENT_TYPE = "application/x-protobuf; messageType=pragma.v1.OrderbookMessage"
CONTENT_TYPE_HEADER = "content-type"

#: Namespace of the deterministic message ids (uuid5).
MESSAGE_ID_NAMESPACE = uuid.UUID("5b0f4b8e-6a51-4a43-9f43-7c2d1b1e8a11")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MARKET_PB = {"spot": ppb.MARKET_TYPE_SPOT, "perpetual": ppb.MARKET_TYPE_PERPETUAL}
_MARKET_OF_PB = {v: k for k, v in _MARKET_PB.items()}

Level = tuple[str, str]


class PragmaDecodeError(ValueError):
    """A record body that is not a valid pragma v1.1 message."""


def iso_utc(ts_us: int) -> str:
    """µs since the epoch -> '2024-08-09T00:00:00.000000Z' (exact, integer arithmetic)."""
    return (_EPOCH + timedelta(microseconds=int(ts_us))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_utc(text: str) -> int:
    """Inverse of iso_utc (accepts any fraction length up to µs and a trailing Z)."""
    if not text.endswith("Z"):
        raise PragmaDecodeError(f"timestamp {text!r} is not UTC ('Z')")
    dt = datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def message_id(key: str, kind: str, *identity: object) -> str:
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "|".join([key, kind, *map(str, identity)])))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Header:
    """The fields every pragma v1 message carries before its body (version and data_type
    default per record type)."""

    message_id: str
    event_timestamp: str
    publish_timestamp: str
    producer: str
    market_type: str
    token_ticker: str
    source_id: str
    network_id: str

    @property
    def feed(self) -> FeedKey:
        return FeedKey(self.market_type, self.network_id, self.source_id, self.token_ticker)


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceRecord(_Header):
    price: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = VERSION
    data_type: str = PRICE

    def to_json_dict(self) -> dict:
        return {**_common_json(self), "price": self.price, "metadata": dict(self.metadata)}

    def to_proto(self) -> ppb.PriceMessage:
        return ppb.PriceMessage(**_common_proto(self), price=self.price, metadata=dict(self.metadata))

    @classmethod
    def from_json_dict(cls, d: Mapping) -> PriceRecord:
        _check_common(d, PRICE, {"price"})
        return cls(**_common_json(d), price=d["price"], metadata=dict(d.get("metadata") or {}))

    @classmethod
    def from_proto(cls, m: ppb.PriceMessage) -> PriceRecord:
        return cls(**_common_of_proto(m), price=m.price, metadata=dict(m.metadata))


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderbookRecord(_Header):
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = VERSION
    data_type: str = MARKET_DEPTH

    def to_json_dict(self) -> dict:
        return {
            **_common_json(self),
            "bids": [list(lv) for lv in self.bids],
            "asks": [list(lv) for lv in self.asks],
            "metadata": dict(self.metadata),
        }

    def to_proto(self) -> ppb.OrderbookMessage:
        return ppb.OrderbookMessage(
            **_common_proto(self),
            bids=[ppb.Level(price=p, quantity=q) for p, q in self.bids],
            asks=[ppb.Level(price=p, quantity=q) for p, q in self.asks],
            metadata=dict(self.metadata),
        )

    @classmethod
    def from_json_dict(cls, d: Mapping) -> OrderbookRecord:
        _check_common(d, MARKET_DEPTH, {"bids", "asks"})
        return cls(
            **_common_json(d),
            bids=_levels(d["bids"]),
            asks=_levels(d["asks"]),
            metadata=dict(d.get("metadata") or {}),
        )

    @classmethod
    def from_proto(cls, m: ppb.OrderbookMessage) -> OrderbookRecord:
        return cls(
            **_common_of_proto(m),
            bids=tuple((lv.price, lv.quantity) for lv in m.bids),
            asks=tuple((lv.price, lv.quantity) for lv in m.asks),
            metadata=dict(m.metadata),
        )


PragmaRecord = PriceRecord | OrderbookRecord

_COMMON = (
    "message_id",
    "event_timestamp",
    "publish_timestamp",
    "producer",
    "version",
    "data_type",
    "market_type",
    "token_ticker",
    "source_id",
    "network_id",
)


def _common_json(r: PragmaRecord | Mapping) -> dict:
    """The header fields every message carries, in the contract's order, from a record or a
    decoded JSON object (both record types share them; the body follows)."""
    get = r.__getitem__ if isinstance(r, Mapping) else r.__getattribute__
    return {k: get(k) for k in _COMMON}


def _common_proto(r: PragmaRecord) -> dict:
    return {**_common_json(r), "market_type": _MARKET_PB[r.market_type]}


def _common_of_proto(m: ppb.PriceMessage | ppb.OrderbookMessage) -> dict:
    return {**{k: getattr(m, k) for k in _COMMON}, "market_type": _market_of_pb(m.market_type)}


def _check_common(d: Mapping, data_type: str, body: set[str]) -> None:
    if not isinstance(d, Mapping):
        raise PragmaDecodeError("body is not a JSON object")
    missing = [k for k in (*_COMMON, *sorted(body)) if k not in d]
    if missing:
        raise PragmaDecodeError(f"missing fields {missing}")
    if d["data_type"] != data_type:
        raise PragmaDecodeError(f"data_type {d['data_type']!r}, expected {data_type!r}")
    if d["version"] != VERSION:
        raise PragmaDecodeError(f"version {d['version']!r}, this reader knows {VERSION}")


def _levels(raw: Iterable) -> tuple[Level, ...]:
    out = []
    for lv in raw:
        if not isinstance(lv, (list, tuple)) or len(lv) != 2:
            raise PragmaDecodeError(f"level {lv!r} is not [price, quantity]")
        out.append((str(lv[0]), str(lv[1])))
    return tuple(out)


def _market_of_pb(v: int) -> str:
    try:
        return _MARKET_OF_PB[v]
    except KeyError:
        raise PragmaDecodeError(f"market_type enum {v} is not spot or perpetual") from None


# -- builders ---------------------------------------------------------------------------------


def _header(
    feed: FeedKey, data_type: str, identity: tuple, event_ts_us: int, publish_ts_us: int, producer: str
) -> dict:
    """The header fields a new message of `feed` gets (version and data_type: the record's defaults)."""
    return {
        "message_id": message_id(feed.key(), data_type, *identity),
        "event_timestamp": iso_utc(event_ts_us),
        "publish_timestamp": iso_utc(publish_ts_us),
        "producer": producer,
        "market_type": feed.market_type,
        "token_ticker": feed.token_ticker,
        "source_id": feed.source_id,
        "network_id": feed.network_id,
    }


def build_price(
    feed: FeedKey,
    price: str,
    *,
    event_ts_us: int,
    publish_ts_us: int,
    producer: str,
    identity: tuple,
    metadata: Mapping[str, str] | None = None,
) -> PriceRecord:
    """A price message; ``identity`` is what makes the message unique within its feed
    (e.g. the source event id and the price definition) and seeds message_id."""
    return PriceRecord(
        **_header(feed, PRICE, identity, event_ts_us, publish_ts_us, producer),
        price=price,
        metadata=dict(metadata or {}),
    )


def build_depth(
    feed: FeedKey,
    bids: Iterable[tuple[int, int]],
    asks: Iterable[tuple[int, int]],
    *,
    price_scale: int,
    size_scale: int,
    event_ts_us: int,
    publish_ts_us: int,
    producer: str,
    identity: tuple,
    metadata: Mapping[str, str] | None = None,
) -> OrderbookRecord:
    """A depth message from scaled-integer levels (best first on each side)."""

    def conv(levels: Iterable[tuple[int, int]]) -> tuple[Level, ...]:
        return tuple((from_scaled(px, price_scale), from_scaled(q, size_scale)) for px, q in levels)

    return OrderbookRecord(
        **_header(feed, MARKET_DEPTH, identity, event_ts_us, publish_ts_us, producer),
        bids=conv(bids),
        asks=conv(asks),
        metadata=dict(metadata or {}),
    )


# -- encodings --------------------------------------------------------------------------------


def encode(record: PragmaRecord, encoding: str = "json") -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of a record; the content-type header names the encoding."""
    if encoding == "json":
        value = json.dumps(record.to_json_dict(), separators=(",", ":"), ensure_ascii=False).encode()
        ctype = JSON_CONTENT_TYPE
    elif encoding == "protobuf":
        value = record.to_proto().SerializeToString(deterministic=True)
        ctype = PROTO_PRICE_CONTENT_TYPE if isinstance(record, PriceRecord) else PROTO_DEPTH_CONTENT_TYPE
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return value, [(CONTENT_TYPE_HEADER, ctype.encode())]


def content_type(headers: Iterable[tuple[str, bytes]] | None) -> str:
    for k, v in headers or ():
        if k == CONTENT_TYPE_HEADER and v is not None:
            return v.decode("ascii", "replace")
    return JSON_CONTENT_TYPE  # the contract's JSON encoding is the default


def decode(value: bytes | None, headers: Iterable[tuple[str, bytes]] | None, data_type: str) -> PragmaRecord:
    """Body -> typed record. ``data_type`` ("price" | "market_depth") is known from the topic."""
    if value is None:
        raise PragmaDecodeError("empty record value")
    ctype = content_type(headers)
    cls = PriceRecord if data_type == PRICE else OrderbookRecord
    if ctype.startswith("application/x-protobuf"):
        msg = ppb.PriceMessage() if cls is PriceRecord else ppb.OrderbookMessage()
        try:
            msg.ParseFromString(value)
        except Exception as exc:  # google.protobuf.message.DecodeError and friends
            raise PragmaDecodeError(f"not a pragma.v1 protobuf body: {exc}") from exc
        rec = cls.from_proto(msg)
        _check_common(
            {f: getattr(rec, f) for f in _COMMON} | _body_of(rec),
            data_type,
            {"price"} if cls is PriceRecord else {"bids", "asks"},
        )
        return rec
    if not ctype.startswith(JSON_CONTENT_TYPE):
        raise PragmaDecodeError(f"unsupported content-type {ctype!r}")
    try:
        d = json.loads(value)
    except ValueError as exc:
        raise PragmaDecodeError(f"not JSON: {exc}") from exc
    return cls.from_json_dict(d)


def _body_of(rec: PragmaRecord) -> dict:
    return {"price": rec.price} if isinstance(rec, PriceRecord) else {"bids": rec.bids, "asks": rec.asks}

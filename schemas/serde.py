"""Envelope <-> Kafka record (key, value, headers).

Key = canonical symbol, so every record of an instrument lands on one partition in
order. The schema version travels in a header so consumers can refuse what they cannot
read instead of mis-parsing it; the event type and ids ride along as headers so routers
and the DLQ tooling need not decode the body.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id
from schemas.model import event_type_from_pb

#: Bump only with a backward-compatible .proto change (buf breaking enforces the rule).
SCHEMA_VERSION = "1"
SCHEMA_HEADER = "ticklake-schema"
CONTENT_TYPE = "application/x-protobuf; messageType=ticklake.v1.Envelope"
#: The constant headers of every record, encoded once (encode runs per event).
_SCHEMA_HEADER_ITEM = (SCHEMA_HEADER, SCHEMA_VERSION.encode())
_CONTENT_TYPE_ITEM = ("content-type", CONTENT_TYPE.encode())


class SerdeError(ValueError):
    """A record that is not a readable Envelope; carries the reason for the DLQ."""


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(env: pb.Envelope) -> KafkaRecord:
    if not env.event_id:
        raise SerdeError("envelope has no event_id; stamp it with schemas.ids.stamp_event_id")
    if not env.symbol:
        raise SerdeError("envelope has no symbol")
    return KafkaRecord(
        key=env.symbol.encode(),
        value=env.SerializeToString(),
        headers=[
            _SCHEMA_HEADER_ITEM,
            _CONTENT_TYPE_ITEM,
            ("event-type", event_type_from_pb(env.event_type).value.encode()),
            ("event-id", env.event_id.encode()),
        ],
    )


def header(headers: list[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for k, v in headers or ():
        if k == name:
            return v
    return None


def decode(
    value: bytes | None, headers: list[tuple[str, bytes]] | None = None, *, verify_id: bool = False
) -> pb.Envelope:
    """Parse a record value; raise SerdeError with a DLQ-ready reason on any problem."""
    if value is None:
        raise SerdeError("empty record value (tombstone)")
    version = header(headers, SCHEMA_HEADER)
    if version is not None and version.decode(errors="replace") != SCHEMA_VERSION:
        raise SerdeError(f"unsupported schema version {version!r}, this reader knows {SCHEMA_VERSION}")
    env = pb.Envelope()
    try:
        env.ParseFromString(value)
    except DecodeError as exc:
        raise SerdeError(f"not a protobuf Envelope: {exc}") from exc
    if not env.event_id or env.WhichOneof("payload") is None:
        raise SerdeError("envelope missing event_id or payload")
    if verify_id and compute_event_id(env) != env.event_id:
        raise SerdeError("event_id does not match the record's content")
    return env

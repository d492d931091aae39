"""The pragma v1 partition key: ``{market_type}-{network_id}-{source_id}-{token_ticker}``.

The key is the contract's unit of order: every message of one feed (one market type,
network, source and token) carries the same key, so Kafka puts it on one partition and
consumers see it in publish order. It is also what lets a consumer drop the feeds it does
not want *before* deserializing a body (streaming/pragma/consumer.py).

Market type spelling, kept exactly as docs/pragma-contract.md (Record key) shows it:

=================  ==================  ====================
canonical market    key prefix          body ``market_type``
=================  ==================  ====================
``Market.SPOT``     ``spot``            ``"spot"``
``Market.PERP``     ``perp``            ``"perpetual"``
=================  ==================  ====================

(The contract's example keys say ``perp-unknown-paradex-BTC`` while its bodies say
``"market_type": "perpetual"``; both spellings are part of the contract, this module is the
one place that maps between them.) Dated futures have no pragma market type and are not
published.

No component may contain ``-``: the key is split on the first three dashes, and a dash in
the network or source would make it ambiguous. Components are validated on the way in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.model import Market

#: body market_type -> key prefix
KEY_MARKET_OF_BODY: dict[str, str] = {"spot": "spot", "perpetual": "perp"}
#: key prefix -> body market_type
BODY_MARKET_OF_KEY: dict[str, str] = {v: k for k, v in KEY_MARKET_OF_BODY.items()}
#: canonical market -> body market_type (futures are absent on purpose)
BODY_MARKET_OF_CANONICAL: dict[Market, str] = {Market.SPOT: "spot", Market.PERP: "perpetual"}

#: Body market types, in the order the JSON Schema enum lists them.
MARKET_TYPES: tuple[str, ...] = ("spot", "perpetual")

#: Network of off-chain venues (the contract's example ``perp-unknown-paradex-BTC``).
UNKNOWN_NETWORK = "unknown"

COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


class PragmaKeyError(ValueError):
    """A key (or key component) that does not follow the contract."""


@dataclass(frozen=True, slots=True)
class FeedKey:
    """One pragma feed. ``market_type`` uses the body spelling ("spot" | "perpetual")."""

    market_type: str
    network_id: str
    source_id: str
    token_ticker: str

    def __post_init__(self) -> None:
        if self.market_type not in KEY_MARKET_OF_BODY:
            raise PragmaKeyError(f"market_type must be one of {MARKET_TYPES}, got {self.market_type!r}")
        for name in ("network_id", "source_id", "token_ticker"):
            value = getattr(self, name)
            if not isinstance(value, str) or not COMPONENT_RE.fullmatch(value):
                raise PragmaKeyError(f"{name} {value!r} must match {COMPONENT_RE.pattern} (no '-')")

    @property
    def key_market(self) -> str:
        return KEY_MARKET_OF_BODY[self.market_type]

    def key(self) -> str:
        return f"{self.key_market}-{self.network_id}-{self.source_id}-{self.token_ticker}"

    def key_bytes(self) -> bytes:
        return self.key().encode("ascii")


def feed_key(market_type: str, network_id: str, source_id: str, token_ticker: str) -> str:
    return FeedKey(market_type, network_id, source_id, token_ticker).key()


def parse_key(key: bytes | str | None) -> FeedKey:
    """The feed a record key names; raises PragmaKeyError for anything else. Cheap (one
    split, no body access), which is the point: consumers filter on it."""
    if key is None:
        raise PragmaKeyError("record has no key")
    if isinstance(key, bytes):
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            raise PragmaKeyError(f"key is not ASCII: {key!r}") from None
    parts = key.split("-", 3)
    if len(parts) != 4:
        raise PragmaKeyError(f"key {key!r} is not market_type-network_id-source_id-token_ticker")
    prefix, network, source, ticker = parts
    if prefix not in BODY_MARKET_OF_KEY:
        raise PragmaKeyError(f"key {key!r} starts with {prefix!r}; expected one of {sorted(BODY_MARKET_OF_KEY)}")
    return FeedKey(BODY_MARKET_OF_KEY[prefix], network, source, ticker)


# -- partition placement ----------------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's default partitioner hash), as a signed 32-bit int.

    The publisher uses librdkafka's ``murmur2_random`` partitioner, which is the same
    function, so a consumer in any language can compute which partition a feed lives on
    (``partition_for``) and assign just that partition.
    """
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[4 * n4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes | str, num_partitions: int) -> int:
    """Partition of a key under Kafka's default (murmur2) partitioning."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    data = key.encode("ascii") if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % num_partitions

"""Configuration of the pragma publisher: which feeds, what a price is, how depth and the
producer behave.

Plain dataclasses (no Dagster) so the service, the Dagster op and the tests build the same
object; ``from_mapping`` reads the YAML/dict form ($TICKLAKE_HOME/pragma.yaml)::

    producer: ticklake
    default_price: mid            # last_trade | mid | microprice
    auto_quotes: [USDT, USDC, USD] # instruments with these quotes publish without a feed entry
    depth_levels: 20
    depth_interval_ms: 100
    encoding: json                # json | protobuf
    feeds:
      - {exchange: okx, market: spot, symbol: BTC-USDT, price: microprice}
      - {exchange: binance, market: spot, symbol: LRC-BTC, price: last_trade, token_ticker: LRC}
    producer_settings: {retries: 0, linger_ms: 5, batch_size: 65536}

Why there is a feed list at all: the contract's key names a *token*, not a pair, so
``BTC-USDT`` and ``BTC-FDUSD`` on one venue would both be ``spot-unknown-binance-BTC``, and
a venue's linear and inverse perpetuals (OKX ``BTC-USDT-SWAP`` / ``BTC-USD-SWAP``, Bybit
``BTCUSDT`` / ``BTCPERP`` / ``BTCUSD``) would all be ``perp-unknown-<venue>-BTC``, and
interleave into one "feed". Each key therefore belongs to exactly one instrument: explicit
feeds claim theirs at start-up; the rest go by ``auto_quotes``, an order of preference:
an instrument whose quote is listed owns its key unless an instrument of an earlier-listed
quote has it, and takes it over from one of a later-listed quote (publisher.PublisherCore).
The default lists the stablecoins of linear contracts and ``USD``, the quote of every
inverse (coin-margined) perpetual, so each venue's perpetuals of a token are published
under one key: the USDT one where it is collected, else USDC, else the inverse one. A
quote not listed (``FDUSD``, ``BTC``) needs a feed entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from runtime.home import resolve_home
from schemas.model import Exchange, Market
from schemas.symbols import validate_canonical
from schemas.topics import (
    PRAGMA_ORDERBOOK_TOPIC,
    PRAGMA_PRICES_TOPIC,
    DlqStage,
    dlq_topic,
)
from streaming.pragma.keys import BODY_MARKET_OF_CANONICAL, UNKNOWN_NETWORK, FeedKey
from streaming.pragma.price import PriceDefinition

ENCODINGS = ("json", "protobuf")


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """The producer decisions of docs/pragma-contract.md (Producer settings), as numbers.

    - ``acks=1``: wait for the partition leader only. A price feed is latest-wins; waiting
      for every in-sync replica (acks=all) costs a replication round trip per batch to
      protect data the next update supersedes anyway.
    - ``retries=0`` (configurable): a retried price arrives late and, without idempotence,
      possibly out of order behind a newer one; dropping it is the better failure for
      latest-wins data. Raise it (2-3) if depth snapshots matter more than freshness.
    - idempotence off: it requires acks=all, which the contract rejects.
    - ``linger_ms``/``batch_size``: how long the client waits to fill a batch and how big
      one may get. 5 ms / 64 KiB keeps added latency to a few ms while still batching the
      bursts a 100 ms depth tick produces (tens of feeds at once); raise linger to 20-50 ms
      and batch to 1 MiB for throughput (fewer, larger requests, better compression), lower
      to 0 for the lowest latency at the price of one request per message.
    - ``compression``: lz4 is cheap on CPU and shrinks repeated JSON field names well.
    - ``buffer_max_kbytes``: the client-side queue (the contract's buffer.memory question);
      when it is full, produce() reports the error and the publisher drops that message
      (counted) instead of blocking the feed.
    """

    acks: str = "1"
    retries: int = 0
    linger_ms: int = 5
    batch_size: int = 65_536
    compression: str = "lz4"
    buffer_max_kbytes: int = 65_536
    message_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if str(self.acks) not in ("0", "1", "all", "-1"):
            raise ValueError(f"acks must be 0, 1 or all, got {self.acks!r}")
        if self.retries < 0 or self.linger_ms < 0 or self.batch_size < 1:
            raise ValueError("retries and linger_ms must be >= 0, batch_size >= 1")

    def overrides(self) -> dict[str, Any]:
        """librdkafka keys for runtime.kafka_config.producer_config(extra=...)."""
        return {
            "acks": str(self.acks),
            "enable.idempotence": False,
            "retries": self.retries,
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "compression.type": self.compression,
            "queue.buffering.max.kbytes": self.buffer_max_kbytes,
            "message.timeout.ms": self.message_timeout_ms,
            # Kafka's murmur2 (the Java default): the key -> partition map is the same for
            # every client language, so consumers can compute where a feed lives.
            "partitioner": "murmur2_random",
        }


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """One instrument explicitly published (and how its price is defined)."""

    exchange: Exchange
    market: Market
    symbol: str
    price: PriceDefinition | None = None  # None: the config's default_price
    token_ticker: str | None = None  # None: the symbol's base asset
    source_id: str | None = None  # None: the exchange name
    network_id: str = UNKNOWN_NETWORK

    def __post_init__(self) -> None:
        object.__setattr__(self, "exchange", Exchange(self.exchange))
        object.__setattr__(self, "market", Market(self.market))
        if self.market not in (Market.SPOT, Market.PERP):
            raise ValueError(f"pragma publishes spot and perpetual markets, not {self.market}")
        validate_canonical(self.symbol)
        if self.price is not None:
            object.__setattr__(self, "price", PriceDefinition(self.price))
        self.feed_key()  # validates the key components

    def feed_key(self) -> FeedKey:
        return FeedKey(
            BODY_MARKET_OF_CANONICAL[self.market],
            self.network_id,
            self.source_id or self.exchange.value,
            self.token_ticker or self.symbol.split("-", 1)[0],
        )


@dataclass(frozen=True, slots=True)
class PragmaConfig:
    producer: str = "ticklake"
    default_price: PriceDefinition = PriceDefinition.MID
    #: quotes published without an explicit feed entry, most preferred first (one key per
    #: token: module docstring); () = explicit feeds only
    auto_quotes: tuple[str, ...] = ("USDT", "USDC", "USD")
    feeds: tuple[FeedConfig, ...] = ()
    depth_levels: int = 20
    #: at most one depth message per feed per interval of venue (event) time, carrying the
    #: book at the interval's end, so a replay at any speed publishes what live does; 0 =
    #: after every book change (tests use it to check every state)
    depth_interval_ms: int = 100
    #: a dirty book with no change for this long (wall time) is published without waiting for
    #: the event that would end its event-time interval (streaming/pragma/publisher.py)
    depth_idle_flush_ms: int = 1000
    #: publish a price only when it differs from the feed's last published price
    publish_unchanged: bool = False
    #: extra decimals of the microprice beyond the instrument's price scale (it is a ratio)
    microprice_extra_decimals: int = 4
    encoding: str = "json"
    prices_topic: str = PRAGMA_PRICES_TOPIC
    orderbook_topic: str = PRAGMA_ORDERBOOK_TOPIC
    #: undecodable input records go here with the reason
    dlq_topic: str = dlq_topic(DlqStage.PRAGMA)
    #: processed.* topics to read; () = every processed trade/book topic of spot and perp
    input_topics: tuple[str, ...] = ()
    exchanges: tuple[Exchange, ...] = tuple(Exchange)
    group_id: str = "pragma-publisher"
    producer_settings: ProducerSettings = field(default_factory=ProducerSettings)
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_price", PriceDefinition(self.default_price))
        object.__setattr__(self, "auto_quotes", tuple(q.upper() for q in self.auto_quotes))
        if len(set(self.auto_quotes)) != len(self.auto_quotes):
            raise ValueError(f"auto_quotes lists a quote twice: {list(self.auto_quotes)}")
        object.__setattr__(self, "exchanges", tuple(Exchange(x) for x in self.exchanges))
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.depth_levels < 1 or self.depth_interval_ms < 0 or self.depth_idle_flush_ms < 0:
            raise ValueError("depth_levels must be >= 1, depth_interval_ms and depth_idle_flush_ms >= 0")
        if not 0 <= self.microprice_extra_decimals <= 12:
            raise ValueError("microprice_extra_decimals must be within 0..12")
        if not self.producer or not isinstance(self.producer, str):
            raise ValueError("producer must be a non-empty string")
        seen: dict[str, FeedConfig] = {}
        for f in self.feeds:
            k = f.feed_key().key()
            if k in seen:
                raise ValueError(
                    f"feeds {seen[k].symbol} and {f.symbol} on {f.exchange} both map to "
                    f"key {k!r}; give one a different token_ticker"
                )
            seen[k] = f

    def input_topic_list(self) -> list[str]:
        if self.input_topics:
            return list(self.input_topics)
        from schemas.model import EventType
        from schemas.topics import Stage, event_topic

        return [
            event_topic(Stage.PROCESSED, m, et, x)
            for x in self.exchanges
            for m in (Market.SPOT, Market.PERP)
            for et in (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)
        ]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> PragmaConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown pragma config keys {sorted(unknown)}; known: {sorted(known)}")
        if "feeds" in data:
            data["feeds"] = tuple(FeedConfig(**dict(f)) for f in data["feeds"] or ())
        if "producer_settings" in data:
            ps = dict(data["producer_settings"] or {})
            data["producer_settings"] = replace(ProducerSettings(), **ps)
        for k in ("auto_quotes", "input_topics", "exchanges"):
            if k in data:
                data[k] = tuple(data[k] or ())
        return cls(**data)

    @classmethod
    def load(cls, path: str | None) -> PragmaConfig:
        """From a YAML file; None or a missing default file gives the defaults."""
        if path is None:
            return cls()
        import yaml

        with open(path, encoding="utf-8") as f:
            return cls.from_mapping(yaml.safe_load(f) or {})


#: Environment variable naming the pragma YAML (else $TICKLAKE_HOME/pragma.yaml when it exists).
CONFIG_ENV = "TICKLAKE_PRAGMA_CONFIG"


def resolve_config_path(explicit: str | None) -> str | None:
    """The YAML to load: `explicit`, else $TICKLAKE_PRAGMA_CONFIG, else $TICKLAKE_HOME/pragma.yaml
    when it exists, else None (the built-in defaults)."""
    if explicit:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    default = resolve_home().root / "pragma.yaml"
    return str(default) if default.is_file() else None

"""Consumer helper for the pragma topics: filter by feed from the KEY, then deserialize.

The contract's point about the key (docs/pragma-contract.md) is that a consumer can drop what it does not want without
paying for the body: ``parse_key`` is one split of a short ASCII string, a JSON body is a
parse of a few hundred bytes (thousands for depth). So the filter runs on the key first
and a skipped record's value is never touched (``stats.skipped`` counts them; the tests
prove the bodies are not read by giving skipped keys undecodable bodies).

Each consumer *application* uses its own ``group_id``: Kafka then delivers every record
to every application, and instances of one application share the partitions (a feed is
on one partition, so one instance sees all of a feed, in order). Filtering cannot reduce
what is fetched from the broker (spot and perp share the topics by design); it reduces
what is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from confluent_kafka import Consumer

from runtime import kafka_config as kc
from schemas.topics import PRAGMA_ORDERBOOK_TOPIC, PRAGMA_PRICES_TOPIC
from streaming.kafka.io import check
from streaming.pragma.keys import MARKET_TYPES, FeedKey, PragmaKeyError, parse_key
from streaming.pragma.messages import (
    MARKET_DEPTH,
    PRICE,
    PragmaDecodeError,
    PragmaRecord,
    decode,
)


def _norm(values: str | Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    return frozenset([values] if isinstance(values, str) else values)


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which feeds to keep; None in a field means "any". market_types use the body
    spelling ("spot", "perpetual")."""

    market_types: frozenset[str] | None = None
    source_ids: frozenset[str] | None = None
    token_tickers: frozenset[str] | None = None
    network_ids: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        market_type: str | Iterable[str] | None = None,
        source_id: str | Iterable[str] | None = None,
        token_ticker: str | Iterable[str] | None = None,
        network_id: str | Iterable[str] | None = None,
    ) -> FeedFilter:
        f = cls(_norm(market_type), _norm(source_id), _norm(token_ticker), _norm(network_id))
        bad = (f.market_types or frozenset()) - set(MARKET_TYPES)
        if bad:
            raise ValueError(f"market_type must be among {MARKET_TYPES}, got {sorted(bad)}")
        return f

    def matches(self, feed: FeedKey) -> bool:
        return (
            (self.market_types is None or feed.market_type in self.market_types)
            and (self.source_ids is None or feed.source_id in self.source_ids)
            and (self.token_tickers is None or feed.token_ticker in self.token_tickers)
            and (self.network_ids is None or feed.network_id in self.network_ids)
        )


@dataclass(slots=True)
class ConsumerStats:
    seen: int = 0
    skipped: int = 0  # filtered out by key, body never read
    bad_keys: int = 0  # key not in the contract's format (body never read)
    decoded: int = 0  # bodies deserialized
    decode_errors: int = 0  # bodies that were not valid pragma messages
    per_feed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivered:
    """A kept record with where it came from (partition/offset let callers check order)."""

    topic: str
    partition: int
    offset: int
    key: str
    record: PragmaRecord


class PragmaConsumer:
    """Subscribe to pragma-prices-v1 and/or pragma-orderbook-v1 and yield typed records of
    the feeds the filter keeps."""

    def __init__(
        self,
        conn: kc.KafkaConnection,
        group_id: str,
        *,
        topics: Iterable[str] | None = None,
        feed_filter: FeedFilter | None = None,
        prices_topic: str = PRAGMA_PRICES_TOPIC,
        orderbook_topic: str = PRAGMA_ORDERBOOK_TOPIC,
        session_timeout_ms: int = 10_000,
        fetch_wait_max_ms: int = 100,
        commit: bool = True,
        extra: dict[str, Any] | None = None,
        raise_on_bad: bool = False,
    ) -> None:
        self.data_types = {prices_topic: PRICE, orderbook_topic: MARKET_DEPTH}
        self.topics = list(topics) if topics is not None else [prices_topic, orderbook_topic]
        unknown = [t for t in self.topics if t not in self.data_types]
        if unknown:
            raise ValueError(f"not pragma topics: {unknown}; expected {sorted(self.data_types)}")
        self.filter = feed_filter or FeedFilter()
        self.raise_on_bad = raise_on_bad
        self.stats = ConsumerStats()
        cfg = kc.consumer_config(
            conn,
            group_id,
            read_committed=True,
            session_timeout_ms=session_timeout_ms,
            fetch_wait_max_ms=fetch_wait_max_ms,
            extra={"enable.auto.commit": commit, "enable.auto.offset.store": commit, **(extra or {})},
        )
        self.consumer = Consumer(cfg)
        self.consumer.subscribe(self.topics)

    def _keep(self, key: bytes | None) -> FeedKey | None:
        try:
            feed = parse_key(key)
        except PragmaKeyError:
            self.stats.bad_keys += 1
            if self.raise_on_bad:
                raise
            return None
        if not self.filter.matches(feed):
            self.stats.skipped += 1
            return None
        return feed

    def poll_batch(self, max_messages: int = 500, timeout: float = 1.0) -> list[Delivered]:
        out: list[Delivered] = []
        for msg in self.consumer.consume(num_messages=max_messages, timeout=timeout):
            if check(msg) is None:  # end of a partition; a real error raises
                continue
            self.stats.seen += 1
            feed = self._keep(msg.key())
            if feed is None:
                continue
            self.stats.decoded += 1
            try:
                rec = decode(msg.value(), msg.headers(), self.data_types[msg.topic()])
            except PragmaDecodeError:
                self.stats.decode_errors += 1
                if self.raise_on_bad:
                    raise
                continue
            if rec.feed != feed:
                # A body that disagrees with its key breaks the contract; never hand it out.
                self.stats.decode_errors += 1
                if self.raise_on_bad:
                    raise PragmaDecodeError(f"body feed {rec.feed.key()} != key {feed.key()}")
                continue
            k = feed.key()
            self.stats.per_feed[k] = self.stats.per_feed.get(k, 0) + 1
            out.append(Delivered(msg.topic(), msg.partition(), msg.offset(), k, rec))
        return out

    def __iter__(self) -> Iterator[Delivered]:
        while True:
            yield from self.poll_batch()

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

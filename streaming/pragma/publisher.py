"""The pragma publisher: processed.* (read_committed) -> pragma-prices-v1 / pragma-orderbook-v1.

Two layers:

- ``PublisherCore`` is pure (no Kafka, clock passed in): it maps instruments to feeds,
  maintains one book per feed, and turns each trade / book change into the price message
  of the feed's configured definition, and dirty books into depth messages at most once
  per ``depth_interval_ms`` of *event time* per feed. Tests drive it with a fake clock.
- ``PragmaPublisher`` is the thin Kafka edge: consume, feed the core, produce with the
  seed's producer settings (streaming/pragma/config.py ProducerSettings), count, expose
  Prometheus metrics, dead-letter undecodable input to dlq.pragma.

Depth throttle on event time: the venue times of a feed's book deltas fall into intervals of
``depth_interval_ms``; the book as it stands after the last change of an interval is
published when the feed's first delta of a later interval arrives (before it is applied),
or, if none comes, once the feed has had no change for ``depth_idle_flush_ms`` of wall
time (the one wall-clock rule: a quiet book must not wait for its next event; a replay's
event time does not pass at all between its records). The message is the same either way
(its id is the id of the book's last event), so what is published depends on the input
events only: a capture replayed at speed max publishes what it publishes at speed 1, and
what a live run published (a wall-clock throttle published 6 depth messages for 6 minutes
of a book replayed at speed max).

Delivery: the contract is latest-wins, so offsets are auto-committed about every second
(a crash republishes or skips at most that much) and nothing is transactional. After a
restart or a partition move a feed's book is rebuilt from its next snapshot (collectors
send venue and periodic snapshots); last-trade prices resume at once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer
from pydantic import Field

from collectors.dedup import DedupWindow
from runtime import kafka_config as kc
from runtime import metrics as obs
from runtime.dlq import DlqCounters, dead_letter, reason_code, record_source
from runtime.metrics import LoopCounters
from runtime.service_cli import LoopSettings, service_main
from runtime.service_loop import ServiceLoop
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import exchange_from_pb, market_from_pb
from schemas.serde import SerdeError
from schemas.serde import decode as decode_envelope
from schemas.symbols import validate_canonical
from schemas.topics import DlqStage
from streaming.kafka.io import check
from streaming.pragma.books import FeedBook
from streaming.pragma.config import FeedConfig, PragmaConfig, resolve_config_path
from streaming.pragma.keys import BODY_MARKET_OF_CANONICAL, UNKNOWN_NETWORK, FeedKey
from streaming.pragma.messages import PragmaRecord, build_depth, build_price, encode
from streaming.pragma.price import PriceDefinition, book_price, trade_price

log = logging.getLogger(__name__)

# Metrics are defined once, in runtime/metrics.py.
PUBLISHED, PUBLISH_LATENCY = obs.PRAGMA_PUBLISHED, obs.PRAGMA_PUBLISH_LATENCY
EVENT_AGE, DELIVERY_ERRORS = obs.PRAGMA_EVENT_AGE, obs.PRAGMA_DELIVERY_ERRORS
SKIPPED, DEAD_LETTERS = obs.PRAGMA_SKIPPED, obs.PRAGMA_DEAD_LETTERS
#: Service name (Dagster run tag value, status and metrics label).
SERVICE_NAME = "pragma-publisher"
#: Envelope payloads a feed publishes from (prices from trades or the book, depth from the book).
PUBLISHED_PAYLOADS = ("trade", "book_snapshot", "book_delta")


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes
    record: PragmaRecord
    event_ts_us: int


@dataclass(slots=True)
class FeedState:
    feed: FeedKey
    definition: PriceDefinition
    symbol: str
    native: str
    book: FeedBook = field(default_factory=FeedBook)
    last_price: str | None = None
    depth_dirty: bool = False
    #: event-time interval (venue time // depth interval) of the latest delta in the dirty book
    depth_window: int | None = None
    #: wall time of the last book change (idle flush)
    last_change_us: int = 0
    #: event id of the envelope that produced the current book state (seeds depth message ids)
    book_event_id: str = ""

    @property
    def key(self) -> str:
        return self.feed.key()


class PublisherCore:
    """Instrument -> feed mapping, books, and message building; no I/O, no clock of its own.

    Key ownership (one instrument per key, docs/pragma-contract.md "Record key"): explicit
    feeds own theirs from the start; an instrument without a feed entry whose quote is in
    ``auto_quotes`` owns its key unless an instrument of an earlier-listed quote claimed it,
    and takes the key over from one of a later-listed quote (a venue's USDT perp supersedes
    its USD inverse perp of the same token whichever is read first). So the owner never
    depends on arrival order once both were seen, and a key changes hands at most once per
    quote rank.
    """

    def __init__(self, config: PragmaConfig) -> None:
        self.config = config
        self._explicit: dict[tuple, FeedConfig] = {(f.exchange, f.market, f.symbol): f for f in config.feeds}
        #: key -> instrument that owns it (explicit feeds claim theirs up front)
        self.claims: dict[str, tuple] = {f.feed_key().key(): (f.exchange, f.market, f.symbol) for f in config.feeds}
        #: (exchange, market, symbol) -> its feed, or None when it is not published
        self.feeds: dict[tuple, FeedState | None] = {}
        self.dedup = DedupWindow(200_000)
        self.skipped: dict[str, int] = {}

    # -- feed mapping -------------------------------------------------------------------------

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        SKIPPED.labels(reason).inc()

    def feed_for(self, env: pb.Envelope) -> FeedState | None:
        ident = (env.exchange, env.market, env.symbol)
        if ident in self.feeds:
            return self.feeds[ident]
        state = self._new_feed(env)
        self.feeds[ident] = state
        return state

    def _rank(self, owner: tuple) -> int | None:
        """Preference of an auto-claimed owner (index of its quote in auto_quotes); None for
        an explicit feed, which is never taken over."""
        if owner in self._explicit:
            return None
        return self.config.auto_quotes.index(owner[2].split("-")[1])

    def _new_feed(self, env: pb.Envelope) -> FeedState | None:
        try:
            exchange, market = exchange_from_pb(env.exchange), market_from_pb(env.market)
            symbol = validate_canonical(env.symbol)
        except (KeyError, ValueError):
            return None
        if exchange not in self.config.exchanges or market not in BODY_MARKET_OF_CANONICAL:
            return None  # dated futures have no pragma market type (the contract's v1.1 schemas)
        ident = (exchange, market, symbol)
        fc = self._explicit.get(ident)
        if fc is not None:
            return FeedState(fc.feed_key(), fc.price or self.config.default_price, symbol, env.native_symbol)
        base, quote = symbol.split("-")[:2]
        if quote not in self.config.auto_quotes:
            log.info(
                "pragma: %s %s %s not published: quote %s not in auto_quotes %s and no feed entry",
                exchange,
                market,
                symbol,
                quote,
                list(self.config.auto_quotes),
            )
            return None
        feed = FeedKey(BODY_MARKET_OF_CANONICAL[market], UNKNOWN_NETWORK, exchange.value, base)
        key = feed.key()
        owner = self.claims.get(key)
        if owner is not None:
            owner_rank = self._rank(owner)
            if owner_rank is None or owner_rank <= self.config.auto_quotes.index(quote):
                log.warning(
                    "pragma: %s %s %s maps to key %s owned by %s; not published", exchange, market, symbol, key, owner
                )
                return None
            # a better-ranked quote takes the key over; the previous owner is no longer published
            log.warning("pragma: key %s passes from %s to %s (auto_quotes order)", key, owner, ident)
            self._skip("key_superseded")
            self.feeds[(owner[0].pb, owner[1].pb, owner[2])] = None
        self.claims[key] = ident
        return FeedState(feed, self.config.default_price, symbol, env.native_symbol)

    # -- messages -------------------------------------------------------------------------------

    def _metadata(self, st: FeedState, **extra: str) -> dict[str, str]:
        base, quote = st.symbol.split("-")[:2]
        return {"symbol": st.symbol, "base": base, "quote": quote, "exchange_symbol": st.native, **extra}

    def _price_out(self, st: FeedState, price: str | None, env: pb.Envelope, seq: int, now_us: int) -> list[Outgoing]:
        if price is None:
            self._skip("no_price")  # empty side or crossed book
            return []
        if price == st.last_price and not self.config.publish_unchanged:
            return []
        st.last_price = price
        rec = build_price(
            st.feed,
            price,
            event_ts_us=env.exchange_ts,
            publish_ts_us=now_us,
            producer=self.config.producer,
            identity=(env.event_id, st.definition.value),
            metadata=self._metadata(st, price_definition=st.definition.value, seq=str(seq)),
        )
        return [Outgoing(self.config.prices_topic, st.feed.key_bytes(), rec, env.exchange_ts)]

    def _depth_out(self, st: FeedState, now_us: int) -> list[Outgoing]:
        b = st.book.book
        st.depth_dirty = False
        if b.crossed():
            self._skip("crossed_book")
            return []
        n = self.config.depth_levels
        rec = build_depth(
            st.feed,
            b.top_bids(n),
            b.top_asks(n),
            price_scale=b.price_scale,
            size_scale=b.size_scale,
            event_ts_us=b.exchange_ts,
            publish_ts_us=now_us,
            producer=self.config.producer,
            identity=(st.book_event_id, n),
            metadata=self._metadata(st, seq=str(b.seq), depth=str(n), size_unit=st.symbol.split("-")[0]),
        )  # base asset (books.py)
        return [Outgoing(self.config.orderbook_topic, st.feed.key_bytes(), rec, b.exchange_ts)]

    def on_envelope(self, env: pb.Envelope, now_us: int) -> list[Outgoing]:
        which = env.WhichOneof("payload")
        if which not in PUBLISHED_PAYLOADS:
            return []
        st = self.feed_for(env)
        if st is None:
            self._skip("not_a_feed")
            return []
        if not self.dedup.first_time(env.event_id):
            self._skip("duplicate")
            return []
        if which == "trade":
            if st.definition is not PriceDefinition.LAST_TRADE:
                return []
            return self._price_out(st, trade_price(env.trade.px, env.price_scale), env, env.seq, now_us)
        out: list[Outgoing] = []
        interval = self.config.depth_interval_ms * 1000

        def before(change_env: pb.Envelope) -> None:
            # A delta of a later event-time interval closes the dirty one: its book goes out
            # before the delta is applied. Snapshots neither close nor open an interval (a
            # REST snapshot may carry a receive time, not venue time).
            if (
                interval
                and st.depth_dirty
                and st.depth_window is not None
                and st.book.synced
                and change_env.WhichOneof("payload") == "book_delta"
                and change_env.exchange_ts // interval > st.depth_window
            ):
                out.extend(self._depth_out(st, now_us))

        for change in st.book.on_envelope(env, before=before):
            b = st.book.book
            st.book_event_id = change.env.event_id
            if st.definition.from_book:
                out += self._price_out(
                    st,
                    book_price(
                        st.definition, b.best_bid(), b.best_ask(), b.price_scale, self.config.microprice_extra_decimals
                    ),
                    change.env,
                    change.seq,
                    now_us,
                )
            st.depth_dirty = True
            st.last_change_us = now_us
            if interval == 0:
                out += self._depth_out(st, now_us)
            elif change.env.WhichOneof("payload") == "book_delta":
                w = change.env.exchange_ts // interval
                st.depth_window = w if st.depth_window is None else max(st.depth_window, w)
        return out

    def due_depth(self, now_us: int, *, force: bool = False) -> list[Outgoing]:
        """Depth of every dirty book that has had no change for ``depth_idle_flush_ms`` of
        wall time (``force``: every dirty book, e.g. on shutdown). Books of busy feeds go out
        from on_envelope, when their event-time interval ends."""
        idle = self.config.depth_idle_flush_ms * 1000
        out: list[Outgoing] = []
        for st in self.feeds.values():
            if st is None or not st.depth_dirty or not st.book.synced:
                continue
            if force or now_us - st.last_change_us >= idle:
                out += self._depth_out(st, now_us)
        return out

    def forget(self, instruments: list[tuple] | None = None) -> None:
        """Drop the book state of (exchange, market, symbol) instruments (None = all), on
        partition revocation; feed ownership is kept."""
        for ident, st in self.feeds.items():
            if st is not None and (instruments is None or ident in instruments):
                st.book.reset()
                st.last_price = None
                st.depth_dirty = False
                st.depth_window = None


@dataclass(slots=True)
class PublisherStats(LoopCounters):
    produced: int = 0
    delivered: int = 0
    delivery_errors: int = 0
    produce_errors: int = 0
    per_feed: dict[str, int] = field(default_factory=dict)
    per_topic: dict[str, int] = field(default_factory=dict)
    #: records sent to dlq.pragma, by reason code (also the shared Prometheus family)
    dlq: DlqCounters = field(default_factory=lambda: DlqCounters(DlqStage.PRAGMA.value))

    @property
    def dead_letters(self) -> int:
        return self.dlq.total


def _now_us() -> int:
    return time.time_ns() // 1000


class PragmaPublisherSettings(LoopSettings):
    """The publisher's settings: the Dagster job's run config (pipelines/services/pragma.py)
    and the `python -m streaming.pragma.publisher` options."""

    config_path: str | None = Field(default=None, json_schema_extra={"cli": "--config"})
    """pragma YAML (default $TICKLAKE_PRAGMA_CONFIG, else $TICKLAKE_HOME/pragma.yaml, else built-ins)
    whose keys streaming/pragma/config.py documents."""
    max_records_in: int | None = None
    """Stop after this many input records (bounded replays and tests); unset = run until stopped."""


class PragmaPublisher(ServiceLoop):
    """Kafka edge of the publisher (lifecycle: runtime.service_loop.ServiceLoop): `start`
    subscribes, `run_once` publishes one consumed batch and the depth messages due, `close`
    publishes the depth still due, flushes and closes the clients. ``max_records_in`` input
    records, when given, end the run (tests and bounded replays)."""

    name = SERVICE_NAME

    def __init__(
        self,
        conn: kc.KafkaConnection,
        config: PragmaConfig,
        *,
        clock: Callable[[], int] = _now_us,
        session_timeout_ms: int = 6000,
        max_records_in: int | None = None,
        poll_timeout_s: float = 0.05,
    ) -> None:
        super().__init__()
        self.conn = conn
        self.config = config
        self.clock = clock
        self.max_records_in = max_records_in
        self.poll_timeout_s = poll_timeout_s
        self.dlq = config.dlq_topic
        #: input partition -> instruments read from it (what to forget when it is revoked)
        self._instruments_of: dict[tuple[str, int], set[tuple]] = {}
        self._lag: obs.LagSnapshot | None = None
        self.core = PublisherCore(config)
        self.stats = PublisherStats()
        self.producer = Producer(
            kc.producer_config(
                conn.with_client_id(f"{conn.client_id}-pragma"), extra=config.producer_settings.overrides()
            )
        )
        ccfg = kc.consumer_config(
            conn,
            config.group_id,
            read_committed=True,
            session_timeout_ms=session_timeout_ms,
            fetch_wait_max_ms=kc.SERVICE_FETCH_WAIT_MAX_MS,
            extra={"enable.auto.commit": True, "enable.auto.offset.store": True, "auto.commit.interval.ms": 1000},
        )
        self.consumer = Consumer(ccfg)

    # -- producing ------------------------------------------------------------------------------

    def _deliver_cb(self, topic: str, feed: str, t0: float, event_ts_us: int):
        def cb(err, _msg) -> None:
            if err is not None:
                self.stats.delivery_errors += 1
                DELIVERY_ERRORS.labels(topic).inc()
                log.warning("pragma: %s %s not delivered: %s", topic, feed, err)
                return
            self.stats.delivered += 1
            self.stats.per_feed[feed] = self.stats.per_feed.get(feed, 0) + 1
            self.stats.per_topic[topic] = self.stats.per_topic.get(topic, 0) + 1
            PUBLISHED.labels(topic, feed).inc()
            PUBLISH_LATENCY.labels(topic).observe(time.perf_counter() - t0)
            EVENT_AGE.labels(topic).observe(max(0.0, (self.clock() - event_ts_us) / 1e6))

        return cb

    def _produce(self, out: Outgoing) -> None:
        value, headers = encode(out.record, self.config.encoding)
        feed = out.key.decode()
        try:
            self.producer.produce(
                out.topic,
                value=value,
                key=out.key,
                headers=headers,
                on_delivery=self._deliver_cb(out.topic, feed, time.perf_counter(), out.event_ts_us),
            )
            self.stats.produced += 1
        except BufferError:
            # Client queue full: latest-wins data, so drop this one rather than stall every feed.
            self.stats.produce_errors += 1
            DELIVERY_ERRORS.labels(out.topic).inc()
        self.producer.poll(0)

    def _dead_letter(self, msg, reason: str) -> None:
        """The record every stage writes (runtime.dlq), counted in the shared family too."""
        DEAD_LETTERS.labels(reason_code(reason)).inc()
        self.stats.dlq.count(reason)
        dl = dead_letter(
            DlqStage.PRAGMA,
            reason,
            source=record_source(msg.topic(), msg.partition(), msg.offset()),
            raw=msg.value(),
            ingest_ts=self.clock(),
        )

        def cb(err, _m) -> None:
            if err is not None:
                DELIVERY_ERRORS.labels(self.dlq).inc()
                log.error("pragma: dead letter not delivered to %s: %s", self.dlq, err)

        self.producer.produce(self.dlq, value=dl.value, key=dl.key, headers=dl.headers, on_delivery=cb)

    # -- loop -----------------------------------------------------------------------------------

    def lag(self) -> list[tuple[str, int, int]]:
        """Per assigned partition (this loop's thread; the scrape reads the snapshot)."""
        return obs.loop_lag(self.consumer)  # the shared definition, over the group's assignment

    def _on_revoke(self, _consumer, partitions) -> None:
        # Another instance may own these symbols now: their books would go stale here and
        # must not be published. Feeds read from partitions we keep are untouched.
        gone: set[tuple] = set()
        for tp in partitions:
            gone |= self._instruments_of.pop((tp.topic, tp.partition), set())
        self.core.forget(list(gone))

    @property
    def started(self) -> bool:
        return self._lag is not None

    def start(self) -> None:
        self.consumer.subscribe(self.config.input_topic_list(), on_revoke=self._on_revoke)
        self._lag = obs.LagSnapshot()
        obs.register_lag_provider(SERVICE_NAME, self._lag.get)
        log.info(
            "pragma publisher: %d input topics -> %s, %s (encoding %s, acks=%s, retries=%d)",
            len(self.config.input_topic_list()),
            self.config.prices_topic,
            self.config.orderbook_topic,
            self.config.encoding,
            self.config.producer_settings.acks,
            self.config.producer_settings.retries,
        )

    def run_once(self) -> bool:
        assert self._lag is not None, "start() first"
        self._lag.maybe_update(self.lag)
        msgs = self.consumer.consume(num_messages=500, timeout=self.poll_timeout_s)
        records = [m for m in msgs if check(m) is not None]
        if records:
            self.stats.consumed(SERVICE_NAME, [m.topic() for m in records])
        envs = []
        for msg in records:
            try:
                env = decode_envelope(msg.value(), msg.headers())
            except SerdeError as exc:
                self._dead_letter(msg, str(exc))
                continue
            self._instruments_of.setdefault((msg.topic(), msg.partition()), set()).add(
                (env.exchange, env.market, env.symbol)
            )
            if env.WhichOneof("payload") in PUBLISHED_PAYLOADS:
                self.core.feed_for(env)  # every instrument of the batch claims its key before any is published
            envs.append(env)
        for env in envs:
            for out in self.core.on_envelope(env, self.clock()):
                self._produce(out)
        for out in self.core.due_depth(self.clock()):
            self._produce(out)
        self.producer.poll(0)
        if self.max_records_in is not None and self.stats.records_in >= self.max_records_in:
            self.request_stop()
        return bool(msgs)

    def close(self) -> None:
        obs.unregister_lag_provider(SERVICE_NAME)
        try:
            for out in self.core.due_depth(self.clock(), force=True):
                self._produce(out)
            self.producer.flush(10)
        finally:
            self.consumer.close()
            self.producer.close()


def publisher_from_settings(
    conn: kc.KafkaConnection, settings: PragmaPublisherSettings, *, describe: Callable[[str], object] = log.info
) -> PragmaPublisher:
    """The publisher a Dagster run and the standalone entry both run (`describe` gets one line
    naming the configuration)."""
    path = resolve_config_path(settings.config_path)
    cfg = PragmaConfig.load(path)
    describe(
        f"pragma publisher: config {path or '(defaults)'}, producer {cfg.producer}, "
        f"encoding {cfg.encoding}, acks={cfg.producer_settings.acks}, "
        f"retries={cfg.producer_settings.retries}, depth {cfg.depth_levels} every "
        f"{cfg.depth_interval_ms} ms"
    )
    return PragmaPublisher(conn, cfg, max_records_in=settings.max_records_in)


main = service_main(
    __name__,
    PragmaPublisherSettings,
    lambda conn, _args, settings: publisher_from_settings(conn, settings),
    service=SERVICE_NAME,
)


if __name__ == "__main__":
    sys.exit(main())

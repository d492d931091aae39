"""The pragma v1 publishing contract, end to end on the real embedded broker.

Input: canonical envelopes made by the project's own venue adapters from genuine captures
(OKX spot/perp/futures, Binance USD-M perps, Binance spot incl. BTC-USDT from the
hftbacktest file), plus a synthetic Binance BTC-USDT-PERP (tests/sample_events.py; no
capture has a Binance BTC perp) so spot and perp of one ticker on one source meet. They
are produced to processed-style topics, the publisher runs against the broker, and every
published record is checked against the contract and against prices, books and keys the
test computes on its own (Decimal arithmetic and plain dicts, not the publisher's code).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY

from collectors.capture import REST, WS, detect, read, rest_params
from collectors.exchanges.base import RestRequest
from collectors.verify import adapter_for
from runtime import kafka_config as kc
from schemas import serde
from schemas.gen.pragma.v1 import pragma_pb2 as ppb
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import (
    EventType,
    Exchange,
    Market,
    event_type_from_pb,
    exchange_from_pb,
    market_from_pb,
)
from schemas.topics import PRAGMA_ORDERBOOK_TOPIC, PRAGMA_PRICES_TOPIC
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from streaming.pragma import consumer as consumer_mod
from streaming.pragma.config import FeedConfig, PragmaConfig, ProducerSettings
from streaming.pragma.consumer import FeedFilter, PragmaConsumer
from streaming.pragma.keys import (
    PragmaKeyError,
    feed_key,
    murmur2,
    parse_key,
    partition_for,
)
from streaming.pragma.messages import (
    OrderbookRecord,
    PragmaDecodeError,
    PriceRecord,
    decode,
    encode,
    iso_utc,
    parse_iso_utc,
)
from streaming.pragma.price import PriceDefinition, microprice, mid_price
from streaming.pragma.publisher import PragmaPublisher, PublisherCore
from tests.support.envelopes import envelope
from tests.support.processing import read_topics
from workloads.samples import (
    BINANCE_SPOT_CF,
    BINANCE_SPOT_HFT,
    BINANCE_USDM_CF,
    BYBIT_TARDIS_DERIV,
    OKX_CF,
    OKX_TARDIS_SWAP,
)

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO / "schemas" / "jsonschema"
KEY_RE = re.compile(r"^(spot|perp)-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+$")
FIXED_NOW_US = 1_750_000_000_123_456
OUT_PARTITIONS = 4
DEPTH = 5

PRICE_VALIDATOR = Draft202012Validator(
    json.loads((SCHEMA_DIR / "pragma-prices-v1.json").read_text()), format_checker=Draft202012Validator.FORMAT_CHECKER
)
DEPTH_VALIDATOR = Draft202012Validator(
    json.loads((SCHEMA_DIR / "pragma-orderbook-v1.json").read_text()),
    format_checker=Draft202012Validator.FORMAT_CHECKER,
)


# -- input: genuine captures through the project's adapters ------------------------------------


def capture_envelopes(path: Path, limit: int | None = None) -> list[pb.Envelope]:
    info = detect(path)
    adapter = adapter_for(info)
    out: list[pb.Envelope] = []
    for i, rec in enumerate(read(info)):
        if limit is not None and i >= limit:
            break
        if rec.kind == WS:
            res = adapter.on_frame(rec.payload, rec.recv_ts_us)
        elif rec.kind == REST:
            params = rest_params(rec.url)
            req = RestRequest(
                path=urlsplit(rec.url).path, params=tuple(params.items()), native_symbol=params.get("symbol", "")
            )
            res = adapter.on_rest(req, 200, rec.payload, rec.recv_ts_us)
        else:
            continue
        out += res.events
    return out


def synthetic_binance_btc_perp() -> list[pb.Envelope]:
    evs = [envelope(EventType.BOOK_SNAPSHOT, 0)]
    for i in range(1, 25):
        evs.append(envelope(EventType.BOOK_DELTA, i))
        evs.append(envelope(EventType.TRADE, i))
    return evs


@pytest.fixture(scope="module")
def events() -> list[pb.Envelope]:
    evs: list[pb.Envelope] = []
    evs += capture_envelopes(OKX_CF)
    evs += capture_envelopes(BINANCE_USDM_CF)
    evs += capture_envelopes(BINANCE_SPOT_CF)
    evs += capture_envelopes(BINANCE_SPOT_HFT, limit=3000)
    evs += synthetic_binance_btc_perp()
    kinds = {(exchange_from_pb(e.exchange), market_from_pb(e.market), event_type_from_pb(e.event_type)) for e in evs}
    # the captures must really give what the tests rely on
    assert (Exchange.OKX, Market.SPOT, EventType.BOOK_DELTA) in kinds
    assert (Exchange.BINANCE, Market.PERP, EventType.TRADE) in kinds
    assert (Exchange.OKX, Market.FUTURE, EventType.BOOK_DELTA) in kinds
    return evs


EXPLICIT_FEEDS = (
    FeedConfig(Exchange.OKX, Market.SPOT, "BTC-USDT", PriceDefinition.MICROPRICE),
    FeedConfig(Exchange.BINANCE, Market.SPOT, "BTC-USDT", PriceDefinition.LAST_TRADE),
    FeedConfig(Exchange.BINANCE, Market.PERP, "BTC-USDT-PERP", PriceDefinition.MID),
    FeedConfig(Exchange.BINANCE, Market.SPOT, "LRC-BTC", PriceDefinition.LAST_TRADE),
    FeedConfig(Exchange.BINANCE, Market.PERP, "SUSHI-USDT-PERP", PriceDefinition.MICROPRICE),
)
AUTO_QUOTES = ("USDT", "USD")


def expected_feed(env: pb.Envelope) -> tuple[str, PriceDefinition] | None:
    """Independent statement of which instrument is which feed (mirrors the test config)."""
    ex, mk = exchange_from_pb(env.exchange).value, market_from_pb(env.market)
    if mk not in (Market.SPOT, Market.PERP):
        return None
    base, quote = env.symbol.split("-")[:2]
    key = f"{'perp' if mk is Market.PERP else 'spot'}-unknown-{ex}-{base}"
    for f in EXPLICIT_FEEDS:
        if (f.exchange.value, f.market, f.symbol) == (ex, mk, env.symbol):
            return key, f.price
    if quote in AUTO_QUOTES:
        return key, PriceDefinition.MID
    return None


# -- independent model of what must be published ----------------------------------------------


def dec(scaled: int, scale: int) -> Decimal:
    return Decimal(scaled).scaleb(-scale)


def text(d: Decimal) -> str:
    s = format(d.normalize(), "f")
    return s


def iso(ts_us: int) -> str:
    dt = datetime.fromtimestamp(ts_us // 1_000_000, tz=UTC).replace(microsecond=ts_us % 1_000_000)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def expected_messages(evs: list[pb.Envelope]) -> tuple[dict, dict]:
    """key -> [(event_ts, price)] and key -> [(event_ts, bids, asks)] in feed order."""
    prices: dict[str, list] = defaultdict(list)
    depth: dict[str, list] = defaultdict(list)
    books: dict[str, dict] = {}
    for env in evs:
        which = env.WhichOneof("payload")
        feed = expected_feed(env)
        if feed is None or which not in ("trade", "book_snapshot", "book_delta"):
            continue
        key, definition = feed
        new_price = None
        if which == "trade":
            if definition is PriceDefinition.LAST_TRADE:
                new_price = text(dec(env.trade.px, env.price_scale))
        else:
            ps, ss = env.price_scale, env.size_scale
            if which == "book_snapshot":
                b = books[key] = {"bids": {}, "asks": {}}
                levels = env.book_snapshot
            else:
                b = books.get(key)
                if b is None:
                    continue
                levels = env.book_delta
            for side, lv in (("bids", levels.bids), ("asks", levels.asks)):
                for level in lv:
                    px, q = dec(level.px, ps), dec(level.qty, ss)
                    if q == 0:
                        b[side].pop(px, None)
                    else:
                        b[side][px] = q
            bids = sorted(b["bids"].items(), reverse=True)
            asks = sorted(b["asks"].items())
            depth[key].append(
                (
                    iso(env.exchange_ts),
                    [[text(p), text(q)] for p, q in bids[:DEPTH]],
                    [[text(p), text(q)] for p, q in asks[:DEPTH]],
                )
            )
            if bids and asks and bids[0][0] < asks[0][0]:
                (bp, bq), (ap, aq) = bids[0], asks[0]
                if definition is PriceDefinition.MID:
                    new_price = text((bp + ap) / 2)
                elif definition is PriceDefinition.MICROPRICE:
                    with localcontext() as ctx:
                        ctx.prec = 80
                        micro = (bp * aq + ap * bq) / (bq + aq)
                        new_price = text(micro.quantize(Decimal(1).scaleb(-(ps + 4)), rounding=ROUND_HALF_EVEN))
        if new_price is not None and (not prices[key] or prices[key][-1][1] != new_price):
            prices[key].append((iso(env.exchange_ts), new_price))
    return prices, depth


# -- the broker run ----------------------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, count: int, deadline_polls: int = 600) -> list:
    """Every record of `topic` from the beginning until `count` were read."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        out = []
        polls = 0
        while len(out) < count and polls < deadline_polls:
            polls += 1
            for m in c.consume(num_messages=1000, timeout=0.1):
                assert m.error() is None, m.error()
                out.append(m)
        assert len(out) == count, f"read {len(out)} of {count} records from {topic}"
        return out
    finally:
        c.close()


@pytest.fixture(scope="module")
def run(kafka_broker, events):
    uid = uuid.uuid4().hex[:8]
    bootstrap = kafka_broker.bootstrap
    topics = {
        "trade": f"t{uid}.processed.trades",
        "book_snapshot": f"t{uid}.processed.snapshots",
        "book_delta": f"t{uid}.processed.deltas",
        "other": f"t{uid}.processed.other",
    }
    prices_topic, depth_topic, dlq = f"{PRAGMA_PRICES_TOPIC}.{uid}", f"{PRAGMA_ORDERBOOK_TOPIC}.{uid}", f"dlq.{uid}"
    admin = admin_client(bootstrap)
    specs = {t: TopicSpec(3, 3_600_000) for t in topics.values()}
    specs |= {
        prices_topic: TopicSpec(OUT_PARTITIONS, 3_600_000),
        depth_topic: TopicSpec(OUT_PARTITIONS, 3_600_000),
        dlq: TopicSpec(1, 3_600_000),
    }
    create_topics(admin, specs, 1)

    prod = Producer({"bootstrap.servers": bootstrap})
    for env in events:
        rec = serde.encode(env)
        prod.produce(
            topics.get(env.WhichOneof("payload"), topics["other"]), value=rec.value, key=rec.key, headers=rec.headers
        )
    prod.produce(topics["trade"], value=b"\x00not an envelope", key=b"BTC-USDT")  # must go to the DLQ
    assert prod.flush(30) == 0
    n_in = len(events) + 1

    cfg = PragmaConfig(
        feeds=EXPLICIT_FEEDS,
        auto_quotes=AUTO_QUOTES,
        depth_levels=DEPTH,
        depth_interval_ms=0,
        prices_topic=prices_topic,
        orderbook_topic=depth_topic,
        input_topics=tuple(topics.values()),
        group_id=f"pragma-{uid}",
        dlq_topic=dlq,
    )
    conn = kc.KafkaConnection(bootstrap_servers=bootstrap)
    pub = PragmaPublisher(conn, cfg, clock=lambda: FIXED_NOW_US, session_timeout_ms=2000, max_records_in=n_in)
    stats = pub.run()
    assert stats.records_in == n_in
    assert stats.delivery_errors == 0 and stats.produce_errors == 0
    prices = read_topic(bootstrap, prices_topic, stats.per_topic[prices_topic])
    depth = read_topic(bootstrap, depth_topic, stats.per_topic[depth_topic])
    dead = read_topic(bootstrap, dlq, 1)
    return {
        "bootstrap": bootstrap,
        "conn": conn,
        "cfg": cfg,
        "stats": stats,
        "prices": prices,
        "depth": depth,
        "dead": dead,
        "prices_topic": prices_topic,
        "depth_topic": depth_topic,
        "input_topics": topics,
        "core": pub.core,
        "uid": uid,
    }


def by_key(msgs) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        out[m.key().decode()].append(m)
    return out


# -- contract tests on the broker run ----------------------------------------------------------


def test_every_key_follows_the_format_and_names_the_body_feed(run):
    for m in run["prices"] + run["depth"]:
        key = m.key().decode()
        assert KEY_RE.match(key), key
        body = json.loads(m.value())
        prefix = {"spot": "spot", "perpetual": "perp"}[body["market_type"]]
        assert key == f"{prefix}-{body['network_id']}-{body['source_id']}-{body['token_ticker']}"
        assert parse_key(key).market_type == body["market_type"]


def test_every_message_validates_against_its_json_schema(run):
    assert run["prices"] and run["depth"]
    for m in run["prices"]:
        PRICE_VALIDATOR.validate(json.loads(m.value()))
        assert dict(m.headers())["content-type"] == b"application/json"
    for m in run["depth"]:
        DEPTH_VALIDATOR.validate(json.loads(m.value()))


def test_one_feed_one_partition_kafka_murmur2_placement(run):
    for msgs in (run["prices"], run["depth"]):
        parts: dict[str, set] = defaultdict(set)
        for m in msgs:
            parts[m.key().decode()].add(m.partition())
        assert len(parts) > 1
        for key, ps in parts.items():
            assert ps == {partition_for(key, OUT_PARTITIONS)}, key
    # more than one partition is in use, so "one partition per feed" is not trivially true
    assert len({m.partition() for m in run["depth"]}) > 1


def test_published_feeds_are_exactly_the_configured_ones(run, events):
    want = {f[0] for e in events if (f := expected_feed(e)) is not None}
    got = {m.key().decode() for m in run["depth"]} | {m.key().decode() for m in run["prices"]}
    assert got == want
    # futures, ETH/EUR-quoted instruments without a feed entry, are not published
    assert not any("BLZ" in k or "RUNE" in k for k in got)
    assert "spot-unknown-binance-LRC" in got  # explicit feed with a BTC quote


def test_prices_equal_the_configured_definition_in_feed_order(run, events):
    exp_prices, _ = expected_messages(events)
    got = {
        k: [(json.loads(m.value())["event_timestamp"], json.loads(m.value())["price"]) for m in ms]
        for k, ms in by_key(run["prices"]).items()
    }
    assert set(got) == {k for k, v in exp_prices.items() if v}
    for key, seq in exp_prices.items():
        assert got.get(key, []) == seq, key
    # every definition was exercised on genuine data
    defs = {json.loads(m.value())["metadata"]["price_definition"] for m in run["prices"]}
    assert defs == {"last_trade", "mid", "microprice"}
    assert len(got["spot-unknown-okx-BTC"]) > 5 and len(got["spot-unknown-binance-BTC"]) > 50


def test_depth_is_the_top_levels_of_the_maintained_book_in_order(run, events):
    _, exp_depth = expected_messages(events)
    got = {
        k: [(b["event_timestamp"], b["bids"], b["asks"]) for b in (json.loads(m.value()) for m in ms)]
        for k, ms in by_key(run["depth"]).items()
    }
    assert set(got) == set(exp_depth)
    for key, seq in exp_depth.items():
        assert got[key] == seq, key
    assert max(len(b) for _, b, _ in got["spot-unknown-binance-BTC"]) == DEPTH


def test_spot_and_perp_of_one_ticker_are_distinct_feeds(run):
    keys = by_key(run["prices"])
    spot, perp = keys["spot-unknown-binance-BTC"], keys["perp-unknown-binance-BTC"]
    assert {json.loads(m.value())["market_type"] for m in spot} == {"spot"}
    assert {json.loads(m.value())["market_type"] for m in perp} == {"perpetual"}
    assert {json.loads(m.value())["metadata"]["symbol"] for m in spot} == {"BTC-USDT"}
    assert {json.loads(m.value())["metadata"]["symbol"] for m in perp} == {"BTC-USDT-PERP"}
    # each is its own ordered feed: its messages come in its own offset order on its partition
    for ms in (spot, perp):
        assert len({m.partition() for m in ms}) == 1
        assert [m.offset() for m in ms] == sorted(m.offset() for m in ms)


def test_message_ids_are_unique_and_timestamps_utc(run):
    ids = [json.loads(m.value())["message_id"] for m in run["prices"] + run["depth"]]
    assert len(ids) == len(set(ids))
    for m in run["prices"][:50]:
        body = json.loads(m.value())
        assert body["publish_timestamp"] == iso(FIXED_NOW_US)
        assert parse_iso_utc(body["event_timestamp"]) > 1_500_000_000_000_000


def test_bad_input_goes_to_the_dead_letter_topic(run):
    dl = pb.DeadLetter()
    dl.ParseFromString(run["dead"][0].value())
    assert dl.stage == "pragma" and dl.raw == b"\x00not an envelope"
    assert "Envelope" in dl.reason and dl.source.split("[")[0] == run["input_topics"]["trade"]
    assert run["stats"].dead_letters == 1


def test_metrics_count_published_messages_per_feed(run):
    for topic, msgs in ((run["prices_topic"], run["prices"]), (run["depth_topic"], run["depth"])):
        for key, ms in by_key(msgs).items():
            assert REGISTRY.get_sample_value(
                "ticklake_pragma_messages_published_total", {"topic": topic, "feed": key}
            ) == len(ms)
        assert REGISTRY.get_sample_value("ticklake_pragma_publish_latency_seconds_count", {"topic": topic}) == len(msgs)


def test_consumer_helper_filters_by_key_without_deserializing(run, monkeypatch):
    """Perp-only consumer over both topics. Every spot key also gets an undecodable body
    appended: if the helper read any skipped body, decode_errors would show it."""
    bootstrap = run["bootstrap"]
    prod = Producer({"bootstrap.servers": bootstrap})
    junk = 0
    for topic, msgs in ((run["prices_topic"], run["prices"]), (run["depth_topic"], run["depth"])):
        for key in {m.key() for m in msgs if m.key().startswith(b"spot-")}:
            prod.produce(topic, key=key, value=b"{not json", headers=[("content-type", b"application/json")])
            junk += 1
    assert prod.flush(30) == 0
    calls = []
    real_decode = consumer_mod.decode

    def counting_decode(*a, **kw):
        calls.append(1)
        return real_decode(*a, **kw)

    monkeypatch.setattr(consumer_mod, "decode", counting_decode)
    all_msgs = run["prices"] + run["depth"]
    perp = [m for m in all_msgs if m.key().startswith(b"perp-")]
    total = len(all_msgs) + junk
    with PragmaConsumer(
        run["conn"],
        f"app-{run['uid']}",
        feed_filter=FeedFilter.of(market_type="perpetual"),
        prices_topic=run["prices_topic"],
        orderbook_topic=run["depth_topic"],
        session_timeout_ms=2000,
        fetch_wait_max_ms=10,
        raise_on_bad=True,
    ) as cons:
        got = []
        for _ in range(600):
            got += cons.poll_batch(timeout=0.1)
            if cons.stats.seen >= total:
                break
    assert cons.stats.seen == total
    assert cons.stats.skipped == total - len(perp)
    assert cons.stats.decoded == len(perp) == len(calls) == len(got)
    assert cons.stats.decode_errors == 0 and cons.stats.bad_keys == 0
    assert all(isinstance(d.record, PriceRecord | OrderbookRecord) and d.record.market_type == "perpetual" for d in got)
    # order per feed (and topic) as published
    for key, ms in by_key(perp).items():
        for topic in (run["prices_topic"], run["depth_topic"]):
            mine = [d for d in got if d.key == key and d.topic == topic]
            theirs = [m for m in ms if m.topic() == topic]
            assert [(d.partition, d.offset) for d in mine] == [(m.partition(), m.offset()) for m in theirs]
            assert [d.record.message_id for d in mine] == [json.loads(m.value())["message_id"] for m in theirs]


def test_consumer_filters_by_source_and_ticker(run):
    prices = run["prices"]
    want = [m for m in prices if m.key() == b"perp-unknown-binance-SUSHI"]
    with PragmaConsumer(
        run["conn"],
        f"app2-{run['uid']}",
        topics=[run["prices_topic"]],
        feed_filter=FeedFilter.of(market_type="perpetual", source_id="binance", token_ticker="SUSHI"),
        prices_topic=run["prices_topic"],
        orderbook_topic=run["depth_topic"],
        session_timeout_ms=2000,
        fetch_wait_max_ms=10,
    ) as cons:
        got = []
        for _ in range(600):
            got += cons.poll_batch(timeout=0.1)
            if cons.stats.seen >= len(prices):
                break
    assert want and [d.record.price for d in got] == [json.loads(m.value())["price"] for m in want]
    assert {d.record.metadata["price_definition"] for d in got} == {"microprice"}


def test_protobuf_encoding_carries_the_same_records(run, kafka_broker, events):
    """A second publisher in protobuf mode over the same input: identical records."""
    uid = uuid.uuid4().hex[:8]
    pt, dt = f"{PRAGMA_PRICES_TOPIC}.pb{uid}", f"{PRAGMA_ORDERBOOK_TOPIC}.pb{uid}"
    create_topics(
        admin_client(kafka_broker.bootstrap),
        {pt: TopicSpec(OUT_PARTITIONS, 3_600_000), dt: TopicSpec(OUT_PARTITIONS, 3_600_000)},
        1,
    )
    cfg = PragmaConfig(
        feeds=EXPLICIT_FEEDS,
        auto_quotes=AUTO_QUOTES,
        depth_levels=DEPTH,
        depth_interval_ms=0,
        prices_topic=pt,
        orderbook_topic=dt,
        input_topics=tuple(run["input_topics"].values()),
        group_id=f"pragma-pb-{uid}",
        encoding="protobuf",
        dlq_topic=f"dlq.{run['uid']}",
    )
    stats = PragmaPublisher(
        run["conn"], cfg, clock=lambda: FIXED_NOW_US, session_timeout_ms=2000, max_records_in=len(events) + 1
    ).run()
    for topic, json_msgs, data_type in ((pt, run["prices"], "price"), (dt, run["depth"], "market_depth")):
        pb_msgs = read_topic(run["bootstrap"], topic, stats.per_topic[topic])
        assert all(dict(m.headers())["content-type"].startswith(b"application/x-protobuf") for m in pb_msgs)
        as_pb = {k: [decode(m.value(), m.headers(), data_type) for m in ms] for k, ms in by_key(pb_msgs).items()}
        as_json = {k: [decode(m.value(), m.headers(), data_type) for m in ms] for k, ms in by_key(json_msgs).items()}
        assert as_pb == as_json


# -- pure parts ----------------------------------------------------------------------------------


def test_key_format_and_parse():
    assert feed_key("perpetual", "unknown", "binance", "BTC") == "perp-unknown-binance-BTC"
    assert feed_key("spot", "ethereum", "ekubo", "ETH") == "spot-ethereum-ekubo-ETH"
    k = parse_key(b"perp-unknown-paradex-BTC")
    assert (k.market_type, k.network_id, k.source_id, k.token_ticker) == ("perpetual", "unknown", "paradex", "BTC")
    for bad in (
        b"perpetual-unknown-x-BTC",
        b"spot-unknown-BTC",
        None,
        b"spot-a-b-c-d",
        b"\xff-a-b-c",
        b"option-1-x-BTC",
    ):
        with pytest.raises(PragmaKeyError):
            parse_key(bad)
    with pytest.raises(PragmaKeyError):
        feed_key("spot", "main-net", "x", "BTC")  # a dash would make the key ambiguous


def test_murmur2_matches_kafka_reference_vectors():
    # values from Kafka's own UtilsTest (org.apache.kafka.common.utils)
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_price_definitions_exact():
    assert mid_price(6543210, 6543211, 2) == "65432.105"
    assert mid_price(100, 100, 0) is None  # locked/crossed book has no price
    assert mid_price(None, 5, 0) is None
    # (100*3 + 102*1) / 4 = 100.5
    assert microprice(100, 1, 102, 3, 0, 4) == "100.5"
    # ties round half to even at the last kept digit
    assert microprice(100, 1, 101, 1, 0, 0) == "100" and microprice(100, 1, 103, 1, 0, 0) == "102"
    with localcontext() as ctx:
        ctx.prec = 60
        for bp, bq, ap, aq in ((6543210, 7, 6543290, 3), (1, 999, 3, 1), (123456789, 13, 123456799, 17)):
            want = (
                ((Decimal(bp) * aq + Decimal(ap) * bq) / (bq + aq))
                .scaleb(-2)
                .quantize(Decimal("1e-6"), rounding=ROUND_HALF_EVEN)
            )
            assert Decimal(microprice(bp, bq, ap, aq, 2, 4)) == want


def test_schema_rejects_what_the_contract_forbids():
    good = PriceRecord(
        message_id=str(uuid.uuid4()),
        event_timestamp=iso_utc(0),
        publish_timestamp=iso_utc(1),
        producer="ticklake",
        market_type="spot",
        token_ticker="BTC",
        source_id="binance",
        network_id="unknown",
        price="65432.1",
    ).to_json_dict()
    PRICE_VALIDATOR.validate(good)
    bad_cases = [
        {"price": 65432.1},
        {"price": "6.5e4"},
        {"market_type": "perp"},
        {"version": "1.0"},
        {"message_id": "not-a-uuid"},
        {"event_timestamp": "2024-08-09 00:00:00"},
        {"extra": 1},
        {"data_type": "market_depth"},
    ]
    for change in bad_cases:
        assert not PRICE_VALIDATOR.is_valid(good | change), change
    for field_name in ("market_type", "price", "message_id"):
        assert not PRICE_VALIDATOR.is_valid({k: v for k, v in good.items() if k != field_name})
    depth = OrderbookRecord(
        message_id=str(uuid.uuid4()),
        event_timestamp=iso_utc(0),
        publish_timestamp=iso_utc(0),
        producer="p",
        market_type="perpetual",
        token_ticker="BTC",
        source_id="okx",
        network_id="unknown",
        bids=(("1.5", "2"),),
        asks=(("1.6", "0.25"),),
    ).to_json_dict()
    DEPTH_VALIDATOR.validate(depth)
    for change in ({"bids": [["1.5"]]}, {"asks": [[1.6, "0.25"]]}, {"bids": [["1.5", "2", "3"]]}):
        assert not DEPTH_VALIDATOR.is_valid(depth | change), change


def test_proto_round_trip_and_same_fields_as_json():
    rec = PriceRecord(
        message_id=str(uuid.uuid4()),
        event_timestamp=iso_utc(1_723_161_600_000_001),
        publish_timestamp=iso_utc(1_723_161_600_000_002),
        producer="ticklake",
        market_type="perpetual",
        token_ticker="BTC",
        source_id="bybit",
        network_id="unknown",
        price="0.00001234",
        metadata={"symbol": "BTC-USDT-PERP"},
    )
    value, headers = encode(rec, "protobuf")
    assert decode(value, headers, "price") == rec
    depth = OrderbookRecord(
        message_id=str(uuid.uuid4()),
        event_timestamp=iso_utc(5),
        publish_timestamp=iso_utc(6),
        producer="ticklake",
        market_type="spot",
        token_ticker="ETH",
        source_id="okx",
        network_id="unknown",
        bids=(("3000.1", "1"), ("3000", "2.5")),
        asks=(("3000.2", "7"),),
    )
    value, headers = encode(depth, "protobuf")
    assert decode(value, headers, "market_depth") == depth
    # the .proto has exactly the JSON body's fields
    json_fields = set(PRICE_VALIDATOR.schema["properties"])
    assert {f.name for f in ppb.PriceMessage.DESCRIPTOR.fields} == json_fields
    assert {f.name for f in ppb.OrderbookMessage.DESCRIPTOR.fields} == set(DEPTH_VALIDATOR.schema["properties"])
    with pytest.raises(PragmaDecodeError):
        decode(b"\xff\xff", headers, "market_depth")
    assert parse_iso_utc(iso_utc(1_723_161_600_000_001)) == 1_723_161_600_000_001


def test_depth_rate_limit_publishes_the_book_at_the_end_of_each_event_time_interval():
    cfg = PragmaConfig(depth_interval_ms=100, depth_levels=2, default_price=PriceDefinition.MID)
    core = PublisherCore(cfg)
    wall = 5_000_000_000_000_000  # far from the events' times
    out = core.on_envelope(envelope(EventType.BOOK_SNAPSHOT, 0), wall)
    assert [o.topic for o in out] == [cfg.prices_topic]  # depth waits for its interval to end
    for i in range(1, 6):  # five deltas 1 ms apart (event time)
        assert cfg.orderbook_topic not in {o.topic for o in core.on_envelope(envelope(EventType.BOOK_DELTA, i), wall)}
    assert core.due_depth(wall + 500_000) == []  # busy feed: no wall-clock flush yet
    out = core.on_envelope(envelope(EventType.BOOK_DELTA, 150), wall)  # next interval (event time +150 ms)
    depth = [o for o in out if o.topic == cfg.orderbook_topic]
    assert len(depth) == 1
    assert depth[0].record.metadata["seq"] == str(1005)  # the book at the end of the interval
    assert depth[0].record.event_timestamp == iso_utc(envelope(EventType.BOOK_DELTA, 5).exchange_ts)
    assert core.due_depth(wall + 900_000) == []
    flushed = core.due_depth(wall + 1_000_000)  # quiet for depth_idle_flush_ms
    assert [o.record.metadata["seq"] for o in flushed] == [str(1150)]
    assert core.due_depth(wall + 3_000_000) == []  # nothing changed: nothing sent
    # An event of the flushed interval's successor does not publish that book a second time.
    assert cfg.orderbook_topic not in {o.topic for o in core.on_envelope(envelope(EventType.BOOK_DELTA, 300), wall)}


def _replay_publisher(evs: list[pb.Envelope], speed_max: bool) -> dict[tuple[str, bytes], list[str]]:
    """The publisher core fed `evs` as a replay would: at speed 1 the wall clock follows the
    events' venue time and the loop polls between records; at speed max every record arrives
    within a few wall-clock milliseconds, in batches, and the idle flush comes at the end."""
    core = PublisherCore(PragmaConfig(feeds=EXPLICIT_FEEDS, auto_quotes=AUTO_QUOTES, depth_levels=DEPTH))
    out: list = []
    wall = 5_000_000_000_000_000
    for i, env in enumerate(evs):
        now = (env.exchange_ts + 7_000_000_000) if not speed_max else wall + i
        out += core.on_envelope(env, now)
        if not speed_max or i % 500 == 499:
            out += core.due_depth(now)
    end = (max(e.exchange_ts for e in evs) + 7_000_000_000) if not speed_max else wall + len(evs)
    out += core.due_depth(end + 2_000_000)
    per_stream: dict[tuple[str, bytes], list[str]] = defaultdict(list)  # what a consumer sees per key
    for o in out:
        per_stream[(o.topic, o.key)].append(o.record.message_id)
    return per_stream


def test_a_replay_publishes_the_same_messages_at_speed_1_and_at_speed_max():
    """Time rules run on event time: the records (ids, count, order per feed) do not depend
    on how fast the input arrives. Short captures, trimmed here from the shipped samples."""
    evs = capture_envelopes(OKX_CF)
    evs += capture_envelopes(BINANCE_SPOT_HFT, limit=6000)
    evs.sort(key=lambda e: e.ingest_ts)  # one stream, in arrival order (trimmed captures interleave)
    slow = _replay_publisher(evs, speed_max=False)
    fast = _replay_publisher(evs, speed_max=True)
    assert fast == slow  # same ids, same count, same order per key
    depth = [mid for (topic, _), ids in slow.items() if topic == PRAGMA_ORDERBOOK_TOPIC for mid in ids]
    assert len(set(depth)) == len(depth)
    # One depth message per 100 ms interval of venue time in which a book changed (not one per
    # 100 ms of the replay's wall clock): far more than a wall-clock throttle gives at speed max.
    spans = {}
    for e in evs:
        if e.WhichOneof("payload") == "book_delta":
            spans.setdefault((e.exchange, e.market, e.symbol), set()).add(e.exchange_ts // 100_000)
    assert len(depth) >= 100
    assert len(depth) <= sum(len(v) for v in spans.values()) + len(spans)


def test_config_guards():
    with pytest.raises(ValueError):
        PragmaConfig(
            feeds=(
                FeedConfig(Exchange.BINANCE, Market.SPOT, "BTC-USDT"),
                FeedConfig(Exchange.BINANCE, Market.SPOT, "BTC-FDUSD"),
            )
        )  # same key twice
    with pytest.raises(ValueError):
        FeedConfig(Exchange.OKX, Market.FUTURE, "BTC-USD-220527")
    cfg = PragmaConfig.from_mapping(
        {
            "default_price": "microprice",
            "producer_settings": {"retries": 2},
            "feeds": [{"exchange": "okx", "market": "perp", "symbol": "ETH-USDT-PERP", "price": "last_trade"}],
        }
    )
    assert cfg.default_price is PriceDefinition.MICROPRICE and cfg.feeds[0].price is PriceDefinition.LAST_TRADE
    with pytest.raises(ValueError):
        PragmaConfig.from_mapping({"depth": 5})


def test_producer_settings_follow_the_contract():
    s = ProducerSettings()
    cfg = kc.producer_config(kc.KafkaConnection(), extra=s.overrides())
    assert cfg["acks"] == "1" and cfg["retries"] == 0 and cfg["enable.idempotence"] is False
    assert cfg["partitioner"] == "murmur2_random"
    assert kc.producer_config(kc.KafkaConnection(), extra=ProducerSettings(retries=3).overrides())["retries"] == 3


def test_unchanged_prices_are_not_republished():
    core = PublisherCore(
        PragmaConfig(feeds=(FeedConfig(Exchange.BINANCE, Market.PERP, "BTC-USDT-PERP", PriceDefinition.LAST_TRADE),))
    )
    t = envelope(EventType.TRADE, 1)
    same = pb.Envelope()
    same.CopyFrom(t)
    same.trade.trade_id = "other"
    same.event_id = "x" * 32
    assert len(core.on_envelope(t, 0)) == 1
    assert core.on_envelope(same, 0) == []  # same price again
    assert core.on_envelope(t, 0) == []  # duplicate event id
    assert core.skipped.get("duplicate") == 1


def test_stop_request_ends_the_service_loop(run):
    """The Dagster op (a run termination) and SIGTERM stop the service through request_stop;
    the loop must return, its clients closed."""
    cfg = PragmaConfig(
        input_topics=tuple(run["input_topics"].values()),
        group_id=f"stop-{run['uid']}",
        prices_topic=run["prices_topic"] + ".unused",
        orderbook_topic=run["depth_topic"] + ".unused",
        auto_quotes=(),
    )
    pub = PragmaPublisher(run["conn"], cfg, session_timeout_ms=2000)
    pub.request_stop()
    stats = pub.run()
    assert stats.produced == 0 and pub.started


# -- the Dagster service ---------------------------------------------------------------------------


def test_supervisor_keeps_exactly_one_live_run():
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    from pipelines.services.pragma import SERVICE, SERVICE_TAG, defs, pragma_publisher_supervisor

    jobs = list(defs.jobs)
    assert [j.name for j in jobs] == ["pragma_publisher"] and list(defs.sensors) == [pragma_publisher_supervisor]
    assert jobs[0].tags[SERVICE_TAG] == SERVICE == "pragma-publisher"
    with dg.instance_for_test() as instance:
        first = pragma_publisher_supervisor(dg.build_sensor_context(instance=instance))
        assert isinstance(first, dg.RunRequest) and first.tags[SERVICE_TAG] == SERVICE
        live = instance.add_run(
            DagsterRun(
                job_name="pragma_publisher",
                run_id="c" * 32,
                status=dg.DagsterRunStatus.STARTED,
                tags={SERVICE_TAG: SERVICE},
            )
        )
        assert isinstance(pragma_publisher_supervisor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
        instance.report_run_failed(live)
        again = pragma_publisher_supervisor(dg.build_sensor_context(instance=instance))
        assert isinstance(again, dg.RunRequest)


def test_dagster_job_runs_the_publisher(run, events, tmp_path):
    """The job as Dagster runs it (real instance, the kafka resource, a YAML config file)."""
    import dagster as dg
    import yaml

    from pipelines.services.pragma import pragma_publisher
    from resources.kafka import KafkaResource

    uid = uuid.uuid4().hex[:8]
    pt, dt = f"{PRAGMA_PRICES_TOPIC}.dg{uid}", f"{PRAGMA_ORDERBOOK_TOPIC}.dg{uid}"
    create_topics(admin_client(run["bootstrap"]), {pt: TopicSpec(2, 3_600_000), dt: TopicSpec(2, 3_600_000)}, 1)
    conf = {
        "feeds": [
            {"exchange": f.exchange.value, "market": f.market.value, "symbol": f.symbol, "price": f.price.value}
            for f in EXPLICIT_FEEDS
        ],
        "auto_quotes": list(AUTO_QUOTES),
        "depth_levels": DEPTH,
        "depth_interval_ms": 0,
        "prices_topic": pt,
        "orderbook_topic": dt,
        "input_topics": list(run["input_topics"].values()),
        "group_id": f"pragma-dg-{uid}",
        "dlq_topic": f"dlq.{run['uid']}",
    }
    path = tmp_path / "pragma.yaml"
    path.write_text(yaml.safe_dump(conf))
    with dg.instance_for_test() as instance:
        result = pragma_publisher.execute_in_process(
            run_config={
                "ops": {
                    "run_pragma_publisher": {"config": {"config_path": str(path), "max_records_in": len(events) + 1}}
                }
            },
            resources={"kafka": KafkaResource(bootstrap_servers=run["bootstrap"])},
            instance=instance,
        )
    assert result.success
    summary = result.output_for_node("run_pragma_publisher")
    assert summary["records_in"] == len(events) + 1 and summary["delivery_errors"] == 0
    # same feeds and the same number of messages as the directly-run publisher
    assert summary["per_topic"] == {pt: len(run["prices"]), dt: len(run["depth"])}
    got = read_topic(run["bootstrap"], pt, len(run["prices"]))
    assert {m.key() for m in got} == {m.key() for m in run["prices"]}


def test_revoked_partitions_forget_only_their_books():
    from confluent_kafka import TopicPartition as TP

    cfg = PragmaConfig(auto_quotes=("USDT",), depth_interval_ms=0)
    pub = PragmaPublisher.__new__(PragmaPublisher)  # the revoke logic only, no clients
    pub.core = PublisherCore(cfg)
    perp = envelope(EventType.BOOK_SNAPSHOT, 0)
    spot = envelope(EventType.BOOK_SNAPSHOT, 0, market=Market.SPOT, symbol="BTC-USDT")
    pub.core.on_envelope(perp, 0)
    pub.core.on_envelope(spot, 0)
    pub._instruments_of = {
        ("snap", 0): {(perp.exchange, perp.market, perp.symbol)},
        ("snap", 1): {(spot.exchange, spot.market, spot.symbol)},
    }
    pub._on_revoke(None, [TP("snap", 0)])
    books = {st.symbol: st.book.synced for st in pub.core.feeds.values()}
    assert books == {"BTC-USDT-PERP": False, "BTC-USDT": True}


# -- perpetuals of every venue under the default configuration ----------------------------------
#
# A user run of the stack replaying the genuine OKX capture published only spot-unknown-okx-BTC:
# its perpetual, UNI-USD-SWAP (inverse, canonical UNI-USD-PERP), was skipped as "not_a_feed"
# because the default auto_quotes listed USDT only, the quote of no inverse (coin-margined)
# perpetual of any venue. These tests run the default configuration (only what the stack runs).


def okx_capture_catalog():
    """The reference data the stack's normalizer gets for the OKX capture: the emulator's
    instruments endpoints (contract values by its own rule: UNI-USD-SWAP 10 USD)."""
    import asyncio

    from collectors.replay import Emulator
    from streaming.processors.instruments import InstrumentCatalog, fetch_instruments

    async def fetch():
        emu = Emulator(server_ping_s=None)
        emu.play_capture(OKX_CF, speed=None, gate=True)
        await emu.start()
        try:
            cat = InstrumentCatalog()
            for mk in Market:
                cat.add(await asyncio.to_thread(fetch_instruments, Exchange.OKX, mk, emu.rest_base(Exchange.OKX, mk)))
            return cat
        finally:
            await emu.stop()

    return asyncio.run(fetch())


def okx_processed_envelopes() -> list[pb.Envelope]:
    """The OKX capture through the venue adapter and the real normalizer (units stated)."""
    from schemas.topics import Stage, event_topic
    from streaming.processors.normalizer import Normalizer

    norm = Normalizer(okx_capture_catalog())
    out = []
    for i, env in enumerate(capture_envelopes(OKX_CF)):
        rec = serde.encode(env)
        topic = event_topic(
            Stage.RAW, market_from_pb(env.market), event_type_from_pb(env.event_type), exchange_from_pb(env.exchange)
        )
        o = norm.process(topic, 0, i, rec.value, rec.headers)
        assert o.kind in ("ok", "duplicate"), (o.reason, env.symbol)
        if o.kind == "ok":
            out.append(o.env)
    return out


def base_text(qty: int, size_scale: int, px: int, price_scale: int, cv: str) -> str:
    """An inverse level's base-asset size, by docs/units.md (contracts * cv / px, half-even at
    the contract's decimals + 8, a nonzero size never 0), in Decimal: not schemas/units.py."""
    scale = size_scale + max(0, -Decimal(cv).as_tuple().exponent) + 8
    q = Decimal(qty).scaleb(-size_scale) * Decimal(cv) / Decimal(px).scaleb(-price_scale)
    with localcontext() as ctx:
        ctx.prec = 80
        v = q.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)
    if v == 0 and qty:
        v = Decimal(1).scaleb(-scale)
    return text(v)


@pytest.mark.timeout(300)
def test_default_config_publishes_the_okx_inverse_perp_of_the_genuine_capture(broker):
    """The stack's path: processed envelopes on the project's processed.* topics, the
    publisher with the built-in configuration (PragmaConfig()), the project's pragma topics.
    The capture's inverse perpetual must be its own feed, priced (mid) and with depth in the
    base asset; the dated future is not a pragma market type (v1.1: spot | perpetual)."""
    from workloads.kafka import create_project_topics, processed_topic

    create_project_topics(broker.bootstrap, exchanges=[x.value for x in Exchange], markets=[m.value for m in Market])
    evs = okx_processed_envelopes()
    assert {e.symbol for e in evs} >= {"BTC-USDT", "UNI-USD-PERP", "BTC-USD-220527"}
    cfg = PragmaConfig()
    inputs = set(cfg.input_topic_list())
    prod = Producer({"bootstrap.servers": broker.bootstrap})
    n_in = 0
    for env in evs:
        rec = serde.encode(env)
        prod.produce(processed_topic(env), value=rec.value, key=rec.key, headers=rec.headers)
        n_in += processed_topic(env) in inputs
    assert prod.flush(30) == 0
    pub = PragmaPublisher(
        kc.KafkaConnection(bootstrap_servers=broker.bootstrap), cfg, session_timeout_ms=2000, max_records_in=n_in
    )
    stats = pub.run()
    assert stats.records_in == n_in and stats.delivery_errors == 0 and stats.dead_letters == 0

    prices = read_topics(broker.bootstrap, [cfg.prices_topic])
    depth = read_topics(broker.bootstrap, [cfg.orderbook_topic])
    assert read_topics(broker.bootstrap, [cfg.dlq_topic]) == []
    keys = {m.key() for m in prices} | {m.key() for m in depth}
    assert keys == {b"spot-unknown-okx-BTC", b"perp-unknown-okx-UNI"}, keys
    for m in prices + depth:
        body = json.loads(m.value())
        (PRICE_VALIDATOR if body["data_type"] == "price" else DEPTH_VALIDATOR).validate(body)

    # independent model of the perp feed: the book in base units, its mid after every change
    uni = [e for e in evs if e.symbol == "UNI-USD-PERP" and e.WhichOneof("payload") in ("book_snapshot", "book_delta")]
    assert {(e.qty_unit, e.contract_value) for e in uni} == {(pb.QTY_UNIT_INVERSE_CONTRACT, "10")}
    book: dict[str, dict] = {}
    states: list[tuple[int, list, list]] = []
    mids: list[str] = []
    for env in uni:
        payload = env.book_snapshot if env.WhichOneof("payload") == "book_snapshot" else env.book_delta
        if env.WhichOneof("payload") == "book_snapshot":
            book = {"bids": {}, "asks": {}}
        elif not book:
            continue
        for side, levels in (("bids", payload.bids), ("asks", payload.asks)):
            for lv in levels:
                px = dec(lv.px, env.price_scale)
                if lv.qty == 0:
                    book[side].pop(px, None)
                else:
                    book[side][px] = base_text(lv.qty, env.size_scale, lv.px, env.price_scale, env.contract_value)
        bids, asks = sorted(book["bids"].items(), reverse=True), sorted(book["asks"].items())
        states.append((env.exchange_ts, [[text(p), q] for p, q in bids[:20]], [[text(p), q] for p, q in asks[:20]]))
        if bids and asks and bids[0][0] < asks[0][0]:
            mid = text((bids[0][0] + asks[0][0]) / 2)
            if not mids or mids[-1] != mid:
                mids.append(mid)

    perp_prices = [json.loads(m.value()) for m in prices if m.key() == b"perp-unknown-okx-UNI"]
    assert [b["price"] for b in perp_prices] == mids and len(mids) > 3
    for b in perp_prices:
        assert (b["market_type"], b["source_id"], b["token_ticker"]) == ("perpetual", "okx", "UNI")
        assert b["metadata"]["symbol"] == "UNI-USD-PERP" and b["metadata"]["exchange_symbol"] == "UNI-USD-SWAP"
        assert b["metadata"]["price_definition"] == "mid"
    perp_depth = [json.loads(m.value()) for m in depth if m.key() == b"perp-unknown-okx-UNI"]
    assert perp_depth and perp_depth[-1]["bids"] == states[-1][1] and perp_depth[-1]["asks"] == states[-1][2]
    for b in perp_depth:
        ts = parse_iso_utc(b["event_timestamp"])
        _, bids, asks = [s for s in states if s[0] <= ts][-1]
        assert (b["bids"], b["asks"]) == (bids, asks), b["event_timestamp"]
        assert b["market_type"] == "perpetual" and b["metadata"]["size_unit"] == "UNI"


def test_default_config_keys_bybit_inverse_perp_and_prefers_linear_whatever_the_order():
    """The genuine Bybit v5 fixture carries three BTC perpetuals: BTCUSDT (linear USDT),
    BTCPERP (linear USDC) and BTCUSD (inverse). One key, perp-unknown-bybit-BTC, names them
    all: with BTCUSD alone it is published (it was not: USD was not an auto quote); with all
    three the USDT one owns the key, in capture order and in reverse order alike."""
    evs = [e for e in capture_envelopes(BYBIT_TARDIS_DERIV) if e.market == Market.PERP.pb]
    assert {"BTC-USDT-PERP", "BTC-USDC-PERP", "BTC-USD-PERP"} <= {e.symbol for e in evs}

    inverse = [e for e in evs if e.symbol == "BTC-USD-PERP"]
    core = PublisherCore(PragmaConfig(default_price="last_trade"))
    outs = [o for e in inverse for o in core.on_envelope(e, FIXED_NOW_US)]
    trades = [text(dec(e.trade.px, e.price_scale)) for e in inverse if e.WhichOneof("payload") == "trade"]
    want = [p for i, p in enumerate(trades) if i == 0 or trades[i - 1] != p]
    assert [o.record.price for o in outs] == want and want
    assert {o.key for o in outs} == {b"perp-unknown-bybit-BTC"}
    assert {(o.record.market_type, o.record.metadata["symbol"]) for o in outs} == {("perpetual", "BTC-USD-PERP")}

    key = "perp-unknown-bybit-BTC"
    takeovers = 0
    for order in (evs, evs[::-1]):
        core = PublisherCore(PragmaConfig(depth_interval_ms=0))
        seen_usdt = False
        for e in order:
            # from the USDT perp's first trade or book record on, only it is published
            seen_usdt |= e.symbol == "BTC-USDT-PERP" and e.WhichOneof("payload") in (
                "trade",
                "book_snapshot",
                "book_delta",
            )
            for o in core.on_envelope(e, FIXED_NOW_US):
                if o.key == key.encode() and seen_usdt:
                    assert o.record.metadata["symbol"] == "BTC-USDT-PERP"
        assert core.claims[key] == (Exchange.BYBIT, Market.PERP, "BTC-USDT-PERP")
        owners = {st.symbol for st in core.feeds.values() if st is not None and st.key == key}
        assert owners == {"BTC-USDT-PERP"}
        takeovers += core.skipped.get("key_superseded", 0)
    assert takeovers  # one of the orders had a later-listed quote claim the key first


def test_binance_usdm_and_okx_swap_perps_get_their_keys_by_default():
    """Linear perpetuals of Binance USD-M (genuine cryptofeed capture) and OKX SWAP (genuine
    tardis fixture) keep their keys under the default configuration."""
    core = PublisherCore(PragmaConfig())
    for e in capture_envelopes(BINANCE_USDM_CF) + capture_envelopes(OKX_TARDIS_SWAP):
        core.feed_for(e)
    keys = {st.key: st.symbol for st in core.feeds.values() if st is not None}
    assert keys == {
        "perp-unknown-binance-AKRO": "AKRO-USDT-PERP",
        "perp-unknown-binance-CTK": "CTK-USDT-PERP",
        "perp-unknown-binance-KEEP": "KEEP-USDT-PERP",
        "perp-unknown-binance-SUSHI": "SUSHI-USDT-PERP",
        "perp-unknown-okx-BTC": "BTC-USDT-PERP",
        "perp-unknown-okx-WNCG": "WNCG-USDT-PERP",
    }


def test_explicit_feed_keeps_its_key_and_auto_quotes_are_distinct():
    core = PublisherCore(PragmaConfig(feeds=(FeedConfig(Exchange.BYBIT, Market.PERP, "BTC-USD-PERP"),)))
    usdt = envelope(EventType.BOOK_SNAPSHOT, 0, exchange=Exchange.BYBIT, symbol="BTC-USDT-PERP")
    inv = envelope(EventType.BOOK_SNAPSHOT, 0, exchange=Exchange.BYBIT, symbol="BTC-USD-PERP", native="BTCUSD")
    assert core.feed_for(usdt) is None  # the configured inverse feed is never taken over
    assert core.feed_for(inv).key == "perp-unknown-bybit-BTC"
    with pytest.raises(ValueError, match="twice"):
        PragmaConfig(auto_quotes=("USDT", "usdt"))

"""Every event type through the real embedded broker on its own topic, with the project's serde."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from runtime.kafka_config import KafkaConnection, consumer_config, producer_config
from schemas.ids import compute_event_id
from schemas.model import EventType, Market, event_type_from_pb, exchange_from_pb, market_from_pb
from schemas.serde import SCHEMA_HEADER, VERSION_FIELD, SerdeError, decode, encode, header
from schemas.topics import Stage, event_topic, event_types_for
from streaming.kafka.topic_admin import admin_client, ensure_topics
from streaming.kafka.topic_config import TopicConfig
from tests.support.envelopes import envelope


def _drain(consumer: Consumer, key: bytes, want: int, deadline_s: float = 120.0) -> list:
    """Records with `key`, read until `want` of them arrived (other tests' records on the
    same topic are skipped). The deadline only turns a hang into a failure."""
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        if msg.key() == key:
            got.append(msg)
    # anything more for our key would be a duplicate: give it a moment to show up
    for _ in range(20):
        msg = consumer.poll(0.05)
        if msg is not None and msg.error() is None and msg.key() == key:
            got.append(msg)
    return got


@pytest.mark.parametrize("market", [Market.SPOT, Market.PERP])
def test_every_event_type_roundtrips_through_broker(kafka_broker, market: Market) -> None:
    conn = KafkaConnection(bootstrap_servers=kafka_broker.bootstrap)
    config = TopicConfig.local(partitions=3)
    ensure_topics(admin_client(kafka_broker.bootstrap), config)

    # The session broker is shared and the project topics may already hold other tests'
    # records: a symbol of our own (= our own key) picks out exactly what this test sent.
    base = "RT" + uuid.uuid4().hex[:10].upper()
    symbol = f"{base}-USDT" if market is Market.SPOT else f"{base}-USDT-PERP"
    sent = {}
    producer = Producer(producer_config(conn))
    for et in event_types_for(market):
        envs = [envelope(et, i, market=market, symbol=symbol) for i in range(3)]
        topic = event_topic(Stage.RAW, market, et, "binance")
        for env in envs:
            rec = encode(env)
            producer.produce(topic, key=rec.key, value=rec.value, headers=rec.headers)
        sent[topic] = envs
    assert producer.flush(15) == 0

    for topic, envs in sent.items():
        consumer = Consumer(consumer_config(conn, f"roundtrip-{topic}", session_timeout_ms=6000))
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        msgs = _drain(consumer, symbol.encode(), len(envs))
        consumer.close()
        # every record of one symbol sits on one partition, in produce order
        assert len({m.partition() for m in msgs}) == 1
        decoded = [decode(m.value(), m.headers(), verify_id=True) for m in msgs]
        assert [d.event_id for d in decoded] == [e.event_id for e in envs]
        assert [d.SerializeToString(deterministic=True) for d in decoded] == [
            e.SerializeToString(deterministic=True) for e in envs
        ]
        for m, d in zip(msgs, decoded):
            assert m.key() == symbol.encode()
            assert header(m.headers(), SCHEMA_HEADER) == b"1"
            assert (
                event_topic(
                    Stage.RAW, market_from_pb(d.market), event_type_from_pb(d.event_type), exchange_from_pb(d.exchange)
                )
                == topic
            )


def test_decode_rejects_with_reasons() -> None:
    env = envelope(EventType.TRADE, 1)
    rec = encode(env)
    with pytest.raises(SerdeError, match="tombstone"):
        decode(None)
    assert decode(rec.value) == env and rec.value == env.SerializeToString() + VERSION_FIELD
    # a body that states no version (written before Envelope.schema_version): the header decides
    with pytest.raises(SerdeError, match=r"unsupported schema version b'99'"):
        decode(env.SerializeToString(), [(SCHEMA_HEADER, b"99")])
    with pytest.raises(SerdeError, match=r"unsupported schema version b'99'"):
        decode(b"\xff\xff\xff garbage", lambda: [(SCHEMA_HEADER, b"99")])  # headers read lazily too
    # a body that states one decides (a writer of another version states its own)
    other = type(env)()
    other.CopyFrom(env)
    other.schema_version = 99
    with pytest.raises(SerdeError, match=r"unsupported schema version b'99'"):
        decode(other.SerializeToString(), rec.headers)
    with pytest.raises(SerdeError, match="writes 1"):
        encode(other)
    with pytest.raises(SerdeError, match="protobuf"):
        decode(b"\xff\xff\xff garbage")
    tampered = type(env)()
    tampered.CopyFrom(env)
    tampered.trade.px += 1
    with pytest.raises(SerdeError, match="event_id"):
        decode(tampered.SerializeToString(), verify_id=True)
    assert compute_event_id(decode(rec.value, rec.headers)) == env.event_id
    unstamped = type(env)()
    unstamped.CopyFrom(env)
    unstamped.event_id = ""
    with pytest.raises(SerdeError):
        encode(unstamped)

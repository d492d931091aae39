"""Putting workload envelopes on the project's topics of a real broker.

Topic names come from schemas/topics.py (the one naming scheme); the producer settings from
runtime/kafka_config.py, as every service builds them.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer

from runtime import kafka_config as kc
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import event_type_from_pb, exchange_from_pb, market_from_pb
from schemas.serde import KafkaRecord, encode
from schemas.topics import Stage, event_topic
from streaming.kafka.topic_admin import admin_client, ensure_topics
from streaming.kafka.topic_config import TopicConfig


def connection(bootstrap: str) -> kc.KafkaConnection:
    return kc.connection_from_env(bootstrap_servers=bootstrap)


def create_project_topics(bootstrap: str, exchanges=("binance",), markets=("spot",), partitions: int = 2):
    """The project's topics (raw, processed, feature, dlq) for the given venues, idempotently."""
    cfg = TopicConfig.local(partitions).with_overrides({"exchanges": list(exchanges), "markets": list(markets)})
    return ensure_topics(admin_client(bootstrap), cfg)


def stage_topic(stage: Stage | str, env: pb.Envelope) -> str:
    """The `stage` topic an envelope belongs on (raw.* as collected, processed.* once normalized)."""
    return event_topic(
        stage, market_from_pb(env.market), event_type_from_pb(env.event_type), exchange_from_pb(env.exchange)
    )


def raw_topic(env: pb.Envelope) -> str:
    return stage_topic(Stage.RAW, env)


def processed_topic(env: pb.Envelope) -> str:
    return stage_topic(Stage.PROCESSED, env)


def produce(bootstrap: str, items: Iterable[tuple]) -> int:
    """Items are (topic, key, value, headers[, timestamp_ms]); returns how many were produced."""
    p = Producer(kc.producer_config(connection(bootstrap), linger_ms=5))
    n = 0
    for topic, key, value, headers, *ts in items:
        p.produce(topic, value=value, key=key, headers=headers, timestamp=ts[0] if ts else 0)
        n += 1
        if n % 5000 == 0:
            p.flush()
    assert p.flush(30) == 0
    return n


def produce_record(p: Producer, topic: str, rec: KafkaRecord, wait_s: float = 0.01) -> None:
    """Produce one encoded envelope with `p`, serving delivery reports while the client's
    queue is full (a paced benchmark producer must not drop or crash on a burst)."""
    while True:
        try:
            p.produce(topic, value=rec.value, key=rec.key, headers=rec.headers)
            return
        except BufferError:
            p.poll(wait_s)


def produce_raw(bootstrap: str, envs: Iterable[pb.Envelope]) -> int:
    """Envelopes on their raw.* topics, encoded as the collectors publish them."""

    def items():
        for e in envs:
            r = encode(e)
            yield raw_topic(e), r.key, r.value, r.headers

    return produce(bootstrap, items())

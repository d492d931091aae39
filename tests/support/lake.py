"""Shared by the lake sink and lake hour tests: topics, producing envelopes, reading tables."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from confluent_kafka import Producer
from pyiceberg.catalog import Catalog, load_catalog

from runtime.home import CATALOG_NAME, TicklakeHome
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import (
    EventType,
    Exchange,
    Market,
    event_type_from_pb,
)
from schemas.serde import encode
from schemas.tables import TABLES
from schemas.topics import DlqStage, Stage, dlq_topic, event_topic, event_types_for
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from workloads.kafka import processed_topic


def open_home_catalog(home: TicklakeHome) -> Catalog:
    return load_catalog(
        CATALOG_NAME, type="sql", uri=home.catalog_uri, warehouse=home.warehouse, init_catalog_tables="true"
    )


def sink_topics(exchange: Exchange = Exchange.BINANCE, market: Market = Market.SPOT) -> list[str]:
    return [event_topic(Stage.PROCESSED, market, et, exchange) for et in event_types_for(market)]


def create_sink_topics(bootstrap: str, topics: list[str], partitions: int = 3) -> None:
    specs = {t: TopicSpec(partitions, -1) for t in topics}
    specs[dlq_topic(DlqStage.LAKE)] = TopicSpec(1, -1)
    create_topics(admin_client(bootstrap), specs, replication_factor=1)


def produce(bootstrap: str, envelopes: list[pb.Envelope], raw: list[tuple[str, bytes]] = ()) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for env in envelopes:
        rec = encode(env)
        p.produce(processed_topic(env), key=rec.key, value=rec.value, headers=rec.headers)
    for topic, value in raw:
        p.produce(topic, key=b"BTC-USDT", value=value)
    assert p.flush(30) == 0


def unique_counts(envelopes: list[pb.Envelope]) -> dict[str, int]:
    """Expected rows per table: distinct event_ids per event type."""
    seen: dict[str, set[str]] = {}
    for env in envelopes:
        seen.setdefault(TABLES[event_type_from_pb(env.event_type)].name, set()).add(env.event_id)
    return {t: len(ids) for t, ids in seen.items()}


def table_rows(catalog: Catalog, name: str) -> pa.Table:
    return catalog.load_table(f"market.{name}").scan().to_arrow()


def duplicate_ids(rows: pa.Table) -> list[str]:
    c = Counter(rows.column("event_id").to_pylist())
    return [k for k, n in c.items() if n > 1]


def event_types_of(envelopes: list[pb.Envelope]) -> set[EventType]:
    return {event_type_from_pb(e.event_type) for e in envelopes}

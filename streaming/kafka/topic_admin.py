"""Create the project's Kafka topics explicitly, idempotently, with their sizing.

Topics are never left to broker auto-creation: the embedded broker's defaults
(one partition, no retention) would silently change ordering and replay behaviour,
and production brokers usually disable auto-creation anyway. Which topics exist is
derived from schemas/topics.py; how big they are comes from streaming/kafka/topic_config.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from schemas.model import Market
from schemas.topics import (
    PRAGMA_ORDERBOOK_TOPIC,
    PRAGMA_PRICES_TOPIC,
    DlqStage,
    Stage,
    all_event_topics,
    dlq_topic,
    feature_topic,
    prediction_topic,
)
from streaming.kafka.topic_config import TopicConfig, TopicSpec


class TopicAdminError(RuntimeError):
    """A topic could not be created (the message names each topic and the broker's reason)."""


@dataclass(slots=True)
class EnsureResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    #: existing topics whose partition count differs from the config: topic -> (actual, wanted).
    #: Reported, not fixed: adding partitions remaps keys (and the embedded broker cannot).
    partition_mismatch: dict[str, tuple[int, int]] = field(default_factory=dict)


def standing_topics(config: TopicConfig) -> list[str]:
    """Every topic that exists for the whole life of a deployment (predictions excluded:
    they appear when a model is deployed, see ensure_prediction_topic)."""
    topics: list[str] = []
    for stage in (Stage.RAW, Stage.PROCESSED):
        topics += all_event_topics(stage, exchanges=config.exchanges, markets=config.markets)
    topics += [feature_topic(m, x) for x in config.exchanges for m in config.markets]
    topics += [dlq_topic(s) for s in DlqStage]
    topics += [PRAGMA_PRICES_TOPIC, PRAGMA_ORDERBOOK_TOPIC]
    return topics


def planned_topics(config: TopicConfig) -> dict[str, TopicSpec]:
    return {t: config.spec_for(t) for t in standing_topics(config)}


def admin_client(bootstrap: str, extra: Mapping[str, str] | None = None) -> AdminClient:
    """A plain admin client; `extra` carries security settings (SASL/TLS) when needed."""
    return AdminClient({"bootstrap.servers": bootstrap, **(extra or {})})


def create_topics(
    admin: AdminClient, specs: Mapping[str, TopicSpec], replication_factor: int, timeout: float = 30.0
) -> EnsureResult:
    """Create the missing topics of `specs`; topics already present are left as they are."""
    result = EnsureResult()
    metadata = admin.list_topics(timeout=timeout)
    present = metadata.topics
    to_create = []
    for name, spec in specs.items():
        if name in present:
            result.existing.append(name)
            have = len(present[name].partitions)
            if have != spec.partitions:
                result.partition_mismatch[name] = (have, spec.partitions)
        else:
            to_create.append(
                NewTopic(
                    name,
                    num_partitions=spec.partitions,
                    replication_factor=replication_factor,
                    config=spec.kafka_config(),
                )
            )
    if not to_create:
        return result
    futures = admin.create_topics(to_create, operation_timeout=timeout, request_timeout=timeout)
    failures: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result()
            result.created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                # Lost a race with another creator: the topic exists, which is what we want.
                result.existing.append(name)
            else:
                failures.append(f"{name}: {err.str() if isinstance(err, KafkaError) else exc}")
    if failures:
        raise TopicAdminError("could not create topics:\n  " + "\n  ".join(failures))
    return result


def ensure_topics(admin: AdminClient, config: TopicConfig, timeout: float = 30.0) -> EnsureResult:
    """Create every standing topic of `config` that does not exist yet."""
    return create_topics(admin, planned_topics(config), config.replication_factor, timeout)


def ensure_prediction_topic(
    admin: AdminClient, market: Market | str, model: str, config: TopicConfig, timeout: float = 30.0
) -> str:
    """Create `prediction.<market>.<model>` when a model is deployed; returns the topic name."""
    name = prediction_topic(market, model)
    create_topics(admin, {name: config.prediction}, config.replication_factor, timeout)
    return name


def describe_topic_configs(
    admin: AdminClient, topics: Iterable[str], timeout: float = 30.0
) -> dict[str, dict[str, str]]:
    """The broker's view of each topic's configs (for checks and `ticklake status`)."""
    futures = admin.describe_configs([ConfigResource("topic", t) for t in topics], request_timeout=timeout)
    return {res.name: {k: v.value for k, v in fut.result().items()} for res, fut in futures.items()}

"""Partitions, retention and replication of every topic stage, per deployment profile.

ARCHITECTURE §3 fixes production sizing (raw 64 partitions / 48 h, processed 64 / 5 d,
feature 32 / 7 d); a laptop broker wants a handful of partitions. Both are values of
one dataclass so topic creation, tests and production share a single code path and
every number can be overridden without editing code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from schemas.model import Exchange, Market
from schemas.topics import PRAGMA_ORDERBOOK_TOPIC, PRAGMA_PRICES_TOPIC, Stage, stage_of

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """Sizing of one topic: Kafka's `retention.bytes` is per partition; -1 means no cap."""

    partitions: int
    retention_ms: int
    retention_bytes: int = UNLIMITED
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
        if self.retention_ms < 1 and self.retention_ms != UNLIMITED:
            raise ValueError(f"retention_ms must be >= 1 or -1, got {self.retention_ms}")
        if self.retention_bytes < 1 and self.retention_bytes != UNLIMITED:
            raise ValueError(f"retention_bytes must be >= 1 or -1, got {self.retention_bytes}")

    def kafka_config(self) -> dict[str, str]:
        """Topic-level configs sent at creation; retention is always explicit because the
        embedded broker has no sensible server default."""
        return {
            **{str(k): str(v) for k, v in self.extra.items()},
            "retention.ms": str(self.retention_ms),
            "retention.bytes": str(self.retention_bytes),
        }


#: The stages a config sizes; pragma contract topics have their own entry.
SIZED_STAGES = ("raw", "processed", "feature", "prediction", "dlq", "pragma")


@dataclass(frozen=True, slots=True)
class TopicConfig:
    raw: TopicSpec
    processed: TopicSpec
    feature: TopicSpec
    prediction: TopicSpec
    dlq: TopicSpec
    pragma: TopicSpec
    replication_factor: int = 1
    exchanges: tuple[Exchange, ...] = tuple(Exchange)
    markets: tuple[Market, ...] = tuple(Market)

    @classmethod
    def production(cls) -> TopicConfig:
        """Production sizing (ARCHITECTURE §3); prediction/dlq/pragma are this project's choices (docs/local-stack.md)."""
        durable = {"min.insync.replicas": "2"}
        return cls(
            raw=TopicSpec(64, 48 * HOUR_MS, extra=durable),
            processed=TopicSpec(64, 5 * DAY_MS, extra=durable),
            feature=TopicSpec(32, 7 * DAY_MS, extra=durable),
            prediction=TopicSpec(32, 7 * DAY_MS, extra=durable),
            dlq=TopicSpec(8, 14 * DAY_MS, extra=durable),
            pragma=TopicSpec(32, 48 * HOUR_MS, extra=durable),
            replication_factor=3,
        )

    @classmethod
    def local(cls, partitions: int = 3) -> TopicConfig:
        """Same retention times as production, a handful of partitions, a per-partition
        byte cap so a long local session cannot grow without bound."""
        cap = 256 * 1024 * 1024
        return cls(
            raw=TopicSpec(partitions, 48 * HOUR_MS, cap),
            processed=TopicSpec(partitions, 5 * DAY_MS, cap),
            feature=TopicSpec(partitions, 7 * DAY_MS, cap),
            prediction=TopicSpec(partitions, 7 * DAY_MS, cap),
            dlq=TopicSpec(partitions, 14 * DAY_MS, cap),
            pragma=TopicSpec(partitions, 48 * HOUR_MS, cap),
            replication_factor=1,
        )

    @classmethod
    def for_profile(cls, profile: str, overrides: Mapping[str, Any] | None = None) -> TopicConfig:
        """`local` or `production`, then `overrides` such as
        ``{"raw": {"partitions": 8}, "replication_factor": 1}``."""
        base = {"local": cls.local, "production": cls.production}.get(profile)
        if base is None:
            raise ValueError(f"unknown topic profile {profile!r}; expected 'local' or 'production'")
        return base().with_overrides(overrides or {})

    def with_overrides(self, overrides: Mapping[str, Any]) -> TopicConfig:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown topic config keys {sorted(unknown)}; known: {sorted(known)}")
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in SIZED_STAGES:
                spec_fields = {f.name for f in fields(TopicSpec)}
                bad = set(value) - spec_fields
                if bad:
                    raise ValueError(f"unknown keys {sorted(bad)} for {key}; known: {sorted(spec_fields)}")
                changes[key] = replace(getattr(self, key), **value)
            elif key == "exchanges":
                changes[key] = tuple(Exchange(x) for x in value)
            elif key == "markets":
                changes[key] = tuple(Market(m) for m in value)
            else:
                changes[key] = int(value)
        return replace(self, **changes)

    def with_partitions(self, partitions: int) -> TopicConfig:
        """Every stage at the same partition count (the CLI's --partitions)."""
        return self.with_overrides({s: {"partitions": partitions} for s in SIZED_STAGES})

    def spec_for(self, topic: str) -> TopicSpec:
        """Sizing of any project topic, from its name."""
        if topic in (PRAGMA_PRICES_TOPIC, PRAGMA_ORDERBOOK_TOPIC):
            return self.pragma
        stage = stage_of(topic)
        if stage is None:
            raise ValueError(f"not a ticklake topic: {topic!r}")
        return {
            Stage.RAW: self.raw,
            Stage.PROCESSED: self.processed,
            Stage.FEATURE: self.feature,
            Stage.PREDICTION: self.prediction,
            Stage.DLQ: self.dlq,
        }[stage]

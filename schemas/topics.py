"""Kafka topic names: the one place they are built and parsed.

``raw.<market>.<domain>[.<type>].<exchange>``, ``processed.…``, ``feature.<market>.signals.<exchange>``,
``prediction.<market>.<model>``, ``dlq.<stage>``, and the two pragma v1 contract topics.
Order-book records carry a type facet (snapshot/delta); single-kind domains do not
(``processed.perp.trades.okx``), which keeps ARCHITECTURE §3's examples literally valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from schemas.model import DERIVATIVE_MARKETS, EventType, Exchange, Market


class Stage(StrEnum):
    RAW = "raw"
    PROCESSED = "processed"
    FEATURE = "feature"
    PREDICTION = "prediction"
    DLQ = "dlq"


class DlqStage(StrEnum):
    COLLECTOR = "collector"
    NORMALIZE = "normalize"
    FEATURES = "features"
    LAKE = "lake"
    PRAGMA = "pragma"
    INFERENCE = "inference"


#: event type -> (domain, type facet or "")
EVENT_TOPIC_FACETS: dict[EventType, tuple[str, str]] = {
    EventType.TRADE: ("trades", ""),
    EventType.BOOK_SNAPSHOT: ("orderbook", "snapshot"),
    EventType.BOOK_DELTA: ("orderbook", "delta"),
    EventType.FUNDING: ("funding", ""),
    EventType.MARK_PRICE: ("markprice", ""),
    EventType.LIQUIDATION: ("liquidations", ""),
    EventType.TICKER: ("tickers", ""),
}
_FACETS_TO_EVENT = {v: k for k, v in EVENT_TOPIC_FACETS.items()}

PRAGMA_PRICES_TOPIC = "pragma-prices-v1"
PRAGMA_ORDERBOOK_TOPIC = "pragma-orderbook-v1"

_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


@dataclass(frozen=True, slots=True)
class EventTopic:
    stage: Stage
    market: Market
    event_type: EventType
    exchange: Exchange


def event_topic(stage: Stage | str, market: Market | str, event_type: EventType | str, exchange: Exchange | str) -> str:
    """Topic of a market-data event at the raw or processed stage."""
    st = Stage(stage)
    if st not in (Stage.RAW, Stage.PROCESSED):
        raise ValueError(f"event topics exist for raw and processed, not {st}")
    domain, kind = EVENT_TOPIC_FACETS[EventType(event_type)]
    middle = f"{domain}.{kind}" if kind else domain
    return f"{st}.{Market(market)}.{middle}.{Exchange(exchange)}"


def parse_event_topic(topic: str) -> EventTopic:
    parts = topic.split(".")
    if len(parts) not in (4, 5) or parts[0] not in (Stage.RAW, Stage.PROCESSED):
        raise ValueError(f"not a raw/processed event topic: {topic!r}")
    facets = (parts[2], parts[3] if len(parts) == 5 else "")
    if facets not in _FACETS_TO_EVENT:
        raise ValueError(f"unknown domain in topic {topic!r}")
    return EventTopic(Stage(parts[0]), Market(parts[1]), _FACETS_TO_EVENT[facets], Exchange(parts[-1]))


def feature_topic(market: Market | str, exchange: Exchange | str) -> str:
    return f"{Stage.FEATURE}.{Market(market)}.signals.{Exchange(exchange)}"


def prediction_topic(market: Market | str, model: str) -> str:
    if not _MODEL_RE.fullmatch(model):
        raise ValueError(f"model name must match {_MODEL_RE.pattern}: {model!r}")
    return f"{Stage.PREDICTION}.{Market(market)}.{model}"


def dlq_topic(stage: DlqStage | str) -> str:
    return f"{Stage.DLQ}.{DlqStage(stage)}"


def event_types_for(market: Market) -> tuple[EventType, ...]:
    """Spot markets have no funding, mark price or liquidations."""
    if market in DERIVATIVE_MARKETS:
        return tuple(EventType)
    return tuple(e for e in EventType if e not in (EventType.FUNDING, EventType.MARK_PRICE, EventType.LIQUIDATION))


def all_event_topics(stage: Stage | str, exchanges=tuple(Exchange), markets=tuple(Market)) -> list[str]:
    return [event_topic(stage, m, e, x) for x in exchanges for m in markets for e in event_types_for(Market(m))]


def stage_of(topic: str) -> Stage | None:
    """Stage of any project topic (None for the pragma contract topics)."""
    head = topic.split(".", 1)[0]
    return Stage(head) if head in Stage.__members__.values() else None

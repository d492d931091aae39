"""prediction.* topics -> the lake table market.predictions, one hour at a time.

The lake sink (streaming/lake/sink.py) is built around the protobuf envelope of the
processed.* topics; predictions are JSON records (ml/predictions.py) produced by a service
whose output is a deterministic function of the feature log and the model version, so the
hourly product is simpler and still exact: read the prediction topics, keep the records
whose feature window falls in the hour, drop duplicates by event_id (the copies of aborted
transactions the embedded broker still delivers), and replace the hour of the table in one
Iceberg commit. Re-running an hour gives the same rows.

An hour is complete for a model when its inference group has consumed the feature topics
past the hour (it produced a prediction at or after the hour's end) or is caught up with
them; the asset refuses an incomplete hour rather than sealing a partial one.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from ml.predictions import PREDICTION_SCHEMA, decode_prediction, predictions_table
from runtime import kafka_config as kc
from schemas.topics import Stage, feature_topic
from streaming.kafka.drain import pending_partitions
from streaming.kafka.io import (
    committed_offsets,
    partitions_for,
    plain_consumer,
    read_all,
)
from streaming.lake.state import HOUR_US
from streaming.processors.inference import inference_group

PREFIX = f"{Stage.PREDICTION}."


def prediction_topics(conn: kc.KafkaConnection) -> list[str]:
    c = plain_consumer(conn, "ticklake-prediction-lake-list")
    try:
        return sorted(t for t in c.list_topics(timeout=10).topics if t.startswith(PREFIX))
    finally:
        c.close()


def read_predictions(conn: kc.KafkaConnection, topics: Iterable[str], hour_us: int) -> tuple[pa.Table, dict]:
    """Distinct predictions of the hour (PREDICTION_SCHEMA, sorted) and per-model newest
    exchange_ts seen (µs), from every record now in `topics`."""
    topics = list(topics)
    if not topics:
        return PREDICTION_SCHEMA.empty_table(), {}
    c = plain_consumer(conn, "ticklake-prediction-lake")
    try:
        msgs = read_all(c, partitions_for(c, topics), idle_s=2.0, timeout=300.0)
    finally:
        c.close()
    rows: dict[str, dict] = {}
    newest: dict[str, int] = {}
    for m in msgs:
        p = decode_prediction(m.value())
        newest[p["model"]] = max(newest.get(p["model"], p["exchange_ts"]), p["exchange_ts"])
        if hour_us <= p["exchange_ts"] < hour_us + HOUR_US:
            rows[p["event_id"]] = p
    table = predictions_table(list(rows.values())).sort_by(
        [
            ("model", "ascending"),
            ("exchange", "ascending"),
            ("market", "ascending"),
            ("symbol", "ascending"),
            ("exchange_ts", "ascending"),
            ("model_version", "ascending"),
        ]
    )
    return table, newest


def group_caught_up(
    conn: kc.KafkaConnection, model: str, markets_exchanges: Iterable[tuple[str, str]] | None = None
) -> bool:
    """The model's inference group has consumed every feature record now in the topics (of
    the given (market, exchange) pairs; None: every feature topic there is). Asked of the
    records, not of the offsets (streaming/kafka/drain.py): the feature topics are written in
    transactions whose commit markers occupy offsets the group never commits past, and the
    embedded broker answers ListOffsets(latest) wrongly."""
    if markets_exchanges is None:
        c = plain_consumer(conn, "ticklake-prediction-lake-list")
        try:
            topics = sorted(t for t in c.list_topics(timeout=10).topics if t.startswith(f"{Stage.FEATURE}."))
        finally:
            c.close()
    else:
        topics = [feature_topic(m, x) for m, x in markets_exchanges]
    return topics_consumed(conn, inference_group(model), topics)


def topics_consumed(conn: kc.KafkaConnection, group: str, topics: Iterable[str]) -> bool:
    """No committed record of `topics` at or after `group`'s committed offsets."""
    c = plain_consumer(conn, group)
    try:
        tps = partitions_for(c, list(topics))
        done = committed_offsets(c, tps)
    finally:
        c.close()
    return not pending_partitions(conn, {tp: done[tp] or 0 for tp in tps})


def hour_models(rows: pa.Table) -> list[str]:
    return sorted(set(rows["model"].to_pylist())) if rows.num_rows else []


def hour_instruments(rows: pa.Table) -> list[tuple[str, str]]:
    if not rows.num_rows:
        return []
    pairs = pc.unique(pc.binary_join_element_wise(rows["market"], rows["exchange"], "|")).to_pylist()
    return sorted(tuple(p.split("|")) for p in pairs)

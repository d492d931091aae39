"""Completion of a replayed capture: its hours close and get sealed.

A capture ends; a live venue never does. Nothing will push the lake watermark past the
last hour of a capture, so without help its hours would stay open forever. This sensor
(on with the other services; it does nothing without a replay) declares the replay's
hours complete once, in this order, all of these hold:

1. the emulator reports every capture feed exhausted and written out (GET <control>/stats
   "finished") and every market-data frame of the capture served to a collector
   ("complete"; its playback holds a frame until a collector subscribed the stream, so a
   shard starting late misses nothing). A capture with frames that reached no collector
   (``unserved``: a hold timeout, a feed error) is reported and never declared complete:
   its hours would be sealed with events missing;
2. the chain has drained: the normalizer's group has no committed record left in raw.*
   and the lake sink no record after the offsets stored in its Iceberg snapshots in
   processed.* (streaming/kafka/drain.py asks the broker for records, not offsets);
3. (2) held on two consecutive evaluations (>= 15 s apart), so frames still inside a
   collector or an open transaction when the first probe ran are not missed.

Then it writes the completed range (the capture's whole hours) into the catalog
(streaming/kafka/source_complete.py; the closed-hour rule honours it) and requests a seal run
of every hour of the range. Rows arriving afterwards anyway are resealed by the
late-hours sensor.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import json
from datetime import UTC, datetime

import dagster as dg

from assets.partitions import HOURLY, hour_key
from pipelines.lake_schedules import lake_seal_job
from pipelines.launch_tags import launched_by
from pipelines.local.replay import emulator_stats, incomplete_reason, load_source
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from runtime import kafka_config as kc
from runtime.home import resolve_home
from schemas.topics import Stage, all_event_topics
from streaming.clickhouse.live import GROUP_ID as CLICKHOUSE_LIVE_GROUP
from streaming.clickhouse.live import live_topics
from streaming.kafka.drain import pending_partitions
from streaming.kafka.source_complete import CompleteRange, mark_complete
from streaming.lake.state import HOUR_US, latest_sink_state
from streaming.processors.feature_processor import feature_group, input_topics, parse_pairs

NORMALIZER_GROUP = "ticklake-normalizer"
#: The default feature processor's group (pipelines/services/processors.py runs it under name "default").
FEATURES_GROUP = feature_group("default")
CONFIRMATIONS = 2


def _partitions(conn: kc.KafkaConnection, topics: list[str]) -> list[tuple[str, int]]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient(kc.admin_config(conn)).list_topics(timeout=10).topics
    return [(t, p) for t in topics if t in md and md[t].error is None for p in sorted(md[t].partitions)]


def group_positions(conn: kc.KafkaConnection, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Committed offsets of `group` on every partition of `topics` (0 where it committed none)."""
    from confluent_kafka import Consumer, TopicPartition

    tps = _partitions(conn, topics)
    cons = Consumer(kc.consumer_config(conn, group, read_committed=True))
    try:
        got = cons.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
    finally:
        cons.close()
    return {(r.topic, r.partition): max(0, r.offset) for r in got}


def normalizer_positions(conn: kc.KafkaConnection) -> dict[tuple[str, int], int]:
    return group_positions(conn, NORMALIZER_GROUP, all_event_topics(Stage.RAW))


def sink_positions(conn: kc.KafkaConnection, lake: LakeResource) -> dict[tuple[str, int], int]:
    stored: dict[tuple[str, int], int] = {}
    for table in lake.ensure_tables().values():
        for topic, parts in latest_sink_state(table).offsets.items():
            for p, off in parts.items():
                stored[(topic, int(p))] = int(off)
    return {tp: stored.get(tp, 0) for tp in _partitions(conn, all_event_topics(Stage.PROCESSED))}


def drain_report(conn: kc.KafkaConnection, lake: LakeResource) -> dict[str, dict[tuple[str, int], int]]:
    """Stage -> partitions still holding records for it (empty dicts: drained)."""
    # The streaming feature path too: the hours' chain compares Spark and batch features with
    # what the processor published (read from ClickHouse), so sealing before the processor and
    # the live consumer have caught up would fail that parity check for a lagging service.
    return {
        "normalizer": pending_partitions(conn, normalizer_positions(conn)),
        "lake sink": pending_partitions(conn, sink_positions(conn, lake)),
        "feature processor": pending_partitions(
            conn, group_positions(conn, FEATURES_GROUP, input_topics(parse_pairs(None)))
        ),
        "clickhouse live": pending_partitions(conn, group_positions(conn, CLICKHOUSE_LIVE_GROUP, live_topics())),
    }


def completed_hour_keys(ranges: list[CompleteRange]) -> tuple[list[str], list[str]]:
    """(hourly partition keys, hours without a partition) of the whole hours `ranges` cover.

    An hour has no partition before the partitions' start (assets/partitions.py sets it
    before any venue the platform collects existed) or while it is not over (a capture just
    recorded): requesting a run of it would fail the whole tick, so it is returned apart and
    the sensor says so instead of declaring it sealed."""
    keys: list[str] = []
    outside: list[str] = []
    for r in ranges:
        for h in range(r.from_us, r.until_us, HOUR_US):
            key = hour_key(datetime.fromtimestamp(h / 1e6, tz=UTC))
            (keys if HOURLY.has_partition_key(key) else outside).append(key)
    return keys, outside


@dg.sensor(
    job=lake_seal_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Declares a replayed capture complete once it is exhausted and drained into the "
    "lake, so the hours it covers close; then seals them.",
)
def replay_completion(context: dg.SensorEvaluationContext, kafka: KafkaResource, lake: LakeResource):
    source = load_source(resolve_home().run_dir)
    if source is None:
        return dg.SkipReason("no replay running (ticklake up --replay PATH starts one)")
    cursor = json.loads(context.cursor) if context.cursor else {}
    if cursor.get("source_id") != source.source_id:
        cursor = {"source_id": source.source_id, "drained": 0, "done": False}
    if cursor["done"]:
        return dg.SkipReason(f"{source.capture}: complete; {cursor.get('outcome', 'its hours were declared closed')}")
    try:
        stats = emulator_stats(source.control_url)
    except OSError as exc:
        return dg.SkipReason(f"replay emulator at {source.control_url} not answering: {exc}")
    if not stats.get("finished"):
        items = sum(f.get("items", 0) for f in stats.get("feeds", []))
        context.update_cursor(json.dumps({**cursor, "drained": 0}))
        waiting = stats.get("waiting_for") or []
        return dg.SkipReason(
            f"{source.capture}: replaying ({items} records served so far)"
            + (f"; holding for collectors to subscribe {waiting}" if waiting else "")
        )
    problem = incomplete_reason(stats)
    if problem:
        context.update_cursor(json.dumps({**cursor, "drained": 0}))
        return dg.SkipReason(f"{source.capture}: {problem}; its hours are not declared complete")
    pending = drain_report(kafka.connection(), lake)
    busy = {stage: len(tps) for stage, tps in pending.items() if tps}
    if busy:
        context.update_cursor(json.dumps({**cursor, "drained": 0}))
        return dg.SkipReason(
            f"capture exhausted; waiting for the chain to drain: partitions with records left per stage {busy}"
        )
    cursor["drained"] += 1
    if cursor["drained"] < CONFIRMATIONS:
        context.update_cursor(json.dumps(cursor))
        return dg.SkipReason("capture exhausted and the chain drained; confirming on the next evaluation")
    done = mark_complete(lake.load_catalog(), source.source_id, source.spans)
    keys, outside = completed_hour_keys(done)
    context.log.info(f"{source.capture}: complete; hours {keys + outside} declared closed")
    outcome = (
        f"its hours {keys[0]} .. {keys[-1]} ({len(keys)}) were declared closed and their seal requested"
        if keys
        else "its hours were declared closed"
    )
    first = HOURLY.get_first_partition_key() or ""
    early = [k for k in outside if k < first]
    if early:
        outcome += (
            f"; {len(early)} hours ({early[0]} .. {early[-1]}) precede the first lake partition ({first}, "
            "assets/partitions.py) and are NOT sealed"
        )
    if len(early) < len(outside):
        outcome += "; hours not over yet are sealed by the late-hours sensor once they are"
    context.update_cursor(json.dumps({**cursor, "done": True, "outcome": outcome}))
    if not keys:
        return dg.SkipReason(f"{source.capture}: complete; {outcome}")
    return [
        dg.RunRequest(
            run_key=f"{source.source_id}-{k}",
            partition_key=k,
            tags={"ticklake/replay": source.source_id, **launched_by("replay-completion")},
        )
        for k in keys
    ]


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(sensors=[replay_completion])

"""Live analytics consumer on the real broker into the local ClickHouse server: feature rows land in
features_live, duplicates (replays, aborted copies) collapse on event_id, malformed
records reach dlq.features with a reason; the service job runs it and its supervisor keeps
exactly one run alive. Also: the Dagster asset graph of the analytics layer (lineage, one
hourly partitions definition, no Dagster pool on any ClickHouse step)."""

from __future__ import annotations

import uuid
import warnings

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from assets import batch_features, charts, clickhouse_loads, lake_hours, spark_features
from assets.partitions import HOURLY
from features.compute import compute_features
from features.inputs import events_from_envelopes
from features.records import encode_row, table_rows
from pipelines.services.clickhouse_live import (
    SERVICE_TAGS,
    clickhouse_live_service,
    clickhouse_live_supervisor,
)
from resources.artifacts import ArtifactStoreResource
from resources.clickhouse import ClickHouseResource
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.spark import SparkResource
from runtime.dlq import parse_dead_letter
from schemas.topics import dlq_topic
from streaming.clickhouse import sql as cs
from streaming.clickhouse.live import ClickHouseLive, live_topics
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from tests.support import processing as ps
from workloads.kafka import connection, produce
from workloads.synthetic import SyntheticMarket

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))


@pytest.fixture
def ch_res(clickhouse_server):
    return ClickHouseResource(dsn=clickhouse_server.dsn)


@pytest.fixture
def db() -> str:
    """A database of the test's own on the shared server."""
    return f"tl_live_{uuid.uuid4().hex[:8]}"


def _feature_rows() -> list[dict]:
    rows, _ = compute_features(events_from_envelopes(SyntheticMarket(seed=5).events(3000, 20_000)))
    return table_rows(rows)


def _live_rows(client, db: str) -> pa.Table:
    return client.query_arrow(f"SELECT event_id FROM {db}.features_live FINAL")


def test_rows_land_once_and_bad_records_go_to_the_dlq(kafka_broker, ch_res, db):
    topic = f"test.clickhouse-live.{uuid.uuid4().hex[:8]}"
    create_topics(
        admin_client(kafka_broker.bootstrap),
        {topic: TopicSpec(2, -1), dlq_topic("features"): TopicSpec(1, -1)},
        replication_factor=1,
    )
    rows = _feature_rows()
    assert len(rows) > 20
    items = [(topic, r["symbol"].encode(), encode_row(r), None) for r in rows]
    items += items[:7]  # replayed / aborted copies
    bad_symbol = dict(rows[0], symbol="btc/usdt")
    items += [
        (topic, b"x", b"{not json", None),
        (topic, b"x", encode_row(bad_symbol), None),
        (topic, b"x", b"[1,2]", None),
    ]
    produce(kafka_broker.bootstrap, items)

    conn = connection(kafka_broker.bootstrap)
    client = ch_res.get_client()
    live = ClickHouseLive(conn, client, [topic], database=db, group_id=f"g-{topic}", session_timeout_ms=2000)
    stats = live.run(idle_exit_s=4.0)
    assert stats.records_in == len(items) and stats.rows == len(rows) + 7
    assert dict(stats.dlq.counts) == {"decode": 2, "mismatch": 1}
    got = _live_rows(client, db)
    assert got.num_rows == len(rows)
    assert sorted(got["event_id"].to_pylist()) == sorted(r["event_id"] for r in rows)
    stored = cs.features_from_ch(
        client.query_arrow(
            f"SELECT {', '.join(cs.FEATURES_CH_SCHEMA.names)} FROM {db}.features_live FINAL ORDER BY event_id"
        )
    )
    first = next(r for r in stored.to_pylist() if r["event_id"] == rows[3]["event_id"])
    assert first["vwap"] == rows[3]["vwap"] and first["mid_px"] == rows[3]["mid_px"]  # floats exact

    dead = [
        parse_dead_letter(m.value())
        for m in ps.read_topics(kafka_broker.bootstrap, [dlq_topic("features")], group=f"r-{topic}")
    ]
    mine = [d for d in dead if d.source.startswith(topic)]
    assert sorted(d.reason.split(":")[0] for d in mine) == ["decode", "decode", "mismatch"]
    assert any("btc/usdt" in d.reason for d in mine)

    # A second consumer group replays the whole topic: still one row per event_id.
    again = ClickHouseLive(conn, client, [topic], database=db, group_id=f"g2-{topic}", session_timeout_ms=2000)
    again.run(idle_exit_s=4.0)
    assert _live_rows(client, db).num_rows == len(rows)


def test_service_job_runs_the_consumer(kafka_broker, ch_res, db):
    topics = live_topics(["okx"], ["perp"])
    create_topics(admin_client(kafka_broker.bootstrap), {t: TopicSpec(1, -1) for t in topics}, replication_factor=1)
    rows = list(_feature_rows())[:5]
    for r in rows:
        r["exchange"], r["market"], r["symbol"] = "okx", "perp", "BTC-USDT-PERP"
    produce(kafka_broker.bootstrap, [(topics[0], b"BTC-USDT-PERP", encode_row(r), None) for r in rows])
    result = clickhouse_live_service.execute_in_process(
        run_config={
            "ops": {
                "run_clickhouse_live": {
                    "config": {
                        "exchanges": ["okx"],
                        "markets": ["perp"],
                        "database": db,
                        "idle_exit_s": 4.0,
                        "ttl_days": 3650,
                        "session_timeout_ms": 2000,
                    }
                }
            }
        },
        resources={"kafka": KafkaResource(bootstrap_servers=kafka_broker.bootstrap), "clickhouse": ch_res},
    )
    assert result.success
    client = ch_res.get_client()
    n = client.query(f"SELECT count() FROM {db}.features_live FINAL WHERE exchange = 'okx'").result_rows[0][0]
    assert n == len({r["event_id"] for r in rows})


def test_supervisor_keeps_one_run():
    with dg.instance_for_test() as instance:
        req = clickhouse_live_supervisor(dg.build_sensor_context(instance=instance))
        assert isinstance(req, dg.RunRequest) and req.tags == SERVICE_TAGS == {"ticklake/service": "clickhouse-live"}
        instance.add_run(
            DagsterRun(
                job_name=clickhouse_live_service.name,
                run_id="d" * 32,
                status=dg.DagsterRunStatus.STARTED,
                tags=SERVICE_TAGS,
            )
        )
        assert isinstance(clickhouse_live_supervisor(dg.build_sensor_context(instance=instance)), dg.SkipReason)


def test_analytics_graph_lineage_partitions_and_pools(tmp_path):
    mods = [batch_features, spark_features, clickhouse_loads, charts]
    resources = {
        "lake": LakeResource(uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/w"),
        "clickhouse": ClickHouseResource(dsn="http://127.0.0.1:8123"),
        "spark": SparkResource(),
        "artifacts": ArtifactStoreResource(root=str(tmp_path / "a")),
    }
    defs = dg.Definitions.merge(lake_hours.defs, *(m.defs for m in mods), dg.Definitions(resources=resources))
    graph = defs.resolve_asset_graph()
    up = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    lake_inputs = {"lake/trades", "lake/book_snapshots", "lake/book_deltas"}
    assert up["lake/features_1s"] == lake_inputs and up["spark/features_1s"] == lake_inputs
    assert up["clickhouse/trades"] == {"lake/trades"}
    assert up["clickhouse/features_1s"] == {"lake/features_1s"}
    assert up["clickhouse/ohlcv"] == {"clickhouse/trades"}
    assert up["lake/bars_1m"] == {"clickhouse/ohlcv", "clickhouse/book_stats_1m"}
    assert up["charts/market_overview"] == {"lake/features_1s"}
    for m in mods:
        for a in m.defs.assets:
            assert a.partitions_def is HOURLY, a.key
    for a in clickhouse_loads.CLICKHOUSE_ASSETS:  # one server serves every step at once: no pool to wait on
        assert a.op.pool is None, a.key
    assert spark_features.features_parity.op.pool is None
    assert clickhouse_live_service.graph.node_defs[0].pool is None

"""Spark features with offline/online parity, on an hour built from the genuine capture.

The capture's processed envelopes go (a) into a tmp lake with the sink's file writer, hour
sealed, and (b) onto the processed topics of a real broker, where the real feature
processor publishes feature.spot.signals.binance and the live ClickHouse consumer stores
what it published in the local ClickHouse server. Then the local batch asset, the Spark asset (local[2],
applyInArrow) and the parity check run through Dagster: identical, exactly — and the
check fails once a single feature value of the Spark output is perturbed.
"""

from __future__ import annotations

import math
import warnings

import dagster as dg
import pyarrow as pa
import pytest

from assets.batch_features import features_1s
from assets.spark_features import (
    CHECK_PARITY,
    features_parity,
    parity_outcome,
    spark_features_1s,
)
from features.spec import FEATURE_SCHEMA, FEATURES_TABLE
from resources.clickhouse import ClickHouseResource
from resources.kafka import KafkaResource
from resources.spark import SparkResource
from runtime.home import resolve_home
from schemas.model import Exchange, Market, event_type_from_pb
from schemas.serde import encode
from schemas.topics import dlq_topic, event_topic, feature_topic
from streaming.clickhouse import sql as cs
from streaming.clickhouse.live import ClickHouseLive
from streaming.kafka.broker import EmbeddedBroker
from streaming.lake import features as fl
from streaming.lake import spark_features as fsp
from streaming.processors.feature_processor import FeatureProcessor
from tests.support import processing as ps
from workloads import binance_hour as a
from workloads.kafka import connection, create_project_topics, produce

pytestmark = [pytest.mark.spark, pytest.mark.broker, pytest.mark.chdb]

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
DB = "tl_parity"
H, H_NEXT = a.CAPTURE_HOUR, a.NEXT_HOUR
FEATURES_TOPIC = feature_topic("spot", "binance")


@pytest.fixture(scope="module")
def spark(spark_resource: SparkResource):
    """The session-wide local[2] session (tests/conftest.py)."""
    return spark_resource


@pytest.fixture(scope="module")
def world(tmp_path_factory, clickhouse_server):
    root = tmp_path_factory.mktemp("parity")
    home = resolve_home(root / "home").ensure()
    envs = a.processed_capture()
    lake = a.write_lake(home, envs, seal=(H, H_NEXT))
    ch = ClickHouseResource(dsn=clickhouse_server.dsn)
    with EmbeddedBroker(log_path=root / "broker.log") as b:
        create_project_topics(b.bootstrap)

        def items():
            for e in envs:
                r = encode(e)
                yield (
                    event_topic("processed", "spot", event_type_from_pb(e.event_type), "binance"),
                    r.key,
                    r.value,
                    r.headers,
                )

        produce(b.bootstrap, (i for i in items() if i[0] in set(ps.processed_feature_topics())))
        conn = connection(b.bootstrap)
        fp = FeatureProcessor(conn, [(Market.SPOT, Exchange.BINANCE)], idle_timeout_ms=1000, checkpoint_interval_s=2.0)
        fp.run(idle_exit_s=3.0)
        late = len(ps.read_topics(b.bootstrap, [dlq_topic("features")]))
        live = ClickHouseLive(conn, ch.get_client(), [FEATURES_TOPIC], database=DB, session_timeout_ms=2000)
        stats = live.run(idle_exit_s=4.0)
        yield {
            "lake": lake,
            "ch": ch,
            "late": late,
            "live": stats,
            "bootstrap": b.bootstrap,
            "kafka": KafkaResource(bootstrap_servers=b.bootstrap),
        }


CHECK_OP = "spark__features_1s_" + CHECK_PARITY


def materialize(world, spark, partition: str, carry_state: bool = True, selection=None) -> dg.ExecuteInProcessResult:
    ops = {CHECK_OP: {"config": {"database": DB}}, "lake__features_1s": {"config": {"carry_state": carry_state}}}
    if selection is None:
        selection = dg.AssetSelection.all() | dg.AssetSelection.checks(features_parity)
        ops["spark__features_1s"] = {"config": {"carry_state": carry_state}}
    return dg.materialize(
        [features_1s, spark_features_1s, features_parity],
        partition_key=partition,
        resources={"lake": world["lake"].lake, "clickhouse": world["ch"], "spark": spark},
        run_config={"ops": ops},
        selection=selection,
        raise_on_error=False,
    )


def parity_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    evals = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_PARITY]
    assert len(evals) == 1
    return evals[0]


def test_streaming_published_every_window_of_the_capture(world):
    assert world["late"] == 0  # nothing late: the processor saw every event
    assert world["live"].rows > 300 and not world["live"].dlq.counts
    client = world["ch"].get_client()
    assert cs.count_hour(client, DB, "features_live", a.utc(H), final=True) > 300


def test_spark_equals_local_batch_equals_published_exactly(world, spark):
    result = materialize(world, spark, H)
    assert result.success
    check = parity_check(result)
    assert check.passed, check.description
    rows = check.metadata["rows"].value
    assert rows["spark"] == rows["local_batch"] == rows["published"] > 300
    table = world["lake"].catalog.load_table(fsp.SPARK_FEATURES_TABLE.identifier)
    files = [
        t.file.file_path
        for t in table.scan(row_filter=fl.ts_range(a.hour_us(H), a.hour_us(H) + 3_600_000_000)).plan_files()
    ]
    assert files and all("spark-features-" in f and f.endswith(".parquet") for f in files)
    import pyarrow.parquet as pq

    ts_type = pq.read_schema(files[0].removeprefix("file://")).field("exchange_ts").type
    assert ts_type == pa.timestamp("us", tz="UTC")  # TIMESTAMP_MICROS, not INT96

    again = materialize(world, spark, H)  # a rerun replaces the hour: same rows, no duplicates
    assert parity_check(again).passed
    assert parity_check(again).metadata["rows"].value == rows


def test_parity_fails_when_one_feature_value_is_perturbed(world, spark):
    # The Spark table's hour is set to the local batch rows with ONE value moved by one ulp
    # (no Spark run needed: the check only reads the three outputs).
    h = a.hour_us(H)
    rows = fl.compute_hour(fl.hour_events(fl.input_tables(world["lake"].catalog), h), h)
    i = next(k for k, v in enumerate(rows["microprice"].to_pylist()) if v is not None and k > 10)
    col = rows["microprice"].to_pylist()
    col[i] = math.nextafter(col[i], math.inf)
    bad = rows.set_column(
        rows.schema.get_field_index("microprice"), FEATURE_SCHEMA.field("microprice"), pa.array(col, pa.float64())
    )
    table = fl.ensure_spec_table(world["lake"].catalog, fsp.SPARK_FEATURES_TABLE)
    fl.write_hour(table, rows, h)
    # The local batch's hour too, so that the test stands on its own (not on the Spark test's run).
    fl.write_hour(fl.ensure_spec_table(world["lake"].catalog, FEATURES_TABLE), rows, h)
    assert parity_outcome(world["lake"].lake, world["ch"], H, DB)[0]  # unperturbed copy: identical
    fl.write_hour(table.refresh(), bad, h)
    ok, details = parity_outcome(world["lake"].lake, world["ch"], H, DB)
    assert not ok
    m = details["mismatches"][0]
    assert m["column"] == "microprice" and m["event_id"] == rows["event_id"][i].as_py()
    # And through Dagster: the local batch and the check run, the Spark output stays perturbed.
    result = materialize(
        world, spark, H, selection=dg.AssetSelection.assets(features_1s) | dg.AssetSelection.checks(features_parity)
    )
    check = parity_check(result)
    assert not check.passed and "microprice" in check.description


def test_next_hour_starts_from_the_state_the_hour_before_closed_with(world, spark):
    # The capture's last second lies in the next hour, which has no snapshot of its own; the
    # processor computed it with the books it had built before midnight. A batch that starts
    # the hour from empty books differs; one that starts from the state carried out of the
    # hour before (or replayed from the lake's snapshots when none was carried) matches.
    h = a.hour_us(H_NEXT)
    catalog = world["lake"].catalog
    client = world["ch"].get_client()
    published = cs.features_from_ch(cs.query_hour(client, DB, cs.CH_FEATURES_LIVE, a.utc(H_NEXT), final=True))
    assert published.num_rows >= 1
    events = fl.hour_events(fl.input_tables(catalog), h)
    cold = fl.compute_hour(events, h)
    ok, details = fl.compare_features({"local_batch": cold, "published": published})
    assert not ok and details["mismatches"][0]["column"] in {"book_seq", "best_bid_px", "mid_px", "microprice"}
    cold_run = materialize(world, spark, H_NEXT, carry_state=False)  # the config switch really switches
    assert not parity_check(cold_run).passed
    # The closing state of hour H, written by H's local batch, is what H_NEXT reads.
    materialize(
        world, spark, H, selection=dg.AssetSelection.assets(features_1s) | dg.AssetSelection.checks(features_parity)
    )
    state_table = fl.ensure_spec_table(catalog, fl.FEATURE_STATE_TABLE)
    carried = fl.read_state(state_table, h)
    assert carried is not None and carried.symbols
    # The fallback (no carried state: a backfill running H_NEXT first) rebuilds the same state.
    assert fl.replayed_state(fl.input_tables(catalog), h).to_state() == carried.to_state()
    assert fl.compare_features(
        {"replayed": fl.compute_hour(events, h, fl.replayed_state(fl.input_tables(catalog), h)), "published": published}
    )[0]
    warm = materialize(world, spark, H_NEXT)
    check = parity_check(warm)
    assert check.passed, check.description
    assert check.metadata["rows"].value["published"] == published.num_rows
    starts = {
        node: warm.asset_materializations_for_node(node)[0].metadata["start_state"].value
        for node in ("lake__features_1s", "spark__features_1s")
    }
    assert starts == {"lake__features_1s": "carried", "spark__features_1s": "carried"}


def test_parity_of_an_empty_hour_passes(world):
    # A sealed hour with nothing in the lake (a replay's margin hour, a quiet venue): no rows
    # in any runtime is agreement, not a failure that would block the hour's whole chain.
    ok, details = parity_outcome(world["lake"].lake, world["ch"], "2024-08-08-03:00", DB)
    assert ok, details
    assert details["input_events"] == 0
    assert details["rows"] == {"spark": 0, "local_batch": 0, "published": 0}

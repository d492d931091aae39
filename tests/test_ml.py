"""ML on the genuine capture hour: dataset (as-of snapshots) -> models in MLflow -> champion.

The capture's processed envelopes are written with the sink's file writer and sealed, the
local batch feature asset computes lake/features_1s, then the ML assets run through
Dagster against a real local MLflow store (SQLite + file artifacts). Checks are shown to
fail when they should: a perturbed dataset value (rebuild checksum), a shifted label
(leakage), a model that loses to the zero-return baseline (never registered).
"""

from __future__ import annotations

import warnings

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from assets import ml as aml
from assets.batch_features import features_1s
from features.spec import FEATURES_TABLE
from ml import dataset as mds
from ml import registry as reg
from ml import train as mtr
from resources.artifacts import ArtifactStoreResource
from resources.mlflow import MlflowResource
from runtime.home import resolve_home
from tests.support.processing import read_topics
from workloads import binance_hour as a
from workloads import kafka as wk

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
DAY = a.CAPTURE_HOUR[:10]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    home = resolve_home(root / "home").ensure()
    lake = a.write_lake(home, a.processed_capture(), seal=(a.CAPTURE_HOUR, a.NEXT_HOUR))
    res = {
        "lake": lake.lake,
        "artifacts": ArtifactStoreResource(root=str(home.artifacts_dir)),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "mlruns").as_uri()
        ),
    }
    r = dg.materialize([features_1s], partition_key=a.CAPTURE_HOUR, resources=res)
    assert r.success
    yield {"res": res, "lake": lake, "root": root}


def run_ml(world, selection, day: str = DAY) -> dg.ExecuteInProcessResult:
    job = dg.define_asset_job("ml_test", selection=selection, partitions_def=aml.DAILY)
    defs = dg.Definitions(
        assets=aml.TRAINING_ASSETS, asset_checks=aml.TRAINING_CHECKS, jobs=[job], resources=world["res"]
    )
    return defs.resolve_job_def("ml_test").execute_in_process(partition_key=day, raise_on_error=False)


def checks(result) -> dict[str, bool]:
    return {f"{e.asset_key.path[-1]}.{e.check_name}": e.passed for e in result.get_asset_check_evaluations()}


def test_labels_are_future_returns_from_rows_at_or_after_t():
    ts = np.array([0, 1, 2, 5], dtype=np.int64) * 1_000_000
    f = pa.table(
        {
            "exchange": ["x"] * 4,
            "market": ["spot"] * 4,
            "symbol": ["A"] * 4,
            "exchange_ts": pa.array(ts).cast(pa.timestamp("us", tz="UTC")),
            "mid_px": [1.0, 2.0, 4.0, 8.0],
        }
    )
    r = mds.future_returns(f, (1, 2), until_us=7_000_000)
    assert r[1].tolist()[:3] == [np.log(2.0), np.log(2.0), np.log(1.0)]  # t=2+1 -> as-of row t=2
    assert r[2][0] == np.log(4.0) and r[2][3] != r[2][3]  # t=5+2 reaches until: NaN


@pytest.mark.dagster
def test_dataset_models_and_champion_through_dagster(world):
    r = run_ml(world, dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks())
    ev = checks(r)
    assert ev["training_dataset.no_label_leakage"] and ev["training_dataset.rebuild_from_snapshots"]
    mat = {
        tuple(m.asset_key.path): m.metadata
        for m in r.get_asset_materialization_events()
        and [e.event_specific_data.materialization for e in r.get_asset_materialization_events()]
    }
    ds_meta = mat[("ml", "training_dataset")]
    assert ds_meta["dagster/row_count"].value > 300
    assert "market.features_1s" in ds_meta["snapshot_ids"].value
    settings = world["res"]["mlflow"].settings()
    client = settings.client()
    for h in mds.HORIZONS_S:
        beats = ev[f"model_{h}s.beats_baseline"]
        meta = mat[("ml", f"model_{h}s")]
        assert beats == (meta["mse_model"].value < meta["mse_baseline"].value)
        run = client.get_run(meta["mlflow_run_id"].value)
        assert any(k.startswith("fold") and k.endswith("_mse_baseline") for k in run.data.metrics)
        assert run.data.tags["snapshot.market.features_1s"]
        champion = reg.load_alias(settings, reg.model_name(h))
        assert (champion is not None) == beats, h  # a losing model never registered
        assert (("ml", f"champion_{h}s") in mat) == beats
    # the 1 s model beats the baseline on the capture (deterministic training)
    assert ev["model_1s.beats_baseline"]
    served = reg.load_alias(settings, reg.model_name(1))
    rows, _ = aml.load_dataset(world["res"]["artifacts"], DAY)
    assert served.booster.model_to_string() and len(mtr.predict(served.booster, rows)) == rows.num_rows


@pytest.mark.dagster
def test_rebuild_check_fails_on_a_perturbed_value_and_leakage_on_a_shifted_label(world):
    store = world["res"]["artifacts"]
    r = run_ml(world, dg.AssetSelection.assets(aml.DATASET_KEY))
    assert r.success
    rows, _man = aml.load_dataset(store, DAY)
    rows_key, _ = aml.dataset_keys(DAY)
    vals = rows["micro_rel"].to_numpy(zero_copy_only=False).copy()
    vals[10] = np.nextafter(vals[10], 1.0)  # one ulp
    store.put_bytes(
        rows_key, mds.to_parquet(rows.set_column(rows.schema.get_field_index("micro_rel"), "micro_rel", pa.array(vals)))
    )
    lake = world["res"]["lake"]
    assert not aml.rebuild_result(lake, store, DAY).passed  # what the check runs
    assert aml.leakage_result(lake, store, DAY).passed

    lab = rows["label_10s"].to_numpy(zero_copy_only=False)
    shifted = np.concatenate((lab[1:], [np.nan]))  # each row gets its successor's label
    store.put_bytes(
        rows_key,
        mds.to_parquet(rows.set_column(rows.schema.get_field_index("label_10s"), "label_10s", pa.array(shifted))),
    )
    leak = aml.leakage_result(lake, store, DAY)
    assert not leak.passed and leak.metadata["violations"].value[0]["horizon_s"] == 10


@pytest.mark.dagster
def test_baseline_check_blocks_a_model_without_signal(world):
    ftable = world["lake"].catalog.load_table(FEATURES_TABLE.identifier)
    rows, _ = mds.build_dataset(
        ftable, DAY, aml.day_start_us(DAY), mds.current_snapshots({FEATURES_TABLE.identifier: ftable})
    )
    rng = np.random.default_rng(0)
    noisy = rows.set_column(
        rows.schema.get_field_index("label_1s"), "label_1s", pa.array(rng.normal(0, 1e-4, rows.num_rows))
    )  # labels without signal
    res = mtr.train_horizon(noisy, 1)
    assert len(res.folds) == mtr.DEFAULT_FOLDS and not res.beats_baseline


@pytest.mark.dagster
def test_a_day_too_small_to_validate_trains_nothing_and_the_run_succeeds(world):
    """The capture's next day has (almost) no feature rows: its dataset is built and checked,
    but no model is trained, logged or registered, and nothing fails (what the automation
    does for the tiny days of a replay)."""
    day = a.NEXT_HOUR[:10]
    assert day != DAY
    r = run_ml(world, dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks(), day)
    assert r.success
    built = {tuple(e.asset_key.path) for e in r.get_asset_materialization_events()}
    assert built == {("ml", "training_dataset")}
    ev = checks(r)
    assert ev == {"training_dataset.no_label_leakage": True, "training_dataset.rebuild_from_snapshots": True}
    for h in mds.HORIZONS_S:
        assert aml.day_run(world["res"]["mlflow"], day, h) is None


# -- online inference ------------------------------------------------------------------------


def _feature_items(topic: str, rows: list[dict]) -> list[tuple]:
    from features.records import CONTENT_TYPE, encode_row

    return [
        (
            topic,
            r["symbol"].encode(),
            encode_row(r),
            [("content-type", CONTENT_TYPE.encode())],
            r["exchange_ts"] // 1000,
        )
        for r in rows
    ]


def _predictions(bootstrap: str, group: str) -> list[dict]:
    from ml.predictions import decode_prediction
    from schemas.topics import prediction_topic

    return [
        decode_prediction(m.value())
        for m in read_topics(bootstrap, [prediction_topic("spot", "mid_ret_1s")], group=group)
    ]


def test_inference_service_scores_every_row_exactly_once_and_follows_the_alias(world, kafka_broker, tmp_path):
    import uuid

    from features.records import table_rows
    from ml.predictions import prediction_event_id, score_features
    from runtime.dlq import parse_dead_letter
    from schemas.topics import DlqStage, dlq_topic
    from streaming.kafka.topic_admin import admin_client, create_topics
    from streaming.kafka.topic_config import TopicSpec
    from streaming.lake import features as fl
    from streaming.processors.inference import InferenceLoop, InferenceService

    settings = reg.MlflowSettings(f"sqlite:///{tmp_path / 'mlflow.db'}", None, (tmp_path / "mlruns").as_uri())
    ftable = world["lake"].catalog.load_table(FEATURES_TABLE.identifier)
    rows, _man = mds.build_dataset(
        ftable, DAY, aml.day_start_us(DAY), mds.current_snapshots({FEATURES_TABLE.identifier: ftable})
    )
    res = mtr.train_horizon(rows, 1)
    run = reg.log_training(
        settings,
        horizon_s=1,
        booster=res.booster,
        params={},
        metrics=res.metrics(),
        fold_metrics=[],
        tags={"dataset_day": DAY},
    )
    assert reg.register(settings, "mid_ret_1s", run.run_id) == "1"

    feats = fl.read_hour_rows(ftable, a.hour_us(a.CAPTURE_HOUR))
    wire = table_rows(feats)
    topic = f"test-ml-features-{uuid.uuid4().hex[:8]}"
    b = kafka_broker.bootstrap
    create_topics(admin_client(b), {topic: TopicSpec(2, -1)}, replication_factor=1)
    bad_spec = dict(wire[0], spec_version=1)
    from features.records import encode_row

    items = _feature_items(topic, wire[:200]) + [
        (topic, b"BTC-USDT", b"{not json", None),
        (topic, b"BTC-USDT", encode_row(bad_spec), None),
    ]
    wk.produce(b, items)
    conn = wk.connection(b)

    def service():
        return InferenceService(
            [InferenceLoop(conn, settings, "mid_ret_1s", [], input_topics=[topic], reload_interval_s=0.5)]
        )

    service().run(idle_exit_s=4.0)
    got = _predictions(b, "t-ml-1")
    assert len(got) == 200 and {p["model_version"] for p in got} == {"1"}
    offline = score_features(feats.slice(0, 200), "mid_ret_1s", "1", 1, reg.load_alias(settings, "mid_ret_1s").booster)
    want = dict(zip(offline["feature_event_id"].to_pylist(), offline["prediction"].to_pylist()))
    assert {p["feature_event_id"]: p["prediction"] for p in got} == want  # same bits as offline
    assert all(p["event_id"] == prediction_event_id(p["feature_event_id"], "mid_ret_1s", "1") for p in got)
    ts = [p["exchange_ts"] for p in got]
    assert ts == sorted(ts)  # one symbol: in order
    dead = [parse_dead_letter(m.value()).reason for m in read_topics(b, [dlq_topic(DlqStage.INFERENCE)], "t-ml-d")]
    # (the DLQ has several partitions: no order between the two)
    assert sorted(r.split(":")[0] for r in dead) == ["decode", "mismatch"], dead

    # the alias moves: the restarted service resumes after its committed offsets (nothing
    # scored twice) and scores the new rows with the new version
    assert reg.register(settings, "mid_ret_1s", run.run_id) == "2"
    wk.produce(b, _feature_items(topic, wire[200:210]))
    service().run(idle_exit_s=4.0)
    got = _predictions(b, "t-ml-2")
    assert len(got) == 210 and len({p["event_id"] for p in got}) == 210
    assert [p["model_version"] for p in got[200:]] == ["2"] * 10

    # predictions land in the lake hour, and the parity check compares them with the same
    # versions scored offline on lake/features_1s: equal; one ulp off fails
    from ml.predictions import PREDICTIONS_TABLE
    from resources.kafka import KafkaResource

    mlres = MlflowResource(tracking_uri=settings.tracking_uri, artifact_location=settings.artifact_location)
    r = dg.materialize(
        [aml.lake_predictions, aml.predictions_parity],
        partition_key=a.CAPTURE_HOUR,
        resources={"lake": world["res"]["lake"], "kafka": KafkaResource(bootstrap_servers=b), "mlflow": mlres},
        run_config={"ops": {"lake__predictions": {"config": {"require_complete": False}}}},
    )
    assert r.success
    (ev,) = r.get_asset_check_evaluations()
    assert ev.passed, ev.metadata
    assert ev.metadata["predictions"].value == 210
    ptable = world["lake"].catalog.load_table(PREDICTIONS_TABLE.identifier)
    h = a.hour_us(a.CAPTURE_HOUR)
    rows_p = fl.read_range(ptable, h, h + 3_600_000_000)
    vals = rows_p["prediction"].to_numpy().copy()
    vals[5] = np.nextafter(vals[5], 1.0)
    fl.write_hour(
        ptable, rows_p.set_column(rows_p.schema.get_field_index("prediction"), "prediction", pa.array(vals)), h
    )
    bad = aml.parity_result(world["res"]["lake"], mlres, a.CAPTURE_HOUR)
    assert not bad.passed and bad.metadata["details"].value["mismatches"][0]["model"] == "mid_ret_1s"


def test_a_group_past_the_last_record_of_a_transactional_topic_has_consumed_it(kafka_broker):
    """lake/predictions waits for the inference group to have consumed the feature topics; they
    are written in transactions, so the group's committed offset (last record + 1) stays below
    the end offset (the commit marker occupies one): asked of the records, it has consumed."""
    import uuid

    from confluent_kafka import Consumer, Producer, TopicPartition

    from runtime import kafka_config as kc
    from streaming.kafka.topic_admin import admin_client, create_topics
    from streaming.kafka.topic_config import TopicSpec
    from streaming.lake.predictions import topics_consumed

    b = kafka_broker.bootstrap
    topic, group = f"test-ml-txn-{uuid.uuid4().hex[:8]}", f"test-ml-group-{uuid.uuid4().hex[:8]}"
    create_topics(admin_client(b), {topic: TopicSpec(1, -1)}, replication_factor=1)
    conn = wk.connection(b)
    p = Producer(kc.transactional_producer_config(conn, f"t-{topic}"))
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, value=b"%d" % i)
    p.commit_transaction(30)
    assert not topics_consumed(conn, group, [topic])  # nothing committed: 3 records pending

    def commit(offset: int) -> None:
        c = Consumer(kc.consumer_config(conn, group))
        c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        c.close()

    commit(2)
    assert not topics_consumed(conn, group, [topic])  # the last record is still ahead
    commit(3)  # past the last record, before the commit marker
    assert topics_consumed(conn, group, [topic])


def test_inference_job_waits_for_a_champion_without_consuming(kafka_broker, ticklake_home, tmp_path):
    """The Dagster service job as the supervisor launches it (resources, topics, service_run):
    with no registered model it consumes nothing and stops cleanly when asked to."""
    from pipelines.services.inference import inference_service
    from resources.kafka import KafkaResource
    from schemas.topics import DlqStage, dlq_topic, feature_topic, prediction_topic
    from streaming.kafka.io import committed_offsets, partitions_for, plain_consumer
    from streaming.processors.inference import inference_group

    b = kafka_broker.bootstrap
    wk.create_project_topics(b)
    res = {
        "kafka": KafkaResource(bootstrap_servers=b),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    }
    r = inference_service.execute_in_process(
        run_config={
            "ops": {
                "run_inference": {"config": {"models": ["mid_ret_10s"], "pairs": ["spot:binance"], "idle_exit_s": 2.0}}
            }
        },
        resources=res,
    )
    assert r.success
    c = plain_consumer(wk.connection(b), inference_group("mid_ret_10s"))
    try:
        assert partitions_for(c, [prediction_topic("spot", "mid_ret_10s"), dlq_topic(DlqStage.INFERENCE)])
        assert set(committed_offsets(c, partitions_for(c, [feature_topic("spot", "binance")])).values()) == {None}
    finally:
        c.close()


@pytest.mark.dagster
def test_promotion_moves_the_alias_only_to_a_shadow_that_is_at_least_as_good(world, tmp_path):
    from ml.predictions import PREDICTIONS_TABLE, score_features
    from pipelines.ml_promotion import promote_model
    from streaming.lake import features as fl

    settings = reg.MlflowSettings(f"sqlite:///{tmp_path / 'mlflow.db'}", None, (tmp_path / "mlruns").as_uri())
    ftable = world["lake"].catalog.load_table(FEATURES_TABLE.identifier)
    rows, _ = mds.build_dataset(
        ftable, DAY, aml.day_start_us(DAY), mds.current_snapshots({FEATURES_TABLE.identifier: ftable})
    )
    good = mtr.train_horizon(rows, 1).booster
    rng = np.random.default_rng(1)
    noise = mtr.train_horizon(
        rows.set_column(
            rows.schema.get_field_index("label_1s"), "label_1s", pa.array(rng.normal(0, 1e-3, rows.num_rows))
        ),
        1,
    ).booster
    versions = {}
    for name, booster in (("good", good), ("noise", noise)):
        run = reg.log_training(
            settings, horizon_s=1, booster=booster, params={}, metrics={}, fold_metrics=[], tags={"candidate": name}
        )
        versions[name] = reg.register(settings, "mid_ret_1s", run.run_id, alias=None)
    client = settings.client()
    h = a.hour_us(a.CAPTURE_HOUR)
    feats = fl.read_hour_rows(ftable, h)
    ptable = fl.ensure_spec_table(world["lake"].catalog, PREDICTIONS_TABLE)
    fl.write_hour(
        ptable,
        pa.concat_tables(
            [score_features(feats, "mid_ret_1s", versions[n], 1, b) for n, b in (("good", good), ("noise", noise))]
        ),
        h,
    )
    mlres = MlflowResource(tracking_uri=settings.tracking_uri, artifact_location=settings.artifact_location)

    def promote():
        return promote_model.execute_in_process(
            run_config={"ops": {"promote_shadow": {"config": {"hours": [a.CAPTURE_HOUR], "min_rows": 100}}}},
            resources={"lake": world["res"]["lake"], "mlflow": mlres},
            raise_on_error=False,
        )

    client.set_registered_model_alias("mid_ret_1s", "champion", versions["good"])
    client.set_registered_model_alias("mid_ret_1s", "shadow", versions["noise"])
    assert not promote().success  # worse shadow: refused
    assert reg.alias_version(client, "mid_ret_1s")[0] == versions["good"]
    client.set_registered_model_alias("mid_ret_1s", "champion", versions["noise"])
    client.set_registered_model_alias("mid_ret_1s", "shadow", versions["good"])
    r = promote()
    assert r.success and r.output_for_node("promote_shadow")["rows"] > 300
    assert reg.alias_version(client, "mid_ret_1s")[0] == versions["good"]  # alias moved
    assert "promotion_check" in client.get_model_version("mid_ret_1s", versions["good"]).tags


@pytest.mark.dagster
def test_a_replay_received_at_wall_clock_time_trains_the_captures_day(tmp_path):
    """Issue 14 item 6: on `ticklake up --replay` the collector receives the capture from the
    venue emulator at wall-clock time. Binance's spot REST depth snapshot carries no time, so it
    was stamped with that receive time ("now"), landed in another lake hour than its deltas, and
    the capture hour's features had no book: no mid, no label, every model skipped. Stamped with
    the stream's time, the replayed day trains like the captured one."""
    envs = a.replayed_capture()
    lo, hi = a.hour_us(a.CAPTURE_HOUR), a.hour_us(a.NEXT_HOUR) + 3_600_000_000
    snaps = [e.exchange_ts for e in envs if e.HasField("book_snapshot")]
    assert snaps and all(lo <= t < hi for t in snaps), snaps
    home = resolve_home(tmp_path / "home").ensure()
    lake = a.write_lake(home, envs, seal=(a.CAPTURE_HOUR, a.NEXT_HOUR))
    res = {
        "lake": lake.lake,
        "artifacts": ArtifactStoreResource(root=str(home.artifacts_dir)),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "mlruns").as_uri()
        ),
    }
    assert dg.materialize([features_1s], partition_key=a.CAPTURE_HOUR, resources=res).success
    r = run_ml({"res": res}, dg.AssetSelection.assets(aml.DATASET_KEY, aml.model_key(1)))
    assert r.success
    rows, _ = aml.load_dataset(res["artifacts"], DAY)
    assert rows.num_rows > 300 and not np.isnan(rows["label_1s"].to_numpy(zero_copy_only=False)).all()
    trained = {tuple(e.asset_key.path) for e in r.get_asset_materialization_events()}
    assert ("ml", "model_1s") in trained, "the replayed day's 1 s model was skipped as too small"

"""ML layer throughput, each figure beside a baseline measured in the same run.

  * dataset build rows/s (read features_1s as of a snapshot, labels, model inputs)
    beside a bare pyarrow read of the same hour's Parquet files;
  * online scoring rows/s of the inference loop's own batch path (decode the feature
    records, model inputs, LightGBM, encode the predictions; no broker) beside the feature
    processor's in-memory event rate (features.compute over the capture's events);
  * through the embedded broker: the inference service's rows/s over a backlog of feature
    records (transactional consume -> score -> produce -> commit) beside the feature
    processor's own events/s over the capture's processed records, both as run_loop of
    bench_processing measures them; and latency p50/p99 from a feature record produced (at a
    fixed rate, wall clock at send) to its prediction record received by a read_committed
    consumer (wall clock at arrival), so the commit interval is part of it;
  * training seconds per horizon for the day (walk-forward: folds + final fit) beside one
    plain LightGBM fit on the same rows.

Input: the genuine Binance capture hour written to a tmp lake, its features computed by the
batch runtime, tiled over `--copies` synthetic symbol names (same values, distinct ids) so
the rates are measured on tens of thousands of rows.

    python bench/bench_ml.py [--copies 100] [--rounds 3] [--rate 1000 --duration 5]
    python bench/bench_ml.py --smoke      # seconds: the CI smoke run (tiny sizes, no timing asserted)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.bench_processing import PAIR, run_loop
from bench.figures import emit
from features.compute import compute_features
from features.records import CONTENT_TYPE, encode_row, table_rows
from features.spec import FEATURES_TABLE, feature_event_id
from ml import dataset as mds
from ml import train as mtr
from ml.inputs import input_matrix
from ml.predictions import decode_prediction
from ml.registry import MlflowSettings, ServedModel
from runtime import kafka_config as kc
from runtime.home import resolve_home
from runtime.kafka_config import connection_from_env
from schemas.serde import encode
from schemas.topics import prediction_topic
from streaming.kafka.broker import EmbeddedBroker
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from streaming.lake import features as fl
from streaming.processors.feature_processor import FeatureProcessor
from streaming.processors.inference import InferenceLoop
from workloads import binance_hour as bh
from workloads.kafka import create_project_topics, processed_topic, produce

MODEL = "mid_ret_1s"


class _Msg:
    """The four accessors the loop's batch path reads from a Kafka message."""

    __slots__ = ("_o", "_v")

    def __init__(self, value: bytes, offset: int):
        self._v, self._o = value, offset

    def value(self) -> bytes:
        return self._v

    def topic(self) -> str:
        return "feature.spot.signals.binance"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o


def best(fn, rounds: int) -> float:
    out = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def tiled(rows: pa.Table, copies: int, prefix: str = "B") -> pa.Table:
    parts = []
    for i in range(copies):
        sym = f"{prefix}{i:03d}-USDT"
        ts = pc.cast(rows["exchange_ts"], pa.int64()).to_pylist()
        ids = [
            feature_event_id(x, m, sym, t)
            for x, m, t in zip(rows["exchange"].to_pylist(), rows["market"].to_pylist(), ts)
        ]
        t = rows.set_column(rows.schema.get_field_index("symbol"), "symbol", pa.array([sym] * rows.num_rows))
        parts.append(t.set_column(t.schema.get_field_index("event_id"), "event_id", pa.array(ids)))
    return pa.concat_tables(parts).combine_chunks()


def serving_loop(bootstrap: str, booster, group: str, topic: str) -> InferenceLoop:
    """An inference loop serving `booster` as version 1 of MODEL without a registry (the
    registry poll is pushed past the run: what is measured is scoring, not MLflow)."""
    loop = InferenceLoop(
        connection_from_env(bootstrap_servers=bootstrap),
        MlflowSettings("sqlite:///:memory:"),
        MODEL,
        [],
        input_topics=[topic],
        batch_max_ms=200,  # the inference service's default (InferenceSettings.batch_max_ms)
    )
    loop.group_id = loop.transactional_id = group
    loop.served = ServedModel(MODEL, "1", "bench", booster)
    loop._next_check = float("inf")
    return loop


def feature_items(topic: str, rows: pa.Table) -> list[tuple]:
    return [
        (
            topic,
            r["symbol"].encode(),
            encode_row(r),
            [("content-type", CONTENT_TYPE.encode())],
            r["exchange_ts"] // 1000,
        )
        for r in table_rows(rows)
    ]


def latency_run(bootstrap: str, booster, rows: pa.Table, rate: int, duration: float) -> dict[str, float]:
    """Feature records produced at `rate`/s for `duration` s while the service scores them:
    wall clock from each record's send to its prediction's arrival (read_committed)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = "bench.ml.latency"
    create_topics(admin_client(bootstrap), {topic: TopicSpec(3, 3_600_000)}, 1)
    items = feature_items(topic, rows)[: max(1, int(rate * duration))]
    conn = connection_from_env(bootstrap_servers=bootstrap)
    out_topic = prediction_topic("spot", MODEL)
    loop = serving_loop(bootstrap, booster, "bench-ml-latency", topic)
    loop.start()  # creates the prediction topic
    c = Consumer(kc.consumer_config(conn, "bench-ml-latency-reader", read_committed=True, fetch_wait_max_ms=5))
    meta = c.list_topics(out_topic, timeout=10).topics[out_topic]
    tps = [TopicPartition(out_topic, p) for p in meta.partitions]
    c.assign([TopicPartition(out_topic, p, c.get_watermark_offsets(tp, timeout=10)[1]) for p, tp in enumerate(tps)])
    sent: dict[str, float] = {}
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            loop.run_once()

    def send() -> None:
        p = Producer(kc.producer_config(conn, linger_ms=0))
        t0 = time.monotonic()
        for i, (t, key, value, headers, ts) in enumerate(items):
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent[table_ids[i]] = time.monotonic()
            p.produce(t, value=value, key=key, headers=headers, timestamp=ts)
            p.poll(0)
        p.flush(30)

    table_ids = rows["event_id"].to_pylist()
    server = threading.Thread(target=serve, daemon=True)
    sender = threading.Thread(target=send, daemon=True)
    server.start()
    sender.start()
    lat: list[float] = []
    deadline = time.monotonic() + duration + 30
    while len(lat) < len(items) and time.monotonic() < deadline:
        for m in c.consume(num_messages=500, timeout=0.2):
            if m.error() is None:
                now = time.monotonic()
                fid = decode_prediction(m.value())["feature_event_id"]
                if fid in sent:
                    lat.append(now - sent[fid])
    stop.set()
    server.join(30)
    sender.join(30)
    c.close()
    loop.close()
    return {
        "p50": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p99": float(np.percentile(lat, 99)) if lat else float("nan"),
        "sent": len(items),
        "received": len(lat),
    }


def bench_broker(envs, rows: pa.Table, lat_rows: pa.Table, booster, rate: int, duration: float) -> dict[str, float]:
    """Feature processor events/s and inference rows/s through one embedded broker, then latency."""
    with EmbeddedBroker() as b:
        create_project_topics(b.bootstrap, partitions=3)
        records = [encode(e) for e in envs]
        produce(b.bootstrap, ((processed_topic(e), r.key, r.value, r.headers) for e, r in zip(envs, records)))
        conn = connection_from_env(bootstrap_servers=b.bootstrap)
        fp, fp_n = run_loop(
            FeatureProcessor(conn, PAIR, idle_timeout_ms=1000, checkpoint_interval_s=10, upstream_group=None)
        )
        backlog = "bench.ml.features"
        create_topics(admin_client(b.bootstrap), {backlog: TopicSpec(3, 3_600_000)}, 1)
        produce(b.bootstrap, feature_items(backlog, rows))
        inf, inf_n = run_loop(serving_loop(b.bootstrap, booster, "bench-ml-backlog", backlog))
        lat = latency_run(b.bootstrap, booster, lat_rows, rate, duration)
    return {"features": fp, "features_n": fp_n, "inference": inf, "inference_n": inf_n, **lat}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000, help="feature records/s of the latency run")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of the latency run")
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the CI smoke run (plumbing, no timing)")
    a = ap.parse_args()
    copies, rounds = (5, 1) if a.quick else (1, 1) if a.smoke else (a.copies, a.rounds)
    rate, duration = (200, 1.0) if a.smoke else (a.rate, a.duration)
    root = Path(tempfile.mkdtemp(prefix="bench-ml-"))
    home = resolve_home(root / "home").ensure()
    envs = bh.processed_capture()
    lake = bh.write_lake(home, envs, seal=(bh.CAPTURE_HOUR,))
    h = bh.hour_us(bh.CAPTURE_HOUR)
    events = fl.hour_events(fl.input_tables(lake.catalog), h)
    hour_rows = fl.compute_hour(events, h)
    rows = tiled(hour_rows, copies)
    ftable = fl.write_hour(fl.ensure_spec_table(lake.catalog, FEATURES_TABLE), rows, h)
    sid = ftable.current_snapshot().snapshot_id
    day = bh.CAPTURE_HOUR[:10]
    start = h - h % mds.DAY_US
    print(f"{rows.num_rows} feature rows ({copies} x {hour_rows.num_rows}), {events.num_rows} capture events")

    # dataset build vs bare pyarrow read of the same files
    paths = [t.file.file_path.removeprefix("file://") for t in ftable.scan(snapshot_id=sid).plan_files()]
    bare = best(lambda: pa.concat_tables([pq.read_table(p) for p in paths]), rounds)
    build = best(lambda: mds.build_dataset(ftable, day, start, {FEATURES_TABLE.identifier: sid}), rounds)
    print(f"dataset build {rows.num_rows / build:,.0f} rows/s; bare pyarrow read {rows.num_rows / bare:,.0f} rows/s")
    emit(
        "ml_dataset_build_rows_per_s",
        rows.num_rows / build,
        "rows/s",
        "bare pyarrow read of the hour",
        rows.num_rows / bare,
    )

    # online scoring path vs the feature processor's in-memory rate
    ds, _ = mds.build_dataset(ftable, day, start, {FEATURES_TABLE.identifier: sid})
    res = mtr.train_horizon(ds, 1)
    loop = InferenceLoop(
        connection_from_env(bootstrap_servers="127.0.0.1:1"),
        MlflowSettings("sqlite:///:memory:"),
        "mid_ret_1s",
        [],
        input_topics=["unused"],
    )
    loop.served = ServedModel("mid_ret_1s", "1", "bench", res.booster)
    msgs = [_Msg(encode_row(r), i) for i, r in enumerate(table_rows(rows))]
    score = best(lambda: loop.process_batch(msgs), rounds)
    feat = best(lambda: compute_features(events), rounds)
    print(
        f"inference batch path {len(msgs) / score:,.0f} rows/s; feature processor (in memory) "
        f"{events.num_rows / feat:,.0f} events/s"
    )
    emit(
        "ml_inference_rows_per_s",
        len(msgs) / score,
        "rows/s",
        "feature processor in memory (events/s)",
        events.num_rows / feat,
        note="no broker; latency not measured",
    )

    # training per horizon vs one plain fit
    for hz in mds.HORIZONS_S:
        y = ds[mds.label_column(hz)].to_numpy(zero_copy_only=False)
        keep = ~np.isnan(y)
        x, yk = input_matrix(ds.filter(pa.array(keep))), y[keep]
        fit = best(
            lambda x=x, yk=yk: lgb.train(
                mtr.PARAMS, lgb.Dataset(x, yk, params={"verbose": -1}), num_boost_round=mtr.NUM_ROUNDS
            ),
            rounds,
        )
        wf = best(lambda hz=hz: mtr.train_horizon(ds, hz), rounds)
        n = int(keep.sum())
        print(
            f"training {hz}s: walk-forward {wf:.2f} s for {n} rows ({n / 86_400:.3f} symbol-days of 1 s rows); "
            f"one fit {fit:.2f} s"
        )
        emit(
            f"ml_train_{hz}s_seconds",
            wf,
            "s",
            "one LightGBM fit on the same rows",
            fit,
            note=f"{n} labelled rows = {n / 86_400:.3f} symbol-days",
        )

    # through the broker: feature processor vs inference service, and feature -> prediction latency
    # the latency run's own rows (distinct ids), enough for rate x duration records
    lat_rows = tiled(hour_rows, -(-int(rate * duration) // max(1, hour_rows.num_rows)), prefix="L")
    lat = br = bench_broker(envs, rows, lat_rows, res.booster, rate, duration)
    print(
        f"through the broker: inference {br['inference']:,.0f} rows/s ({br['inference_n']} rows); feature "
        f"processor {br['features']:,.0f} events/s ({br['features_n']} events)"
    )
    print(
        f"feature record -> prediction record at {rate}/s for {duration:.0f} s: p50 {lat['p50'] * 1000:.0f} ms, "
        f"p99 {lat['p99'] * 1000:.0f} ms ({lat['received']}/{lat['sent']} received)"
    )
    emit(
        "ml_inference_broker_rows_per_s",
        br["inference"],
        "rows/s",
        "feature processor through the broker (events/s)",
        br["features"],
    )
    emit("ml_feature_to_prediction_p50_ms", lat["p50"] * 1000, "ms", note=f"{rate}/s for {duration:.0f} s")
    emit("ml_feature_to_prediction_p99_ms", lat["p99"] * 1000, "ms", note=f"{rate}/s for {duration:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

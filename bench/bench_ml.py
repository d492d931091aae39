"""ML layer throughput, each figure beside a baseline measured in the same run.

  * dataset build rows/s (read features_1s as of a snapshot, labels, model inputs)
    beside a bare pyarrow read of the same hour's Parquet files;
  * online scoring rows/s of the inference loop's own batch path (decode the feature
    records, model inputs, LightGBM, encode the predictions; no broker) beside the feature
    processor's in-memory event rate (features.compute over the capture's events);
  * training seconds per horizon for the day (walk-forward: folds + final fit) beside one
    plain LightGBM fit on the same rows.

Input: the genuine Binance capture hour written to a tmp lake, its features computed by the
batch runtime, tiled over `--copies` synthetic symbol names (same values, distinct ids) so
the rates are measured on tens of thousands of rows. Broker latency (feature row ->
prediction record p50/p99) is not measured here.

    python bench/bench_ml.py [--copies 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.figures import emit
from features.compute import compute_features
from features.records import encode_row, table_rows
from features.spec import FEATURES_TABLE, feature_event_id
from ml import dataset as mds
from ml import train as mtr
from ml.inputs import input_matrix
from ml.registry import MlflowSettings, ServedModel
from resources.home import resolve_home
from runtime.kafka_config import connection_from_env
from streaming.lake import features as fl
from streaming.processors.inference import InferenceLoop
from workloads import binance_hour as bh


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


def tiled(rows: pa.Table, copies: int) -> pa.Table:
    parts = []
    for i in range(copies):
        sym = f"B{i:03d}-USDT"
        ts = pc.cast(rows["exchange_ts"], pa.int64()).to_pylist()
        ids = [
            feature_event_id(x, m, sym, t)
            for x, m, t in zip(rows["exchange"].to_pylist(), rows["market"].to_pylist(), ts)
        ]
        t = rows.set_column(rows.schema.get_field_index("symbol"), "symbol", pa.array([sym] * rows.num_rows))
        parts.append(t.set_column(t.schema.get_field_index("event_id"), "event_id", pa.array(ids)))
    return pa.concat_tables(parts).combine_chunks()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke runs)")
    a = ap.parse_args()
    copies, rounds = (5, 1) if a.quick else (a.copies, a.rounds)
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
        print(f"training {hz}s: walk-forward {wf:.2f} s for {int(keep.sum())} rows; one fit {fit:.2f} s")
        emit(f"ml_train_{hz}s_seconds", wf, "s", "one LightGBM fit on the same rows", fit)
    return 0


if __name__ == "__main__":
    sys.exit(main())

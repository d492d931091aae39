"""Analytics layer throughput, each figure beside a baseline measured in the same run.

1. ClickHouse hour load (streaming/clickhouse/sql.replace_hour: lake Arrow rows -> column
   mapping -> delete the hour -> insert_arrow) in rows/s against the local ClickHouse server
   (streaming/clickhouse/server.py, over HTTP as every client reaches it), beside a plain
   `insert_arrow` of the same Arrow table into an identical empty table through the same
   server (the floor of any load path). Also the cost of the server itself: that plain
   `insert_arrow` over HTTP beside the same insert into an in-process chdb engine, and the
   ClickHouse 1 s / 1 min OHLCV aggregation of the hour.
2. Feature recompute of one lake hour in input events/s: the spec in-process (local batch)
   beside Spark local[2] (plan files -> mapInArrow -> applyInArrow -> Parquet -> add_files),
   after one warm-up run so the JVM and Python workers are up.
3. Chart render time per symbol-hour (PNG + SVG + preview) for the captured hour.

Data: trades of the genuine Binance capture hour, tiled with fresh event_ids to --rows;
a synthetic three-instrument market (workloads/synthetic.py) of --events events spread
over one hour for the feature recompute.

    python bench/bench_analytics.py [--rows 500000] [--events 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import clickhouse_connect
import pyarrow as pa
import pyarrow.compute as pc

from assets.chart_render import render
from resources.clickhouse import get_client
from resources.spark import SparkResource
from runtime.home import resolve_home
from schemas.arrow_convert import envelopes_to_table
from schemas.model import event_type_from_pb
from schemas.tables import TABLES
from streaming.clickhouse import sql as cs
from streaming.clickhouse.server import LocalClickHouse
from streaming.lake import features as fl
from streaming.lake import spark_features as fsp
from streaming.lake.seal import read_hour
from streaming.lake.writer import LakeFileWriter, commit_files
from workloads import binance_hour as a
from workloads.synthetic import SyntheticMarket


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def tiled_trades(trades: pa.Table, rows: int) -> pa.Table:
    """The capture hour's trades repeated to `rows` rows, each copy with its own event_ids."""
    parts, k = [], 0
    while sum(p.num_rows for p in parts) < rows:
        ids = pc.binary_join_element_wise(trades["event_id"].cast(pa.string()), pa.scalar(f"-{k}"), "")
        parts.append(trades.set_column(0, "event_id", ids))
        k += 1
    return pa.concat_tables(parts).slice(0, rows)


def bench_clickhouse(root: Path, trades: pa.Table, rounds: int) -> None:
    with LocalClickHouse(root / "ch", state_file=root / "ch.json", log_path=root / "ch.log") as server:
        _bench_clickhouse(get_client(server.dsn), root, trades, rounds)


def _bench_clickhouse(client, root: Path, trades: pa.Table, rounds: int) -> None:
    cs.ensure_tables(client, "bench")
    client.command(f"CREATE TABLE IF NOT EXISTS bench.raw_trades AS bench.{cs.CH_TRADES.name}")
    hour = a.utc(a.CAPTURE_HOUR)
    ch_rows = cs.to_ch_rows(cs.CH_TRADES, trades)

    def ours():
        cs.replace_hour(client, "bench", cs.CH_TRADES, hour, cs.to_ch_rows(cs.CH_TRADES, trades))

    def baseline():
        client.command("TRUNCATE TABLE bench.raw_trades")
        client.insert_arrow("bench.raw_trades", ch_rows)

    in_process = clickhouse_connect.get_client(dsn=f"chdb://{root}/inproc")  # its own engine and path
    cs.ensure_tables(in_process, "bench", tables=[cs.CH_TRADES])

    def engine_floor():
        in_process.command(f"TRUNCATE TABLE bench.{cs.CH_TRADES.name}")
        in_process.insert_arrow(f"bench.{cs.CH_TRADES.name}", ch_rows)

    d_ours, d_base, d_floor = best(ours, rounds), best(baseline, rounds), best(engine_floor, rounds)
    in_process.close()
    assert cs.count_hour(client, "bench", cs.CH_TRADES.name, hour) == trades.num_rows
    d_agg = best(
        lambda: (cs.aggregate_ohlcv(client, "bench", hour, 1), cs.aggregate_ohlcv(client, "bench", hour, 60)), rounds
    )
    n = trades.num_rows
    print(
        f"{'ClickHouse hour load (trades)':<44}{n / d_ours:>14,.0f} rows/s   "
        f"insert_arrow baseline {n / d_base:>12,.0f} rows/s   ours/baseline {d_base / d_ours:5.2f}"
    )
    print(
        f"{'  insert_arrow via the local server (HTTP)':<44}{n / d_base:>14,.0f} rows/s   "
        f"in-process chdb baseline {n / d_floor:>10,.0f} rows/s   server/in-process {d_floor / d_base:5.2f}"
    )
    print(f"{'  1 s + 1 min OHLCV of that hour':<44}{n / d_agg:>14,.0f} trades/s  ({d_agg * 1000:.0f} ms)")


def synthetic_lake(root: Path, events: int):
    home = resolve_home(root / "synth").ensure()
    from resources.lake import LakeResource

    lake = LakeResource(uri=home.catalog_uri, warehouse=home.warehouse, name=home.catalog_name)
    tables = lake.ensure_tables()
    spacing = max(1, 3_590_000_000 // events)
    envs = SyntheticMarket(seed=3).events(events, spacing)
    h0 = a.hour_us(a.CAPTURE_HOUR)
    by_type = defaultdict(list)
    for e in envs:
        e.exchange_ts = h0 + (e.exchange_ts - envs[0].exchange_ts) % 3_600_000_000
        by_type[event_type_from_pb(e.event_type)].append(e)
    for et, group in by_type.items():
        t = tables[TABLES[et].name]
        commit_files(t, LakeFileWriter(t).write(envelopes_to_table(et, group)), {"writer": "bench"})
    return lake.load_catalog(), h0


def bench_features(root: Path, events: int, rounds: int) -> None:
    catalog, h0 = synthetic_lake(root, events)
    tables = fl.input_tables(catalog)
    n_events = fl.hour_events(tables, h0).num_rows
    local_rows = {}

    def local():
        local_rows["t"] = fl.compute_hour(fl.hour_events(tables, h0), h0)

    d_local = best(local, rounds)
    spark = SparkResource(master="local[2]", shuffle_partitions=4).spark_session
    target = fl.ensure_spec_table(catalog, fsp.SPARK_FEATURES_TABLE)
    fsp.write_hour(spark, tables, target, h0)  # warm-up: JVM, Python workers
    d_spark = best(lambda: fsp.write_hour(spark, tables, target.refresh(), h0), rounds)
    same = fl.read_hour_rows(target.refresh(), h0).equals(local_rows["t"])
    print(
        f"{'feature recompute, local batch (in-process)':<44}{n_events / d_local:>14,.0f} events/s  "
        f"({local_rows['t'].num_rows:,} rows, {d_local:.2f} s)"
    )
    print(
        f"{'feature recompute, Spark local[2]':<44}{n_events / d_spark:>14,.0f} events/s  "
        f"({d_spark:.2f} s; Spark/local {d_local / d_spark:5.2f}; outputs identical: {same})"
    )


def bench_charts(root: Path, trades_lake, rounds: int) -> None:
    h = a.hour_us(a.CAPTURE_HOUR)
    rows = fl.compute_hour(fl.hour_events(fl.input_tables(trades_lake.catalog), h), h)
    d = best(lambda: render(rows, "binance", "spot", "BTC-USDT", a.utc(a.CAPTURE_HOUR)), rounds)
    print(
        f"{'chart render per symbol-hour (PNG+SVG+preview)':<44}{d * 1000:>14,.0f} ms      ({rows.num_rows} 1 s rows)"
    )


def main() -> int:
    warnings.filterwarnings("ignore", message="Delete operation did not match any records")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"analytics benchmark (python {sys.version.split()[0]}, {os.cpu_count()} cores, best of {args.rounds})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = resolve_home(root / "capture").ensure()
        lake = a.write_lake(home, a.processed_capture(), seal=(a.CAPTURE_HOUR,))
        trades = read_hour(lake.catalog.load_table("market.trades"), a.hour_us(a.CAPTURE_HOUR))
        bench_clickhouse(root, tiled_trades(trades, args.rows), args.rounds)
        bench_features(root, args.events, args.rounds)
        bench_charts(root, lake, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

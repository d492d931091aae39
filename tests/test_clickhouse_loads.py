"""ClickHouse loads into the local ClickHouse server through clickhouse-connect, from a lake
hour built from the genuine Binance capture: idempotent hour loads, aggregates equal to an
independent pyarrow reference, bars written back to Iceberg, parameterized/validated inputs,
TTL from config; and the live consumer, an hourly load and a user's own client process all
working against the server at the same time."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import defaultdict
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.batch_features import features_1s
from assets.clickhouse_loads import CLICKHOUSE_ASSETS
from features.compute import compute_features
from features.inputs import events_from_envelopes
from features.records import encode_row, table_rows
from resources.clickhouse import ClickHouseResource
from runtime.home import resolve_home
from schemas.symbols import SymbolError
from streaming.clickhouse import sql as cs
from streaming.clickhouse.live import ClickHouseLive
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from streaming.lake import features as fl
from streaming.lake.seal import read_hour
from streaming.lake.writer import LakeFileWriter, commit_files
from workloads import binance_hour as a
from workloads.kafka import connection, produce
from workloads.synthetic import SyntheticMarket

pytestmark = [pytest.mark.chdb, pytest.mark.broker]

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
DB = "tl_test"
H, H_NEXT = a.CAPTURE_HOUR, a.NEXT_HOUR


@pytest.fixture(scope="module")
def env(tmp_path_factory, clickhouse_server):
    home = resolve_home(tmp_path_factory.mktemp("ch") / "home").ensure()
    lake = a.write_lake(home, a.processed_capture(), seal=(H, H_NEXT))
    return lake, ClickHouseResource(dsn=clickhouse_server.dsn)


def run(lake, ch, partition: str, selection=None, config: dict | None = None) -> dg.ExecuteInProcessResult:
    defs = [features_1s, *CLICKHOUSE_ASSETS]
    keys = selection or [k for d in CLICKHOUSE_ASSETS for k in d.keys]
    cfg = {
        "ops": {
            "__".join(k.path): {"config": {"database": DB, **(config or {})}}
            for k in keys
            if k.path[0] == "clickhouse" or k.path[-1] == "bars_1m"
        }
    }
    res = dg.materialize(
        defs,
        partition_key=partition,
        resources={"lake": lake.lake, "clickhouse": ch},
        selection=selection,
        run_config=cfg,
        raise_on_error=True,
    )
    assert res.success
    return res


def counts(client, table: str) -> dict[str, int]:
    return {k: cs.count_hour(client, DB, table, a.utc(k)) for k in (H, H_NEXT)}


def test_hour_loads_are_idempotent_and_touch_only_their_hour(env):
    lake, ch = env
    run(lake, ch, H_NEXT)
    run(lake, ch, H)
    client = ch.get_client()
    trades = read_hour(lake.lake.ensure_tables()["trades"], a.hour_us(H))
    first = {t: counts(client, t) for t in ("trades", "features_1s", "ohlcv_1s", "ohlcv_1m", "book_stats_1m")}
    assert first["trades"][H] == trades.num_rows > 9000
    assert 0 < first["trades"][H_NEXT] < 100  # the capture's last second crosses midnight
    assert first["features_1s"][H] > 300 and first["ohlcv_1m"][H] == 6

    run(lake, ch, H)  # the same hour again: replaced, not appended
    assert {t: counts(client, t) for t in first} == first
    ids = client.query(f"SELECT count(), uniqExact(event_id) FROM {DB}.trades").result_rows[0]
    assert ids[0] == ids[1] == first["trades"][H] + first["trades"][H_NEXT]

    bars = fl.read_range(
        lake.catalog.load_table(cs.BARS_1M_TABLE.identifier), a.hour_us(H), a.hour_us(H) + 3_600_000_000
    )
    assert bars.num_rows == 6 and pc.all(pc.is_valid(bars["vwap"])).as_py()


def _key(r):
    return (r["exchange"], r["market"], r["symbol"], r["bucket"], r["price_scale"], r["size_scale"])


def ohlcv_reference(trades: pa.Table, seconds: int) -> dict:
    """1 s / 1 min bars in plain Python over the lake rows (exact integers)."""
    rows = trades.select(
        [
            "exchange",
            "market",
            "symbol",
            "exchange_ts",
            "seq",
            "event_id",
            "price_scale",
            "size_scale",
            "px",
            "qty",
            "taker_side",
        ]
    ).to_pylist()
    rows.sort(key=lambda r: (r["exchange_ts"], r["seq"], r["event_id"]))
    out: dict = {}
    for r in rows:
        us = int(r["exchange_ts"].timestamp() * 1_000_000)
        r["bucket"] = us - us % (seconds * 1_000_000)
        b = out.setdefault(_key(r), defaultdict(int))
        if not b["trade_count"]:
            b["open_px"] = b["high_px"] = b["low_px"] = r["px"]
        b["trade_count"] += 1
        b["volume"] += r["qty"]
        b["buy_volume"] += r["qty"] if r["taker_side"] == "buy" else 0
        b["sell_volume"] += r["qty"] if r["taker_side"] == "sell" else 0
        b["high_px"], b["low_px"], b["close_px"] = max(b["high_px"], r["px"]), min(b["low_px"], r["px"]), r["px"]
        b["notional"] += r["px"] * r["qty"]
    return out


def ch_rows(client, table: cs.ChTable, key: str) -> dict:
    got = cs.query_hour(client, DB, table, a.utc(key)).to_pylist()
    out = {}
    for r in got:
        r["bucket"] = int(r["ts"].timestamp() * 1_000_000)
        out[_key(r)] = r
    return out


@pytest.mark.parametrize("seconds,table", [(1, cs.CH_OHLCV_1S), (60, cs.CH_OHLCV_1M)])
def test_ohlcv_equals_an_independent_reference(env, seconds, table):
    lake, ch = env
    run(lake, ch, H, selection=[dg.AssetKey(["clickhouse", "trades"]), dg.AssetKey(["clickhouse", "ohlcv"])])
    ref = ohlcv_reference(read_hour(lake.lake.ensure_tables()["trades"], a.hour_us(H)), seconds)
    got = ch_rows(ch.get_client(), table, H)
    assert set(got) == set(ref) and len(ref) > (300 if seconds == 1 else 5)
    for k, b in ref.items():
        g = got[k]
        for c in ("trade_count", "volume", "buy_volume", "sell_volume", "open_px", "high_px", "low_px", "close_px"):
            assert g[c] == b[c], (k, c)
        assert g["notional"] == Decimal(b["notional"])
        assert math.isclose(g["vwap"], b["notional"] / (b["volume"] * 10 ** k[4]), rel_tol=1e-12)


def test_book_stats_equal_an_independent_reference(env):
    lake, ch = env
    run(
        lake,
        ch,
        H,
        selection=[
            dg.AssetKey(["lake", "features_1s"]),
            dg.AssetKey(["clickhouse", "features_1s"]),
            dg.AssetKey(["clickhouse", "book_stats_1m"]),
        ],
    )
    feats = fl.read_hour_rows(fl.ensure_spec_table(lake.catalog), a.hour_us(H))
    feats = feats.filter(pc.and_(pc.is_valid(feats["mid_px"]), pc.is_valid(feats["imbalance_10"])))
    ref: dict = defaultdict(list)
    for r in feats.to_pylist():
        us = int(r["exchange_ts"].timestamp() * 1_000_000)
        r["bucket"] = us - us % 60_000_000
        ref[_key(r)].append(r)
    got = ch_rows(ch.get_client(), cs.CH_BOOK_STATS_1M, H)
    assert set(got) == set(ref) and len(ref) == 6
    for k, rs in ref.items():
        g, ps = got[k], k[4]
        assert g["book_seconds"] == len(rs)
        assert g["spread_min_px"] == min(r["spread_px"] for r in rs)
        assert g["spread_max_px"] == max(r["spread_px"] for r in rs)
        assert math.isclose(g["spread_mean_px"], sum(r["spread_px"] for r in rs) / len(rs), rel_tol=1e-12)
        assert math.isclose(
            g["spread_mean_bps"],
            math.fsum(r["spread_px"] / (r["mid_px"] * 10**ps) * 1e4 for r in rs) / len(rs),
            rel_tol=1e-9,
        )
        assert math.isclose(g["depth_bid_10bps_mean"], sum(r["depth_bid_10bps"] for r in rs) / len(rs), rel_tol=1e-12)
        assert math.isclose(g["depth_ask_10bps_mean"], sum(r["depth_ask_10bps"] for r in rs) / len(rs), rel_tol=1e-12)
        assert math.isclose(
            g["imbalance_10_mean"], math.fsum(r["imbalance_10"] for r in rs) / len(rs), rel_tol=1e-9, abs_tol=1e-12
        )
        assert g["mid_close"] == max(rs, key=lambda r: r["exchange_ts"])["mid_px"]


def test_inputs_are_validated_and_ttl_comes_from_config(env):
    _, ch = env
    client = ch.get_client()
    with pytest.raises(SymbolError):
        cs.query_hour(client, DB, cs.CH_TRADES, a.utc(H), symbols=["BTC-USDT'; DROP TABLE x --"])
    assert cs.query_hour(client, DB, cs.CH_TRADES, a.utc(H), symbols=["ETH-USDT"]).num_rows == 0
    with pytest.raises(ValueError):
        cs.ensure_tables(client, "tl; DROP DATABASE x")
    with pytest.raises(ValueError):
        cs.delete_hour(client, DB, "trades", a.utc(H).replace(minute=5))
    with pytest.raises(ValueError):
        cs.ensure_tables(client, "tl_ttl", ttl_days=36500)  # would wrap past DateTime's end
    cs.ensure_tables(client, "tl_ttl", ttl_days=30, tables=[cs.CH_TRADES])
    engine = client.query(
        "SELECT engine_full FROM system.tables WHERE database='tl_ttl' AND name='trades'"
    ).result_rows[0][0]
    assert "toIntervalDay(30)" in engine and "PARTITION BY toDate(ts)" in engine and "ORDER BY (symbol, ts)" in engine
    cs.ensure_tables(client, "tl_ttl", ttl_days=7, tables=[cs.CH_TRADES])
    engine = client.query(
        "SELECT engine_full FROM system.tables WHERE database='tl_ttl' AND name='trades'"
    ).result_rows[0][0]
    assert "toIntervalDay(7)" in engine
    cols = dict(
        client.query("SELECT name, type FROM system.columns WHERE database='tl_ttl' AND table='trades'").result_rows
    )
    assert cols["symbol"] == "LowCardinality(String)" and cols["ts"] == "DateTime64(6, 'UTC')"


def test_unsealed_hours_are_refused(env):
    lake, ch = env
    run(lake, ch, H_NEXT)  # the sealed hour loaded (again: loads replace their hour), whatever ran before
    table = lake.lake.ensure_tables()["trades"]
    late = read_hour(table, a.hour_us(H_NEXT)).slice(0, 1)
    late = late.set_column(0, "event_id", pa.array(["late-arrival"], pa.string()))
    commit_files(table, LakeFileWriter(table).write(late), {"writer": "test"})  # a micro-batch after sealing
    sel = [dg.AssetKey(["clickhouse", "trades"])]
    res = dg.materialize(
        [features_1s, *CLICKHOUSE_ASSETS],
        partition_key=H_NEXT,
        selection=sel,
        resources={"lake": lake.lake, "clickhouse": ch},
        raise_on_error=False,
        run_config={"ops": {"clickhouse__trades": {"config": {"database": DB}}}},
    )
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert "not sealed" in failure.event_specific_data.error.message
    before = cs.count_hour(ch.get_client(), DB, "trades", a.utc(H_NEXT))
    run(lake, ch, H_NEXT, selection=sel, config={"require_sealed": False})
    assert cs.count_hour(ch.get_client(), DB, "trades", a.utc(H_NEXT)) == before + 1


#: A user's own client, in a process of its own, with nothing but clickhouse-connect and the DSN:
#: queries in a loop until told to stop, then prints every query's (start, end, rows seen).
USER_CLIENT = r"""
import json, pathlib, sys, time
import clickhouse_connect

dsn, db, stop = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
client = clickhouse_connect.get_client(dsn=dsn)
seen = []
while not stop.exists():
    t0 = time.time()
    live = client.query(f"SELECT count() FROM {db}.features_live FINAL").result_rows[0][0]
    trades = client.query(f"SELECT count() FROM {db}.trades").result_rows[0][0]
    seen.append((t0, time.time(), live, trades))
print(json.dumps(seen))
"""


def test_live_consumer_hourly_load_and_user_client_at_the_same_time(env, kafka_broker, clickhouse_server, tmp_path):
    """Issue 11's shape: with the live consumer running (it used to hold the one chdb engine,
    so hourly ClickHouse steps waited forever on the `clickhouse_local` pool and no user could
    connect), an hourly load and a separate client process work against the same server at
    the same time. The producer feeds the consumer while the load runs and the user's
    client queries in a loop throughout; every row lands once, the load is exact, every
    user query succeeds, and both the consumer's inserts and the user's queries happened
    while the load was running."""
    lake, ch = env
    db = f"tl_concurrent_{uuid.uuid4().hex[:6]}"
    client = ch.get_client()
    cs.ensure_tables(client, db)
    topic = f"test.ch-concurrent.{uuid.uuid4().hex[:8]}"
    create_topics(admin_client(kafka_broker.bootstrap), {topic: TopicSpec(2, -1)}, replication_factor=1)
    rows, _ = compute_features(events_from_envelopes(SyntheticMarket(seed=11).events(3000, 20_000)))
    rows = table_rows(rows)
    assert len(rows) > 40

    load_started, load_done, stop_live = threading.Event(), threading.Event(), threading.Event()
    batches: list[float] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            live = ClickHouseLive(
                connection(kafka_broker.bootstrap),
                ch.get_client(),
                [topic],
                database=db,
                group_id=f"g-{topic}",
                session_timeout_ms=2000,
                batch_max_ms=100,
            )
            live.start()
            try:
                while not stop_live.is_set():
                    if live.run_once():
                        batches.append(time.time())
            finally:
                live.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def producer() -> None:
        """Half the rows before the load, the rest in small batches for as long as it runs."""
        try:

            def send(part: list[dict]) -> None:
                produce(kafka_broker.bootstrap, [(topic, r["symbol"].encode(), encode_row(r), None) for r in part])

            half = len(rows) // 2
            send(rows[:half])
            load_started.wait(120)
            rest = rows[half:]
            while rest:
                n = len(rest) if load_done.is_set() else 5  # trickle while the load runs, then the remainder
                send(rest[:n])
                rest = rest[n:]
                load_done.wait(0.05)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    stop_file = tmp_path / "stop"
    user = subprocess.Popen(
        [sys.executable, "-c", USER_CLIENT, clickhouse_server.dsn, db, str(stop_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    threads = [threading.Thread(target=consume), threading.Thread(target=producer)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while not batches and not errors and time.monotonic() < deadline:  # the consumer is in its group
            time.sleep(0.1)
        assert batches, errors or "the live consumer inserted nothing"
        t_load = time.time()
        load_started.set()
        run(lake, ch, H, selection=[dg.AssetKey(["clickhouse", "trades"])], config={"database": db})
        t_loaded = time.time()
        load_done.set()
        threads[1].join(120)
        expected = len({r["event_id"] for r in rows})
        while (
            (cs_count := client.query(f"SELECT count() FROM {db}.features_live FINAL").result_rows[0][0]) < expected
            and time.monotonic() < deadline + 60
            and not errors
        ):
            time.sleep(0.2)
    finally:
        load_started.set()
        load_done.set()
        stop_live.set()
        stop_file.touch()
        for t in threads:
            t.join(60)
        out, err = user.communicate(timeout=60)
    assert not errors, errors
    assert user.returncode == 0, err[-2000:]
    seen = json.loads(out)

    trades = read_hour(lake.lake.ensure_tables()["trades"], a.hour_us(H))
    assert cs.count_hour(client, db, "trades", a.utc(H)) == trades.num_rows > 9000
    assert cs_count == expected
    assert sorted(
        client.query_arrow(f"SELECT event_id FROM {db}.features_live FINAL")["event_id"].to_pylist()
    ) == sorted(r["event_id"] for r in rows)
    # Everything ran at once: the consumer kept inserting once the load had started (nothing held
    # the engine for a service) and the user's queries overlapped the load's run. Overlap, not
    # "inside": on a slow machine one request can straddle the load's start or end.
    assert any(t >= t_load for t in batches)
    assert any(q0 <= t_loaded and q1 >= t_load for q0, q1, _, _ in seen)
    # The user's view only ever grew (rows are unique), and it saw the load's rows arrive.
    assert [q[2] for q in seen] == sorted(q[2] for q in seen)
    assert seen[-1][3] == trades.num_rows

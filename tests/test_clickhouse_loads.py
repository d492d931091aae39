"""ClickHouse loads on real chdb through clickhouse-connect, from a lake hour built from the
genuine Binance capture: idempotent hour loads, aggregates equal to an independent pyarrow
reference, bars written back to Iceberg, parameterized/validated inputs, TTL from config."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.batch_features import features_1s
from assets.clickhouse_loads import (
    assets as ch_assets,
)
from resources.clickhouse import ClickHouseResource, release_chdb
from resources.home import resolve_home
from schemas.symbols import SymbolError
from streaming import clickhouse_sql as cs
from streaming import feature_lake as fl
from streaming.lake_seal import read_hour
from streaming.lake_writer import LakeFileWriter, commit_files
from tests import analytics_support as a

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
DB = "tl_test"
H, H_NEXT = a.CAPTURE_HOUR, a.NEXT_HOUR


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = resolve_home(tmp_path_factory.mktemp("ch") / "home").ensure()
    lake = a.write_lake(home, a.processed_capture(), seal=(H, H_NEXT))
    ch = ClickHouseResource(dsn=f"chdb://{home.root}/clickhouse")
    yield lake, ch
    release_chdb()


def run(lake, ch, partition: str, selection=None, config: dict | None = None) -> dg.ExecuteInProcessResult:
    defs = [features_1s, *ch_assets]
    keys = selection or [k for d in ch_assets for k in d.keys]
    cfg = {"ops": {"__".join(k.path): {"config": {"database": DB, **(config or {})}}
                   for k in keys if k.path[0] == "clickhouse" or k.path[-1] == "bars_1m"}}
    res = dg.materialize(defs, partition_key=partition, resources={"lake": lake.lake, "clickhouse": ch},
                         selection=selection, run_config=cfg, raise_on_error=True)
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
    assert 0 < first["trades"][H_NEXT] < 100          # the capture's last second crosses midnight
    assert first["features_1s"][H] > 300 and first["ohlcv_1m"][H] == 6

    run(lake, ch, H)                                   # the same hour again: replaced, not appended
    assert {t: counts(client, t) for t in first} == first
    ids = client.query(f"SELECT count(), uniqExact(event_id) FROM {DB}.trades").result_rows[0]
    assert ids[0] == ids[1] == first["trades"][H] + first["trades"][H_NEXT]

    bars = fl.read_range(lake.catalog.load_table(cs.BARS_1M_TABLE.identifier), a.hour_us(H), a.hour_us(H) + 3_600_000_000)
    assert bars.num_rows == 6 and pc.all(pc.is_valid(bars["vwap"])).as_py()


def _key(r):
    return (r["exchange"], r["market"], r["symbol"], r["bucket"], r["price_scale"], r["size_scale"])


def ohlcv_reference(trades: pa.Table, seconds: int) -> dict:
    """1 s / 1 min bars in plain Python over the lake rows (exact integers)."""
    rows = trades.select(["exchange", "market", "symbol", "exchange_ts", "seq", "event_id", "price_scale",
                          "size_scale", "px", "qty", "taker_side"]).to_pylist()
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
    run(lake, ch, H, selection=[dg.AssetKey(["lake", "features_1s"]), dg.AssetKey(["clickhouse", "features_1s"]),
                                dg.AssetKey(["clickhouse", "book_stats_1m"])])
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
        assert math.isclose(g["spread_mean_bps"], math.fsum(r["spread_px"] / (r["mid_px"] * 10 ** ps) * 1e4
                                                            for r in rs) / len(rs), rel_tol=1e-9)
        assert math.isclose(g["depth_bid_10bps_mean"], sum(r["depth_bid_10bps"] for r in rs) / len(rs), rel_tol=1e-12)
        assert math.isclose(g["depth_ask_10bps_mean"], sum(r["depth_ask_10bps"] for r in rs) / len(rs), rel_tol=1e-12)
        assert math.isclose(g["imbalance_10_mean"], math.fsum(r["imbalance_10"] for r in rs) / len(rs),
                            rel_tol=1e-9, abs_tol=1e-12)
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
        cs.ensure_tables(client, "tl_ttl", ttl_days=36500)   # would wrap past DateTime's end
    cs.ensure_tables(client, "tl_ttl", ttl_days=30, tables=[cs.CH_TRADES])
    engine = client.query("SELECT engine_full FROM system.tables WHERE database='tl_ttl' AND name='trades'").result_rows[0][0]
    assert "toIntervalDay(30)" in engine and "PARTITION BY toDate(ts)" in engine and "ORDER BY (symbol, ts)" in engine
    cs.ensure_tables(client, "tl_ttl", ttl_days=7, tables=[cs.CH_TRADES])
    engine = client.query("SELECT engine_full FROM system.tables WHERE database='tl_ttl' AND name='trades'").result_rows[0][0]
    assert "toIntervalDay(7)" in engine
    cols = dict(client.query("SELECT name, type FROM system.columns WHERE database='tl_ttl' AND table='trades'").result_rows)
    assert cols["symbol"] == "LowCardinality(String)" and cols["ts"] == "DateTime64(6, 'UTC')"


def test_unsealed_hours_are_refused(env):
    lake, ch = env
    table = lake.lake.ensure_tables()["trades"]
    late = read_hour(table, a.hour_us(H_NEXT)).slice(0, 1)
    late = late.set_column(0, "event_id", pa.array(["late-arrival"], pa.string()))
    commit_files(table, LakeFileWriter(table).write(late), {"writer": "test"})   # a micro-batch after sealing
    sel = [dg.AssetKey(["clickhouse", "trades"])]
    res = dg.materialize([features_1s, *ch_assets], partition_key=H_NEXT, selection=sel,
                         resources={"lake": lake.lake, "clickhouse": ch}, raise_on_error=False,
                         run_config={"ops": {"clickhouse__trades": {"config": {"database": DB}}}})
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert "not sealed" in failure.event_specific_data.error.message
    before = cs.count_hour(ch.get_client(), DB, "trades", a.utc(H_NEXT))
    run(lake, ch, H_NEXT, selection=sel, config={"require_sealed": False})
    assert cs.count_hour(ch.get_client(), DB, "trades", a.utc(H_NEXT)) == before + 1

"""Explicit quantity units (issue 12 item 2): OKX SWAP/FUTURES and Bybit inverse sizes are
contracts; every processed record states its unit, and features, bars and pragma depth use
base-asset quantities.

The genuine OKX capture carries two inverse instruments (BTC-USD-220527: 100 USD per
contract; UNI-USD-SWAP: 10 USD). It is replayed by the emulator into real collector shards
and the real broker; the normalizer takes its reference data from the emulator's
instruments endpoint, which serves contract values by its own rule (the oracle), so one
contract of BTC-USD-220527 must come out as 100/px BTC, not 1 BTC.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import load_catalog

from collectors.emulator.okx import okx_contract
from collectors.exchanges.bybit_instruments import parse_bybit
from collectors.exchanges.okx_instruments import parse_okx
from collectors.replay import Emulator
from features.compute import compute_features
from features.inputs import events_from_envelopes, events_from_lake
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.iceberg import ensure_table
from schemas.model import EventType, Exchange, Market
from schemas.serde import encode
from schemas.tables import BASE_QTY_FIELDS, TABLES, UNIT_FIELDS, TableSpec
from schemas.topics import event_topic
from schemas.units import QtyUnit, unit_of
from streaming.pragma.books import FeedBook
from streaming.processors.instruments import InstrumentCatalog, fetch_instruments
from streaming.processors.normalizer import Normalizer
from tests.support.collectors import (
    EIPS,
    RunningShard,
    ensure_collector_topics,
    shard_events,
    unique,
    wait_until,
)
from workloads.samples import OKX_CF, REFERENCE

OKX_REF = REFERENCE / "nautilus_okx_instruments_swap.json"
BYBIT_INVERSE_REF = REFERENCE / "nautilus_bybit_instruments_inverse.json"


def _base(qty: int, ss: int, bs: int | None) -> Decimal:
    return Decimal(qty) / Decimal(10) ** (ss if bs is None else bs)


# -- the rule, on the venues' own instrument bodies --------------------------------------------


def test_genuine_reference_bodies_give_the_venues_units():
    okx = {r.native: r for r in parse_okx(OKX_REF.read_text())}
    inv, eth, btc = unit_of(okx["BTC-USD-SWAP"]), unit_of(okx["ETH-USDT-SWAP"]), unit_of(okx["BTC-USDT-SWAP"])
    assert (inv.unit, inv.contract_value, inv.ccy) == (QtyUnit.INVERSE_CONTRACT, "100", "USD")
    assert (eth.unit, eth.contract_value, eth.ccy) == (QtyUnit.LINEAR_CONTRACT, "0.1", "ETH")
    assert (btc.unit, btc.contract_value, btc.ccy) == (QtyUnit.LINEAR_CONTRACT, "0.01", "BTC")
    # README of the samples: sz "3" on BTC-USDT-SWAP is 0.03 BTC (lot 0.01 -> size scale 2)
    assert btc.to_base(300, 2, 0, 0) == 3 * 10**2 and btc.base_scale(2) == 4  # 0.0300 BTC, exact
    # one 100 USD contract at 30000.0 is 0.00333333 BTC (8 extra decimals, half-even)
    assert inv.base_scale(0) == 8 and inv.to_base(1, 0, 300_000, 1) == 333_333
    assert inv.to_base(3, 0, 400_000, 1) == 750_000  # exact when it divides
    assert inv.to_base(1, 0, 10**12, 0) == 1  # a resting size never rounds to 0
    bybit = parse_bybit(BYBIT_INVERSE_REF.read_text(), "inverse")[0]
    u = unit_of(bybit)
    assert (bybit.canonical, u.unit, u.contract_value, u.ccy) == ("BTC-USD-PERP", QtyUnit.INVERSE_CONTRACT, "1", "USD")
    # the emulator serves the genuine rows when they name the instrument, its default otherwise
    ref = {r["instId"]: r for r in json.loads(OKX_REF.read_text())["data"]}
    assert okx_contract("BTC-USD-SWAP", ref)["ctVal"] == "100"
    assert okx_contract("UNI-USD-SWAP")["ctVal"] == "10" and okx_contract("BTC-USD-220527")["ctVal"] == "100"


def _bybit_inverse_envelopes() -> list[pb.Envelope]:
    """Raw Bybit inverse records as the collector publishes them (sizes in USD contracts)."""

    def env(et, seq, **payload):
        e = pb.Envelope(
            exchange=Exchange.BYBIT.pb,
            market=Market.PERP.pb,
            event_type=et.pb,
            symbol="BTC-USD-PERP",
            native_symbol="BTCUSD",
            exchange_ts=1_700_000_000_000_000 + seq * 1000,
            ingest_ts=1_700_000_000_001_000 + seq * 1000,
            seq=seq,
            price_scale=1,
            size_scale=0,
        )
        getattr(e, et.payload_field).CopyFrom(payload["p"])
        from schemas.ids import stamp_event_id

        return stamp_event_id(e)

    snap = pb.BookSnapshot(
        bids=[pb.PriceLevel(px=600_000, qty=60_000)],
        asks=[pb.PriceLevel(px=600_010, qty=30_000)],
        depth=1,
        reason=pb.SNAPSHOT_REASON_VENUE,
    )
    trade = pb.Trade(trade_id="t1", px=600_000, qty=120_000, taker_side=pb.SIDE_SELL)
    return [env(EventType.BOOK_SNAPSHOT, 1, p=snap), env(EventType.TRADE, 2, p=trade)]


def _normalize(norm: Normalizer, envs: list[pb.Envelope], topic_of) -> list[pb.Envelope]:
    out = []
    for i, e in enumerate(envs):
        rec = encode(e)
        o = norm.process(topic_of(e), 0, i, rec.value, rec.headers)
        assert o.kind in ("ok", "duplicate"), (o.reason, e)
        if o.kind == "ok":
            out.append(o.env)
    return out


def test_bybit_inverse_sizes_are_usd_contracts_and_features_read_them_as_btc():
    cat = InstrumentCatalog(parse_bybit(BYBIT_INVERSE_REF.read_text(), "inverse"))
    norm = Normalizer(cat)
    envs = _normalize(
        norm,
        _bybit_inverse_envelopes(),
        lambda e: event_topic("raw", "perp", EventType(["", "trade", "book_snapshot"][e.event_type]), "bybit"),
    )
    for e in envs:
        assert (e.qty_unit, e.contract_value, e.contract_value_ccy) == (pb.QTY_UNIT_INVERSE_CONTRACT, "1", "USD")
    trades = envelopes_to_table(EventType.TRADE, [e for e in envs if e.event_type == EventType.TRADE.pb])
    row = trades.to_pylist()[0]
    # 120 000 USD contracts at 60 000.0 = 2 BTC
    assert (row["qty"], row["qty_unit"], row["contract_value"], row["contract_value_ccy"]) == (
        120_000,
        "inverse_contract",
        "1",
        "USD",
    )
    assert _base(row["base_qty"], 0, row["base_size_scale"]) == 2
    feats, _ = compute_features(events_from_envelopes(envs))
    f = feats.to_pylist()[-1]
    ss = f["size_scale"]
    assert Decimal(f["volume"]) / 10**ss == 2 and Decimal(f["sell_volume"]) / 10**ss == 2
    assert Decimal(f["best_bid_qty"]) / 10**ss == 1 and Decimal(f["best_ask_qty"]) / 10**ss == Decimal("0.49999167")
    assert f["vwap"] == pytest.approx(60_000.0)


# -- the genuine OKX capture end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def okx_replay(kafka_broker):
    """(raw envelopes of the whole capture, catalog fetched from the emulator, emulator ctVals)."""
    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    prefix = unique("units")

    async def scenario():
        emu = Emulator(server_ping_s=5)
        feed = emu.play_capture(OKX_CF, speed=None)
        await emu.start()
        shards = emu.shard_configs(prefix, egress_ips=EIPS[:3], watchdog_s=60)
        runs = [RunningShard(cfg, bootstrap) for cfg in shards]
        try:
            for r in runs:
                await r.__aenter__()
            assert await wait_until(lambda: emu.stats()["finished"], 120), emu.stats()["feeds"]
            queued = sum(c.queued for c in feed.sim.clients.values())
            assert await wait_until(lambda: sum(r.runner.stats.frames_in for r in runs) >= queued, 30)
            cat = InstrumentCatalog()
            for mk in Market:
                cat.add(await asyncio.to_thread(fetch_instruments, Exchange.OKX, mk, emu.rest_base(Exchange.OKX, mk)))
        finally:
            for r in runs:
                await r.__aexit__(None, None, None)
            await emu.stop()
        return shards, cat

    shards, cat = asyncio.run(scenario())
    raw = []
    for cfg in shards:
        raw += shard_events(bootstrap, cfg.name, Exchange.OKX)
    raw.sort(key=lambda e: (e.exchange_ts, e.seq))
    return raw, cat


def _okx_processed(raw, cat) -> list[pb.Envelope]:
    def topic(e):
        return event_topic(
            "raw",
            Market(["", "spot", "perp", "future"][e.market]),
            EventType(
                [None, "trade", "book_snapshot", "book_delta", "funding", "mark_price", "liquidation", "ticker"][
                    e.event_type
                ]
            ),
            "okx",
        )

    return _normalize(Normalizer(cat), raw, topic)


@pytest.fixture(scope="module")
def okx_processed(okx_replay) -> list[pb.Envelope]:
    return _okx_processed(*okx_replay)


def test_okx_inverse_trades_land_with_contract_units_and_base_features(okx_processed, tmp_path):
    proc = okx_processed
    by_sym: dict[str, list[pb.Envelope]] = {}
    for e in proc:
        by_sym.setdefault(e.native_symbol, []).append(e)
    assert {"BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"} <= by_sym.keys()
    want = {
        "BTC-USD-220527": (pb.QTY_UNIT_INVERSE_CONTRACT, "100", "USD"),
        "UNI-USD-SWAP": (pb.QTY_UNIT_INVERSE_CONTRACT, "10", "USD"),
        "BTC-USDT": (pb.QTY_UNIT_BASE, "1", "BTC"),
    }
    for native, unit in want.items():
        assert {(e.qty_unit, e.contract_value, e.contract_value_ccy) for e in by_sym[native]} == {unit}, native

    # lake rows: a real Iceberg table created with the pre-unit schema, evolved in place
    catalog = load_catalog(
        "units",
        type="sql",
        uri=f"sqlite:///{tmp_path}/cat.db",
        warehouse=f"file://{tmp_path}/wh",
        init_catalog_tables="true",
    )
    catalog.create_namespace("market")
    spec = TABLES[EventType.TRADE]
    old_schema = pa.schema([f for f in spec.schema if f not in UNIT_FIELDS + BASE_QTY_FIELDS])
    table = ensure_table(catalog, TableSpec(spec.name, old_schema, EventType.TRADE))
    trades = [e for e in proc if e.event_type == EventType.TRADE.pb]
    rows = envelopes_to_table(EventType.TRADE, trades)
    spot = pc.equal(rows["native_symbol"], "BTC-USDT")
    table.append(rows.filter(spot).select(old_schema.names))  # spot rows written before units
    table = ensure_table(catalog, spec)
    assert {"qty_unit", "contract_value", "contract_value_ccy", "base_qty", "base_size_scale"} <= set(
        table.schema().column_names
    )
    table.append(rows.filter(pc.invert(spot)))
    lake = table.scan().to_arrow()
    assert lake.num_rows == len(trades)
    inv = lake.filter(pc.equal(lake["native_symbol"], "BTC-USD-220527")).to_pylist()
    assert len(inv) == 4
    for r in inv:
        assert (r["qty_unit"], r["contract_value"], r["contract_value_ccy"]) == ("inverse_contract", "100", "USD")
        px = Decimal(r["px"]) / 10 ** r["price_scale"]
        qty = Decimal(r["qty"]) / 10 ** r["size_scale"]
        base = Decimal(r["base_qty"]) / 10 ** r["base_size_scale"]
        assert abs(base - qty * 100 / px) <= Decimal(10) ** -r["base_size_scale"] / 2, r

    # features: the streaming path (envelopes) and the batch path (lake rows) agree, in BTC
    stream, _ = compute_features(events_from_envelopes(proc))
    batch, _ = compute_features(events_from_lake(trades=lake))
    s_rows = {(r["symbol"], r["exchange_ts"]): r for r in stream.to_pylist() if r["trade_count"]}
    b_rows = {(r["symbol"], r["exchange_ts"]): r for r in batch.to_pylist()}
    expect_vol: dict[tuple, Decimal] = {}
    for r in inv:
        key = ("BTC-USD-220527", r["exchange_ts"].replace(microsecond=0))
        expect_vol[key] = expect_vol.get(key, Decimal(0)) + Decimal(r["base_qty"]) / 10 ** r["base_size_scale"]
    for (sym, ts), vol in expect_vol.items():
        hit = [r for (s, t), r in s_rows.items() if s == sym and t == ts]
        assert hit, (sym, ts)
        f = hit[0]
        assert Decimal(f["volume"]) / 10 ** f["size_scale"] == vol
        assert Decimal(f["volume"]) / 10 ** f["size_scale"] < 1  # a few 100 USD contracts, not whole BTC
        assert b_rows[(sym, ts)]["volume"] == f["volume"] and b_rows[(sym, ts)]["size_scale"] == f["size_scale"]

    # book features and pragma depth: the inverse book's sizes are BTC (contracts * 100 / px)
    book_envs = [
        e for e in by_sym["BTC-USD-220527"] if e.event_type in (EventType.BOOK_SNAPSHOT.pb, EventType.BOOK_DELTA.pb)
    ]
    fb = FeedBook()
    for e in sorted(book_envs, key=lambda e: (e.exchange_ts, e.seq)):
        for _ in fb.on_envelope(e):
            pass
    assert fb.synced and fb.size_scale == 8
    (bpx, bq) = fb.book.top_bids(1)[0]
    last = book_envs[-1]
    contracts_at_best = None
    for e in sorted(book_envs, key=lambda e: (e.exchange_ts, e.seq)):
        payload = e.book_snapshot if e.event_type == EventType.BOOK_SNAPSHOT.pb else e.book_delta
        if e.event_type == EventType.BOOK_SNAPSHOT.pb:
            contracts_at_best = None
        for lv in payload.bids:
            if lv.px == bpx:
                contracts_at_best = lv.qty
    assert contracts_at_best is not None
    px = Decimal(bpx) / 10**last.price_scale
    assert abs(Decimal(bq) / 10**8 - Decimal(contracts_at_best) / 10**last.size_scale * 100 / px) < Decimal("1e-8")
    f_last = [r for r in stream.to_pylist() if r["symbol"] == last.symbol and r["best_bid_qty"] is not None][-1]
    assert f_last["size_scale"] == 8 and f_last["best_bid_px"] == bpx and f_last["best_bid_qty"] == bq


def test_clickhouse_bars_sum_base_asset_volume(okx_processed, clickhouse_server):
    """ClickHouse trades keep the contract size and its unit; 1 min bars add base-asset sizes.
    The trades table is first created without the unit columns (a database from before them)
    and gains them in place."""
    import clickhouse_connect

    from streaming.clickhouse import sql as cs

    client = clickhouse_connect.get_client(dsn=clickhouse_server.dsn)
    db = unique("units_ch").replace("-", "_")
    old = cs.ChTable(
        "trades",
        pa.schema([f for f in cs.TRADES_SCHEMA if f.name not in {x.name for x in UNIT_FIELDS + BASE_QTY_FIELDS}]),
    )
    cs.ensure_tables(client, db, tables=[old])
    cs.ensure_tables(client, db, tables=[cs.CH_TRADES, cs.CH_OHLCV_1M])
    trades = [e for e in okx_processed if e.event_type == EventType.TRADE.pb]
    rows = cs.to_ch_rows(cs.CH_TRADES, envelopes_to_table(EventType.TRADE, trades))
    hour = rows["ts"][0].as_py().replace(minute=0, second=0, microsecond=0)
    cs.replace_hour(client, db, cs.CH_TRADES, hour, rows)
    cs.aggregate_ohlcv(client, db, hour, 60)
    bars = cs.query_hour(client, db, cs.CH_OHLCV_1M, hour, symbols=["BTC-USD-220527"]).to_pylist()
    inv = [r for r in rows.to_pylist() if r["symbol"] == "BTC-USD-220527"]
    want = sum(
        Decimal(r["qty"]) / 10 ** r["size_scale"] * 100 / (Decimal(r["px"]) / 10 ** r["price_scale"]) for r in inv
    )
    got = sum(Decimal(b["volume"]) / 10 ** b["size_scale"] for b in bars)
    assert sum(b["trade_count"] for b in bars) == len(inv) == 4
    assert abs(got - want) < Decimal("1e-7") and got < 1, (got, want)
    units = client.query(
        f"SELECT DISTINCT qty_unit, contract_value, contract_value_ccy FROM {db}.trades WHERE symbol = 'BTC-USD-220527'"
    ).result_rows
    assert units == [("inverse_contract", "100", "USD")]
    client.command(f"DROP DATABASE {db}")


def test_emulator_serves_bybit_inverse_and_linear_contracts_apart():
    """Bybit lists USD-quoted contracts under category=inverse only (InversePerpetual, 1 USD
    each) and stablecoin-quoted ones under linear; the catalog the normalizer fetches from the
    emulator must give each its own unit."""
    from collectors.emulator.sim import InstrumentInfo

    async def main():
        emu = Emulator(server_ping_s=None)
        sim = emu.venue(Exchange.BYBIT, Market.PERP)
        sim.add_instrument(InstrumentInfo("BTCUSD", Market.PERP, "BTC", "USD", "0.5", "1"))
        sim.add_instrument(InstrumentInfo("BTCUSDT", Market.PERP, "BTC", "USDT", "0.1", "0.001"))
        await emu.start()
        try:
            return await asyncio.to_thread(
                fetch_instruments, Exchange.BYBIT, Market.PERP, emu.rest_base(Exchange.BYBIT, Market.PERP)
            )
        finally:
            await emu.stop()

    refs = {r.native: r for r in asyncio.run(main())}
    assert set(refs) == {"BTCUSD", "BTCUSDT"}
    inv, lin = unit_of(refs["BTCUSD"]), unit_of(refs["BTCUSDT"])
    assert (refs["BTCUSD"].canonical, inv.unit, inv.contract_value, inv.ccy) == (
        "BTC-USD-PERP",
        QtyUnit.INVERSE_CONTRACT,
        "1",
        "USD",
    )
    assert (refs["BTCUSDT"].canonical, lin.unit) == ("BTC-USDT-PERP", QtyUnit.BASE)

"""Bybit history files: the genuine ob500 sample replayed through the collector's Bybit
book logic rebuilds a consistent book, and loads through the daily Dagster asset (served
by a real HTTP server on 127.0.0.1) into book_snapshots/book_deltas, idempotently; trade
history files (csv.gz) load into trades."""

from __future__ import annotations

import gzip
import io
import json
import random
import warnings
import zipfile
from decimal import Decimal

import dagster as dg
import pyarrow.compute as pc
import pytest

from assets.bulk_history import CHECK_ID_GAPS, CHECK_ROW_COUNT, CHECK_SCHEMA, build_bulk_history_asset, day_bounds_us
from collectors.bulk import bybit_history as bh
from collectors.bulk.common import Target
from collectors.bulk.sources import BulkSource
from resources.bulk import BulkHistoryResource
from resources.lake import LakeResource
from schemas.model import EventType, Exchange, Market
from schemas.tables import TABLES
from streaming.processors.instruments import InstrumentCatalog
from tests.support.bulk_server import FileServer
from workloads.samples import BYBIT_OB500

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
warnings.filterwarnings("ignore", category=getattr(dg, "BetaWarning", Warning))

DAY = "2024-12-01"
BOOK = "bybit.linear.XRPUSDT.ob500"
TRADES = "bybit.linear.XRPUSDT.trades"
INFO = {
    "retCode": 0,
    "result": {
        "category": "linear",
        "list": [
            {
                "symbol": "XRPUSDT",
                "baseCoin": "XRP",
                "quoteCoin": "USDT",
                "contractType": "LinearPerpetual",
                "status": "Trading",
                "priceFilter": {"tickSize": "0.0001"},
                "lotSizeFilter": {"qtyStep": "1"},
            }
        ],
    },
}


def catalog() -> InstrumentCatalog:
    cat = InstrumentCatalog()
    cat.load_exchange_info(Exchange.BYBIT, Market.PERP, INFO, category="linear")
    return cat


def target(key: str) -> Target:
    src = BulkSource.parse(key)
    ref = catalog().get(src.exchange, src.lake_market, src.symbol)
    return Target(
        src.exchange,
        src.lake_market,
        src.symbol,
        ref.canonical,
        ref.price_scale,
        ref.size_scale,
        ref.tick_units(ref.price_scale),
        ref.lot_units(ref.size_scale),
        src.shard,
    )


def sample_lines() -> list[bytes]:
    with zipfile.ZipFile(BYBIT_OB500) as z:
        return [ln for ln in z.read(z.namelist()[0]).splitlines() if ln.strip()]


def independent_book(lines: list[bytes]) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    """Bybit's documented rules applied with Decimal, sharing nothing with the adapter."""
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for ln in lines:
        msg = json.loads(ln)
        data = msg["data"]
        if msg["type"] == "snapshot":
            bids = {Decimal(p): Decimal(q) for p, q in data["b"]}
            asks = {Decimal(p): Decimal(q) for p, q in data["a"]}
            continue
        for side, levels in ((bids, data["b"]), (asks, data["a"])):
            for p, q in levels:
                if Decimal(q) == 0:
                    side.pop(Decimal(p), None)
                else:
                    side[Decimal(p)] = Decimal(q)
        assert max(bids) < min(asks)
    return bids, asks


def test_sample_rebuilds_a_consistent_book():
    lines = sample_lines()
    t = target(BOOK)
    r = bh.replay_book(lines, t)
    assert r.conv.file_rows == 50 and not r.conv.rejects
    assert (r.stats.snapshots, r.stats.deltas_applied, r.stats.gaps, r.stats.crossed, r.stats.resyncs) == (
        1,
        49,
        0,
        0,
        0,
    )
    assert r.crossed_after_apply == 0 and r.stale == 0
    snaps = r.conv.envelopes[EventType.BOOK_SNAPSHOT]
    deltas = r.conv.envelopes[EventType.BOOK_DELTA]
    assert len(snaps) == 1 and len(deltas) == 49
    seqs = [snaps[0].seq] + [d.seq for d in deltas]
    assert seqs == list(range(seqs[0], seqs[0] + 50))  # u strictly +1
    assert len(snaps[0].book_snapshot.bids) == 500 and len(snaps[0].book_snapshot.asks) == 500
    assert all(
        e.symbol == "XRP-USDT-PERP" and e.shard == "bulk:" + BOOK and len(e.event_id) == 32 for e in snaps + deltas
    )
    # the rebuilt book equals an independent Decimal replay of the raw lines, level for level
    bids, asks = independent_book(lines)
    scale = Decimal(10) ** t.price_scale
    assert r.final_book.bids == {int(p * scale): int(q) for p, q in bids.items()}
    assert r.final_book.asks == {int(p * scale): int(q) for p, q in asks.items()}
    # replaying the same file again gives the same event ids (deterministic)
    assert [e.event_id for e in bh.replay_book(lines, t).conv.envelopes[EventType.BOOK_DELTA]] == [
        e.event_id for e in deltas
    ]


def test_a_gap_in_the_history_drops_the_book_until_the_next_snapshot():
    lines = sample_lines()
    gapped = lines[:10] + lines[11:]  # one delta lost
    r = bh.replay_book(gapped, target(BOOK))
    assert r.stats.gaps == 1 and r.stats.crossed == 0 and r.crossed_after_apply == 0
    assert len(r.conv.envelopes[EventType.BOOK_DELTA]) == 9  # the 9 deltas before the gap only
    assert r.stale == len(gapped) - 10 - 1  # the rest waits for a snapshot
    assert r.resyncs and r.resyncs[0].startswith("gap:")


def trades_csv_gz(rows: list[tuple]) -> bytes:
    header = "timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue,homeNotional,foreignNotional,RPI"
    body = "\n".join(",".join(str(c) for c in r) for r in rows)
    return gzip.compress(f"{header}\n{body}\n".encode())


def generated_trades(n: int) -> list[tuple]:
    rng = random.Random(8)
    start = day_bounds_us(DAY)[0] // 1_000_000
    out = []
    for i in range(n):
        px = f"2.{4000 + rng.randint(0, 300):04d}"
        size = rng.randint(1, 9000)
        ts = f"{start + i * 60}.{rng.randint(0, 9999):04d}"
        out.append(
            (
                ts,
                "XRPUSDT",
                rng.choice(("Buy", "Sell")),
                size,
                px,
                "PlusTick",
                f"{rng.getrandbits(64):016x}-trade-{i}",
                "1e+08",
                size,
                "1.0",
                i % 2,
            )
        )
    return out


def test_trade_history_parses_exactly():
    rows = generated_trades(50)
    conv = bh.trades_to_envelopes(bh.read_trades_csv(trades_csv_gz(rows)), target(TRADES))
    envs = conv.envelopes[EventType.TRADE]
    assert conv.file_rows == 50 and len(envs) == 50 and not conv.rejects
    sec, frac = rows[7][0].split(".")
    assert envs[7].exchange_ts == int(sec) * 1_000_000 + int(frac) * 100
    assert envs[7].trade.trade_id == rows[7][6] and envs[7].trade.qty == rows[7][3]
    assert envs[7].trade.px == int(rows[7][4].replace(".", ""))
    assert envs[7].trade.taker_side == (1 if rows[7][2] == "Buy" else 2)


@pytest.fixture
def served(tmp_path, ticklake_home):
    server = FileServer()
    server.put(bh.book_path("linear", "XRPUSDT", DAY), BYBIT_OB500.read_bytes())
    trades = generated_trades(300)
    server.put(bh.trades_path("XRPUSDT", DAY), trades_csv_gz(trades))
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.data", b"\n".join(sample_lines()))
    data = bad.getvalue()
    server.put(bh.book_path("linear", "XRPUSDT", "2024-12-03"), data[: len(data) // 2])  # truncated archive
    cache = ticklake_home.root / "instruments.json"
    catalog().save(cache)
    with server.running():
        bulk = BulkHistoryResource(
            bybit_book_base_url=server.base_url,
            bybit_trades_base_url=server.base_url,
            download_dir=str(tmp_path / "dl"),
            instruments_cache=str(cache),
            per_host_rate=0,
            retries=1,
            backoff_base_s=0.001,
            backoff_cap_s=0.002,
        )
        yield bulk, LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse), trades


def rows_of(lake: LakeResource, et: EventType, day: str):
    lo, hi = day_bounds_us(day)
    t = lake.load_table(TABLES[et].identifier).scan().to_arrow()
    ts = t.column("exchange_ts").cast("int64")
    return t.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))


@pytest.mark.dagster
def test_bybit_history_through_dagster(served):
    bulk, lake, trades = served
    asset = build_bulk_history_asset([BOOK, TRADES])
    with dg.instance_for_test() as instance:

        def run(day, source):
            return dg.materialize(
                [asset],
                partition_key=dg.MultiPartitionKey({"date": day, "source": source}),
                resources={"lake": lake, "bulk": bulk},
                instance=instance,
                raise_on_error=False,
            )

        res = run(DAY, BOOK)
        assert res.success
        assert {e.check_name: e.passed for e in res.get_asset_check_evaluations()} == {
            CHECK_ROW_COUNT: True,
            CHECK_ID_GAPS: True,
            CHECK_SCHEMA: True,
        }
        snaps, deltas = rows_of(lake, EventType.BOOK_SNAPSHOT, DAY), rows_of(lake, EventType.BOOK_DELTA, DAY)
        assert snaps.num_rows == 1 and deltas.num_rows == 49
        assert set(deltas.column("symbol").to_pylist()) == {"XRP-USDT-PERP"}
        assert set(deltas.column("shard").to_pylist()) == {"bulk:" + BOOK}
        ids = sorted(deltas.column("event_id").to_pylist())

        again = run(DAY, BOOK)  # idempotent re-run
        assert again.success
        assert rows_of(lake, EventType.BOOK_SNAPSHOT, DAY).num_rows == 1
        assert sorted(rows_of(lake, EventType.BOOK_DELTA, DAY).column("event_id").to_pylist()) == ids

        res = run(DAY, TRADES)
        assert res.success and all(e.passed for e in res.get_asset_check_evaluations())
        got = rows_of(lake, EventType.TRADE, DAY)
        assert got.num_rows == len(trades)
        assert sorted(got.column("trade_id").to_pylist()) == sorted(r[6] for r in trades)

        missing = run("2024-12-02", BOOK)
        meta = {k: v.value for k, v in missing.get_asset_materialization_events()[0].materialization.metadata.items()}
        assert missing.success and meta["status"] == "missing"

        broken = run("2024-12-03", BOOK)
        assert not broken.success
        text = "\n".join(e.event_specific_data.error.to_string() for e in broken.all_events if e.is_step_failure)
        assert "corrupt zip archive" in text
        assert rows_of(lake, EventType.BOOK_DELTA, "2024-12-03").num_rows == 0

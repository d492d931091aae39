"""Binance public-data backfill: layout, parsers, stream-identical event_ids, downloads
(resume, retries, 404) and daily Dagster partitions over a real HTTP server on 127.0.0.1,
a real SQLite Iceberg catalog and a real Dagster instance.

The archives are built here in the exact data.binance.vision layout, from the genuine rows
in ../shared/samples/binance_vision plus generated rows, with real CHECKSUM files."""

from __future__ import annotations

import hashlib
import io
import random
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
from pyiceberg.expressions import EqualTo

from assets.bulk_history import (
    CHECK_ID_GAPS,
    CHECK_ROW_COUNT,
    CHECK_SCHEMA,
    build_bulk_history_asset,
    day_bounds_us,
    verify_day,
)
from collectors.backoff import BackoffPolicy
from collectors.bulk import binance_vision as bv
from collectors.bulk.common import BulkFileError, ChecksumMismatch, Target
from collectors.bulk.download import Downloader, DownloadError, HostRateLimiter
from collectors.bulk.sources import BulkSource, SourceError
from collectors.exchanges.binance import BinanceSpotAdapter, BinanceUsdmAdapter
from resources.bulk import BulkHistoryResource
from resources.lake import LakeResource
from schemas.model import EventType, Exchange, Market
from schemas.serde import encode
from schemas.tables import TABLES
from schemas.topics import Stage, event_topic
from streaming.lake.writer import LakeFileWriter, commit_files
from streaming.processors.instruments import InstrumentCatalog
from streaming.processors.normalizer import Normalizer
from tests.support.bulk_server import FileServer
from workloads.samples import BINANCE_VISION

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
warnings.filterwarnings("ignore", category=getattr(dg, "BetaWarning", Warning))

ISSUE_ROWS = BINANCE_VISION / "rows_quoted_in_binance-public-data_issues.txt"

SPOT_INFO = {
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "baseAssetPrecision": 8,
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "stepSize": "0.00001000"},
            ],
        }
    ]
}
UM_INFO = {
    "symbols": [
        {
            "symbol": s,
            "status": "TRADING",
            "baseAsset": b,
            "quoteAsset": "USDT",
            "contractType": "PERPETUAL",
            "quantityPrecision": 3,
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": tick},
                {"filterType": "LOT_SIZE", "stepSize": "0.001"},
            ],
        }
        for s, b, tick in (("BTCUSDT", "BTC", "0.10"), ("ETHUSDT", "ETH", "0.01"))
    ]
}


def catalog() -> InstrumentCatalog:
    cat = InstrumentCatalog()
    cat.load_exchange_info(Exchange.BINANCE, Market.SPOT, SPOT_INFO)
    cat.load_exchange_info(Exchange.BINANCE, Market.PERP, UM_INFO)
    return cat


def target(source_key: str) -> Target:
    src = BulkSource.parse(source_key)
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


def issue_block(title_start: str) -> list[str]:
    """Data lines (and header line, if quoted) of one block of the genuine issue rows."""
    lines = ISSUE_ROWS.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"## {title_start}"))
    out = []
    for ln in lines[start + 1 :]:
        if ln.startswith("## "):
            break
        if ln and not ln.startswith("#"):
            out.append(ln)
    return out


# -- archive building -------------------------------------------------------------------------


def zip_of(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, text)
    return buf.getvalue()


def checksum_of(data: bytes, name: str) -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def publish(
    server: FileServer, vf: bv.VisionFile, csv_text: str, *, checksum: bytes | None = None, corrupt: bool = False
) -> bytes:
    data = zip_of(vf.file_name.replace(".zip", ".csv"), csv_text)
    if corrupt:  # damage the compressed member: the archive still opens, its CRC fails
        mid = len(data) // 3
        data = data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 40]) + data[mid + 40 :]
    server.put(vf.path, data)
    server.put(vf.checksum_path, checksum if checksum is not None else checksum_of(data, vf.file_name))
    return data


def day_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) * 1000


def spot_trade_rows(
    day: str, n: int, first_id: int, *, micros: bool, seed: int, skip: int | None = None
) -> list[tuple[int, str, str, str, int, str, str]]:
    """Generated spot trades in the genuine 7-column shape (`252195,0.00005717,383.00000000,
    0.02189611,1601560817800,False,True`); times in ms, or µs with sub-ms digits."""
    rng = random.Random(seed)
    rows = []
    px = 9_400_000
    tid = first_id
    for i in range(n):
        if skip is not None and i == skip:
            tid += 1  # the venue's file has a hole here
        px += rng.randint(-3, 3)
        qty = rng.randint(1, 50_000)
        ms = day_ms(day) + i * 250 + rng.randint(0, 200)
        t = ms * 1000 + rng.randint(0, 999) if micros else ms
        rows.append(
            (
                tid,
                f"{px // 100}.{px % 100:02d}000000",
                f"0.{qty:08d}",
                "1.00000000",
                t,
                rng.choice(("True", "False")),
                "True",
            )
        )
        tid += 1
    return rows


def csv_text(rows, header: str | None = None) -> str:
    body = "\n".join(",".join(str(c) for c in r) for r in rows) + "\n"
    return (header + "\n" + body) if header else body


# -- layout, checksums, parsers -----------------------------------------------------------------


def test_layout_matches_data_binance_vision():
    assert (
        bv.VisionFile("spot", "trades", "BTCUSDT", "2024-12-31").url("https://m/")
        == "https://m/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-12-31.zip"
    )
    assert (
        bv.VisionFile("um", "aggTrades", "BTCUSDT", "2023-05", period="monthly").path
        == "data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2023-05.zip"
    )
    # the genuine paths quoted in the sample README
    assert (
        bv.VisionFile("spot", "klines", "BTCUSDT", "2023-10-27", interval="1h").path
        == "data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2023-10-27.zip"
    )
    assert (
        bv.VisionFile("cm", "klines", "BTCUSD_PERP", "2023-10-27", interval="1h").path
        == "data/futures/cm/daily/klines/BTCUSD_PERP/1h/BTCUSD_PERP-1h-2023-10-27.zip"
    )
    assert (
        bv.VisionFile("um", "bookDepth", "BTCUSDT", "2025-05-19").checksum_path
        == "data/futures/um/daily/bookDepth/BTCUSDT/BTCUSDT-bookDepth-2025-05-19.zip.CHECKSUM"
    )
    with pytest.raises(ValueError):
        bv.VisionFile("spot", "trades", "../etc", "2024-01-01")
    with pytest.raises(ValueError):
        bv.VisionFile("spot", "klines", "BTCUSDT", "2024-01-01")  # no interval


def test_checksum_cells_of_the_genuine_replacement_log(tmp_path):
    lines = (
        (BINANCE_VISION / "binance-public-data_updates_2022-10-04_aggregate_trade_updates.head.csv")
        .read_text()
        .splitlines()
    )
    name, old, new = lines[1].split(",")
    digest, fname = bv.parse_checksum(new)
    assert fname == f"{name}.zip" and len(digest) == 64 and digest != bv.parse_checksum(old)[0]
    f = tmp_path / "x.zip"
    f.write_bytes(b"payload")
    assert bv.verify_checksum(f, checksum_of(b"payload", "x.zip"), "x.zip") == hashlib.sha256(b"payload").hexdigest()
    with pytest.raises(ChecksumMismatch, match="SHA-256 mismatch"):
        bv.verify_checksum(f, new, None)
    with pytest.raises(ChecksumMismatch, match="names"):
        bv.verify_checksum(f, checksum_of(b"payload", "y.zip"), "x.zip")
    with pytest.raises(BulkFileError):
        bv.parse_checksum("not a checksum")


def test_genuine_rows_parse():
    # USD-M aggTrades WITH header, out of id order in the archive (issue #339)
    agg = issue_block("1.")
    p = bv.parse("\n".join(agg).encode(), "aggTrades")
    assert p.header and p.rows == 10 and p.was_sorted and p.time_unit == "ms"
    ids = p.table.column("agg_trade_id").to_pylist()
    assert ids == sorted(ids) and ids[0] == 1715206948
    conv = bv.to_envelopes(p, target("binance.um.BTCUSDT.aggTrades"))
    assert not conv.rejects and conv.rows == 10
    first = conv.envelopes[EventType.TRADE][0]
    # 1715206948,29223.0,0.639,3643221425,3643221428,1682899200101,false -> buyer was taker
    assert (first.seq, first.trade.px, first.trade.qty, first.trade.first_trade_id, first.trade.last_trade_id) == (
        1715206948,
        292230,
        639,
        3643221425,
        3643221428,
    )
    assert first.exchange_ts == 1682899200101000 and first.trade.taker_side == 1  # SIDE_BUY
    sides = {e.seq: e.trade.taker_side for e in conv.envelopes[EventType.TRADE]}
    assert sides[1715206951] == 2  # is_buyer_maker true -> the taker sold

    # USD-M bookTicker (reporter quoted data rows; the header is added as the file has it)
    bt = issue_block("2.")
    header = "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"
    p = bv.parse((header + "\n" + "\n".join(bt)).encode(), "bookTicker")
    assert p.was_sorted and p.table.column("update_id").to_pylist() == sorted(int(r.split(",")[0]) for r in bt)
    conv = bv.to_envelopes(p, target("binance.um.ETHUSDT.bookTicker"))
    tk = conv.envelopes[EventType.TICKER][0]
    assert (tk.seq, tk.ticker.bid_px, tk.ticker.bid_qty, tk.ticker.ask_px, tk.ticker.ask_qty) == (
        3831603310013,
        247430,
        6009,
        247431,
        44757,
    )
    assert tk.exchange_ts == 1705276800000000

    # bookDepth WITH header (first data cell is a date, not a number) and klines both ways
    depth = bv.parse("\n".join(issue_block("3.")).encode(), "bookDepth")
    assert depth.header and depth.rows == 10
    assert depth.table.column("percentage").to_pylist() == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]
    kl = issue_block("4.")
    spot_k = bv.parse("\n".join(kl[:3]).encode(), "klines")
    cm_k = bv.parse("\n".join(kl[3:]).encode(), "klines")
    assert not spot_k.header and cm_k.header and spot_k.rows == cm_k.rows == 3
    assert spot_k.table.column("open_time").to_pylist() == cm_k.table.column("open_time").to_pylist()
    ada = bv.parse((BINANCE_VISION / "nautilus_ADABTC-1m-2021-11-27.csv").read_bytes(), "klines")
    assert ada.rows == 10 and not ada.header and ada.table.column("count").to_pylist()[0] == 79
    with pytest.raises(ValueError, match="no lake event table"):
        bv.to_envelopes(ada, target("binance.spot.BTCUSDT.trades"))

    # old USD-M trades (6 columns, no header) and spot trades (7 columns, Python-style booleans)
    um = bv.parse(issue_block("5.")[0].encode(), "trades")
    spot = bv.parse(issue_block("6.")[0].encode(), "trades")
    assert um.table.num_columns == 6 + 1 and spot.table.num_columns == 7 + 1  # + time_us
    assert spot.table.column("is_buyer_maker").to_pylist() == ["False"]


def test_header_and_time_unit_variants_parse_identically():
    day = "2025-01-01"
    ms_rows = spot_trade_rows(day, 200, 4_000_000, micros=False, seed=5)
    us_rows = [r[:4] + (r[4] * 1000 + (r[0] % 997),) + r[5:] for r in ms_rows]  # same trades, µs with sub-ms
    header = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"
    variants = {
        "ms, no header": csv_text(ms_rows),
        "ms, header": csv_text(ms_rows, header),
        "µs, no header": csv_text(us_rows),
        "µs, header": csv_text(us_rows, header),
        "µs, shuffled": csv_text(random.Random(1).sample(us_rows, len(us_rows))),
    }
    t = target("binance.spot.BTCUSDT.trades")
    results = {}
    for name, text in variants.items():
        p = bv.parse(text.encode(), "trades")
        conv = bv.to_envelopes(p, t)
        assert not conv.rejects, name
        results[name] = [
            (e.event_id, e.exchange_ts, e.seq, e.trade.px, e.trade.qty, e.trade.taker_side)
            for e in conv.envelopes[EventType.TRADE]
        ]
        assert p.time_unit == ("us" if name.startswith("µs") else "ms"), name
    base = results["ms, no header"]
    assert len(base) == 200 and all(v == base for v in results.values())
    # a file that mixes units (the switch inside one file) classifies per value
    mixed = csv_text(ms_rows[:100] + us_rows[100:])
    pm = bv.parse(mixed.encode(), "trades")
    assert pm.time_unit == "mixed"
    assert [e.event_id for e in bv.to_envelopes(pm, t).envelopes[EventType.TRADE]] == [r[0] for r in base]


def test_event_ids_equal_the_streams():
    """The same venue event through the live path (adapter -> raw envelope -> normalizer) and
    through the bulk file gets the same lake event_id."""
    norm = Normalizer(catalog())
    off = [0]

    def via_stream(adapter, frame: str, recv_us: int):
        res = adapter.on_frame(frame, recv_us)
        assert not res.dead_letters, res.dead_letters
        env = res.events[0]
        rec = encode(env)
        topic = event_topic(
            Stage.RAW,
            Market(adapter.market_of(env.native_symbol)),
            EventType.TRADE if env.WhichOneof("payload") == "trade" else EventType.TICKER,
            Exchange.BINANCE,
        )
        off[0] += 1
        o = norm.process(topic, 0, off[0], rec.value, rec.headers)
        assert o.kind == "ok", o.reason
        return o.env

    # spot trade of 2025 (file in µs with sub-ms digits; the websocket says ms)
    ms = day_ms("2025-01-01") + 12_345
    file_row = f"4000001,94012.34000000,0.01230000,1156.35,{ms * 1000 + 678},True,True\n"
    bulk = bv.to_envelopes(bv.parse(file_row.encode(), "trades"), target("binance.spot.BTCUSDT.trades"))
    frame = (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":4000001,'
        '"p":"94012.34000000","q":"0.01230000","T":%d,"m":true,"M":true}}' % (ms + 1, ms)
    )
    stream = via_stream(BinanceSpotAdapter(shard="c0"), frame, (ms + 5) * 1000)
    assert stream.event_id == bulk.envelopes[EventType.TRADE][0].event_id

    # USD-M aggTrade, genuine row of issue #339
    row = issue_block("1.")[1]
    a, p, q, f, last, ts, m = row.split(",")
    bulk = bv.to_envelopes(bv.parse(row.encode(), "aggTrades"), target("binance.um.BTCUSDT.aggTrades"))
    frame = (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":%s,"a":%s,"s":"BTCUSDT","p":"%s",'
        '"q":"%s","f":%s,"l":%s,"T":%s,"m":%s}}' % (ts, a, p, q, f, last, ts, m)
    )
    stream = via_stream(BinanceUsdmAdapter(shard="c1"), frame, int(ts) * 1000 + 900)
    assert stream.event_id == bulk.envelopes[EventType.TRADE][0].event_id

    # USD-M bookTicker, genuine row of issue #305 (the websocket prints fewer zeros)
    row = issue_block("2.")[0]
    u, _b, _bq, _ak, _aq, tt, et = row.split(",")
    bulk = bv.to_envelopes(bv.parse(row.encode(), "bookTicker"), target("binance.um.ETHUSDT.bookTicker"))
    frame = (
        '{"stream":"ethusdt@bookTicker","data":{"e":"bookTicker","u":%s,"s":"ETHUSDT","b":"2474.30",'
        '"B":"6.009","a":"2474.31","A":"44.757","T":%s,"E":%s}}' % (u, tt, et)
    )
    adapter = BinanceUsdmAdapter(shard="c1")
    adapter.snapshot_levels(adapter.state("ETHUSDT"), [["2474.30", "6.009"]], [])  # the book snapshot fixed the scales
    stream = via_stream(adapter, frame, int(et) * 1000 + 900)
    assert stream.event_id == bulk.envelopes[EventType.TICKER][0].event_id


def test_off_grid_and_malformed_rows_are_rejected_with_reasons():
    t = target("binance.spot.BTCUSDT.trades")
    text = (
        "1,94000.01000000,0.01000000,1,1735689600000,True,True\n"
        "2,94000.01500000,0.01000000,1,1735689600001,True,True\n"  # off the 0.01 tick
        "3,94000.02000000,0.01000000,1,1735689600002,maybe,True\n"
    )  # not a boolean
    conv = bv.to_envelopes(bv.parse(text.encode(), "trades"), t)
    assert conv.rows == 1 and [r.row for r in conv.rejects] == [1, 2]
    assert "precision" in conv.rejects[0].reason or "off_grid" in conv.rejects[0].reason
    assert "is_buyer_maker" in conv.rejects[1].reason
    with pytest.raises(BulkFileError, match="columns"):
        bv.parse(b"1,2,3\n", "trades")


def test_source_keys():
    s = BulkSource.parse("binance.um.BTCUSDT.aggTrades")
    assert (s.exchange, s.lake_market, s.shard) == (Exchange.BINANCE, Market.PERP, "bulk:binance.um.BTCUSDT.aggTrades")
    assert BulkSource.parse("binance.um.BTCUSDT_250328.trades").lake_market is Market.FUTURE
    with pytest.raises(SourceError, match="no lake event table"):
        BulkSource.parse("binance.spot.BTCUSDT.klines")
    with pytest.raises(SourceError):
        BulkSource.parse("binance.spot.btc/../x.trades")


# -- downloads ---------------------------------------------------------------------------------


def fast_downloader(**kw) -> Downloader:
    return Downloader(
        backoff=BackoffPolicy(base_s=0.001, cap_s=0.002), sleep=lambda s: None, rng=random.Random(0), **kw
    )


def test_download_resume_retry_and_missing(tmp_path):
    server = FileServer()
    blob = bytes(random.Random(3).getrandbits(8) for _ in range(300_000))
    server.put("a.bin", blob)
    server.put("b.bin", blob[::-1])
    server.drop_after["a.bin"] = [100_000]  # the first response dies after 100 kB
    server.fail_with["b.bin"] = [503, 503]  # two transient errors first
    seen = []
    with server.running():
        dl = fast_downloader(chunk_bytes=16_384, progress=lambda u, d, t: seen.append((u, d, t)))
        r = dl.fetch(f"{server.base_url}/a.bin", tmp_path / "a.bin")
        assert r.status == "ok" and (tmp_path / "a.bin").read_bytes() == blob
        assert r.attempts == 2 and r.resumed_from >= 16_384
        ranges = server.requests_for("a.bin")
        assert ranges[0] is None and ranges[1] == f"bytes={r.resumed_from}-"
        assert not (tmp_path / "a.bin.part").exists()
        assert seen[-1][1:] == (300_000, 300_000)

        # a partial file left by an earlier run is resumed, not re-downloaded
        (tmp_path / "c.bin.part").write_bytes(blob[::-1][:123_456])
        r = dl.fetch(f"{server.base_url}/b.bin", tmp_path / "c.bin")
        assert r.status == "ok" and r.resumed_from == 123_456 and r.attempts == 3
        assert (tmp_path / "c.bin").read_bytes() == blob[::-1]
        assert server.requests_for("b.bin")[-1] == "bytes=123456-"

        assert dl.fetch(f"{server.base_url}/nope.bin", tmp_path / "n.bin").status == "missing"
        assert dl.fetch_bytes(f"{server.base_url}/nope.bin") is None
        server.fail_with["b.bin"] = [503] * 10
        with pytest.raises(DownloadError, match="giving up"):
            fast_downloader(retries=2).fetch(f"{server.base_url}/b.bin", tmp_path / "d.bin")

        # bounded concurrency: several files at once, one missing, all reported
        results = dl.fetch_many(
            [(f"{server.base_url}/a.bin", tmp_path / "m1"), (f"{server.base_url}/zzz", tmp_path / "m2")]
        )
        assert [x.status for x in results] == ["ok", "missing"]


def test_host_rate_limiter_spaces_requests_per_host():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = HostRateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        lim.acquire("data.binance.vision")
    lim.acquire("public.bybit.com")  # another host is not held back
    assert slept == [0.25] * 4
    assert HostRateLimiter(0).acquire("x") == 0.0


# -- Dagster backfill ----------------------------------------------------------------------------

SPOT = "binance.spot.BTCUSDT.trades"
UM_AGG = "binance.um.BTCUSDT.aggTrades"
DAYS_OK = ("2024-12-30", "2024-12-31", "2025-01-01")
DAY_404, DAY_CORRUPT, DAY_BADSUM = "2025-01-02", "2025-01-03", "2025-01-04"


@pytest.fixture
def archive(tmp_path, ticklake_home):
    server = FileServer()
    rows = {}
    for i, day in enumerate(DAYS_OK):
        rows[day] = spot_trade_rows(
            day, 400, 4_000_000 + i * 1000, micros=day >= "2025-01-01", seed=i, skip=17 if i == 1 else None
        )
        publish(server, bv.VisionFile("spot", "trades", "BTCUSDT", day), csv_text(rows[day]))
    bad = csv_text(spot_trade_rows(DAY_CORRUPT, 400, 9_000_000, micros=True, seed=9))
    publish(server, bv.VisionFile("spot", "trades", "BTCUSDT", DAY_CORRUPT), bad, corrupt=True)
    publish(
        server,
        bv.VisionFile("spot", "trades", "BTCUSDT", DAY_BADSUM),
        bad,
        checksum=f"{'ab' * 32}  BTCUSDT-trades-{DAY_BADSUM}.zip\n".encode(),
    )
    # USD-M aggTrades day: header as the genuine file has, rows shaped like the genuine ones
    header = issue_block("1.")[0]
    agg_rows = []
    t0 = day_ms("2024-12-31")
    for k in range(300):
        agg_rows.append(
            (
                2_500_000_000 + k,
                f"{94000 + k % 7}.{k % 10}",
                f"0.{(k % 900) + 1:03d}",
                5_000_000_000 + 2 * k,
                5_000_000_000 + 2 * k + 1,
                t0 + k * 1000,
                "true" if k % 3 else "false",
            )
        )
    shuffled = random.Random(4).sample(agg_rows, len(agg_rows))  # the archive is out of order
    publish(server, bv.VisionFile("um", "aggTrades", "BTCUSDT", "2024-12-31"), csv_text(shuffled, header))
    cache = ticklake_home.root / "instruments.json"
    catalog().save(cache)
    with server.running():
        bulk = BulkHistoryResource(
            binance_base_url=server.base_url,
            download_dir=str(tmp_path / "dl"),
            instruments_cache=str(cache),
            per_host_rate=0,
            retries=2,
            backoff_base_s=0.001,
            backoff_cap_s=0.002,
            timeout_s=10,
        )
        lake = LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)
        yield server, bulk, lake, rows, agg_rows, tmp_path


def materialize(instance, asset, lake, bulk, day, source) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        partition_key=dg.MultiPartitionKey({"date": day, "source": source}),
        resources={"lake": lake, "bulk": bulk},
        instance=instance,
        raise_on_error=False,
    )


def mat_meta(result) -> dict:
    mats = result.get_asset_materialization_events()
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].materialization.metadata.items()}


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def failure_text(result) -> str:
    return "\n".join(e.event_specific_data.error.to_string() for e in result.all_events if e.is_step_failure)


def lake_day(lake: LakeResource, day: str, market: str = "spot"):
    lo, hi = day_bounds_us(day)
    t = lake.load_table(TABLES[EventType.TRADE].identifier)
    rows = t.scan().to_arrow()
    ts = rows.column("exchange_ts").cast("int64")
    return rows.filter(
        pc.and_(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)), pc.equal(rows.column("market"), market))
    )


def streamed(rows) -> list:
    """The processed envelopes the live path makes of these trades (websocket ms times)."""
    norm = Normalizer(catalog())
    adapter = BinanceSpotAdapter(shard="collector-0")
    out = []
    for n, r in enumerate(rows):
        ms = r[4] // 1000 if r[4] >= bv.MICROS_THRESHOLD else r[4]
        frame = (
            '{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"%s",'
            '"q":"%s","T":%d,"m":%s,"M":true}}' % (ms + 1, r[0], r[1], r[2], ms, r[5].lower())
        )
        env = adapter.on_frame(frame, (ms + 3) * 1000).events[0]
        rec = encode(env)
        o = norm.process(
            event_topic(Stage.RAW, Market.SPOT, EventType.TRADE, Exchange.BINANCE), 0, n, rec.value, rec.headers
        )
        assert o.kind == "ok", o.reason
        out.append(o.env)
    return out


@pytest.mark.dagster
def test_backfill_date_range_through_dagster(archive):
    _server, bulk, lake, rows, agg_rows, tmp_path = archive
    asset = build_bulk_history_asset([SPOT, UM_AGG])
    with dg.instance_for_test() as instance:
        # the stream already holds 25 trades of the first day (same events, its own shard)
        stream_envs = streamed(rows[DAYS_OK[0]][100:125])
        lake.ensure_tables()
        from schemas.arrow_convert import envelopes_to_table

        trades = lake.load_table(TABLES[EventType.TRADE].identifier)
        commit_files(
            trades,
            LakeFileWriter(trades).write(envelopes_to_table(EventType.TRADE, stream_envs)),
            {"ticklake.writer": "test-stream"},
        )

        outcomes = {
            day: materialize(instance, asset, lake, bulk, day, SPOT)
            for day in DAYS_OK + (DAY_404, DAY_CORRUPT, DAY_BADSUM)
        }
        for day in DAYS_OK:
            res = outcomes[day]
            assert res.success, failure_text(res)
            meta = mat_meta(res)
            assert meta["status"] == "ok" and meta["file_rows"] == 400
            assert meta["time_unit"] == ("us" if day >= "2025" else "ms") and meta["header"] is False
            assert checks(res) == {CHECK_ROW_COUNT: True, CHECK_ID_GAPS: True, CHECK_SCHEMA: True}
            got = lake_day(lake, day)
            assert got.num_rows == 400 and len(set(got.column("event_id").to_pylist())) == 400
            assert sorted(got.column("seq").to_pylist()) == [r[0] for r in rows[day]]
        # progress is in the run log: download, parse and commit
        log = [e.message for e in instance.all_logs(outcomes[DAYS_OK[0]].run_id) if e.message]
        assert any("MB (100%)" in m for m in log), log
        assert any("parsed 400 rows" in m for m in log) and any("375 rows committed" in m for m in log)
        first = mat_meta(outcomes[DAYS_OK[0]])
        assert first["trades.held_by_other_source"] == 25 and first["trades.rows"] == 375
        shards = lake_day(lake, DAYS_OK[0]).column("shard").to_pylist()
        assert shards.count("collector-0") == 25 and shards.count("bulk:" + SPOT) == 375
        gap_check = next(e for e in outcomes[DAYS_OK[1]].get_asset_check_evaluations() if e.check_name == CHECK_ID_GAPS)
        gap_meta = {k: v.value for k, v in gap_check.metadata.items()}
        assert gap_meta["trades.gaps_in_file"] == 1 and gap_meta["trades.gaps_in_lake"] == 1

        # 404: recorded as missing, not a failure
        res = outcomes[DAY_404]
        assert res.success and mat_meta(res)["status"] == "missing"
        # corrupt archive and wrong checksum: that day fails, with the reason, and leaves nothing
        assert not outcomes[DAY_CORRUPT].success
        assert "corrupt zip archive" in failure_text(outcomes[DAY_CORRUPT])
        assert not outcomes[DAY_BADSUM].success
        text = failure_text(outcomes[DAY_BADSUM])
        assert "SHA-256 mismatch" in text and "deleted" in text
        assert not list((tmp_path / "dl").rglob(f"*{DAY_BADSUM}.zip*"))
        for day in (DAY_404, DAY_CORRUPT, DAY_BADSUM):
            assert lake_day(lake, day).num_rows == 0

        # re-running a day replaces exactly that day from that source
        before = lake_day(lake, DAYS_OK[1]).sort_by("event_id")
        other_days = {d: lake_day(lake, d).num_rows for d in DAYS_OK if d != DAYS_OK[1]}
        again = materialize(instance, asset, lake, bulk, DAYS_OK[1], SPOT)
        assert again.success and mat_meta(again)["reused_file"] is True
        after = lake_day(lake, DAYS_OK[1]).sort_by("event_id")
        assert after.column("event_id").to_pylist() == before.column("event_id").to_pylist()
        assert after.num_rows == 400
        assert {d: lake_day(lake, d).num_rows for d in other_days} == other_days

        # USD-M aggTrades with header, out of order in the archive
        res = materialize(instance, asset, lake, bulk, "2024-12-31", UM_AGG)
        assert res.success, failure_text(res)
        meta = mat_meta(res)
        assert meta["header"] is True and meta["was_sorted"] is True
        assert checks(res) == {CHECK_ROW_COUNT: True, CHECK_ID_GAPS: True, CHECK_SCHEMA: True}
        perp = lake_day(lake, "2024-12-31", "perp").sort_by("seq")
        assert perp.column("seq").to_pylist() == [r[0] for r in agg_rows]
        assert perp.column("taker_side").to_pylist() == ["sell" if r[6] == "true" else "buy" for r in agg_rows]

        # the checks see what the lake really holds: a row lost after the load fails them
        src = BulkSource.parse(SPOT)
        t = target(SPOT)
        day = DAYS_OK[2]
        trades = lake.load_table(TABLES[EventType.TRADE].identifier)
        held = lake_day(lake, day).sort_by("seq")
        ids = held.column("event_id").to_pylist()
        trades.delete(EqualTo("event_id", ids[200]))
        conv = bv.to_envelopes(bv.parse(csv_text(rows[day]).encode(), "trades"), t)
        lo, hi = day_bounds_us(day)
        got = {
            c.name: c.passed for c in verify_day(trades.refresh(), TABLES[EventType.TRADE], t, lo, hi, ids, conv, src)
        }
        assert got == {CHECK_ROW_COUNT: False, "accounting": True, CHECK_ID_GAPS: False, CHECK_SCHEMA: True}

        # the instance knows which partitions materialized (what the UI shows)
        keys = instance.get_materialized_partitions(asset.key)
        assert dg.MultiPartitionKey({"date": DAY_404, "source": SPOT}) in keys
        assert dg.MultiPartitionKey({"date": DAY_CORRUPT, "source": SPOT}) not in keys


def test_resumed_download_is_verified_by_checksum(archive):
    server, _bulk, _lake, _rows, _agg_rows, tmp_path = archive
    vf = bv.VisionFile("spot", "trades", "BTCUSDT", DAYS_OK[0])
    data = server.files[vf.path]
    dest = tmp_path / "dl2" / vf.path
    dest.parent.mkdir(parents=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data[: len(data) // 2])  # an interrupted earlier run
    got = bv.fetch_verified(vf, server.base_url, fast_downloader(), tmp_path / "dl2")
    assert got.status == "ok" and got.resumed_from == len(data) // 2 and dest.read_bytes() == data
    # a partial file from a different (since replaced) archive: the resume fails the checksum,
    # one whole-file attempt follows and succeeds
    dest.unlink()
    part.write_bytes(b"\x00" * (len(data) // 2))
    got = bv.fetch_verified(vf, server.base_url, fast_downloader(), tmp_path / "dl2")
    assert got.status == "ok" and got.resumed_from == 0 and dest.read_bytes() == data


def test_column_fast_path_equals_envelope_path():
    """to_rows (used by the asset) builds exactly envelopes_to_table(to_envelopes(...))."""
    from schemas.arrow_convert import envelopes_to_table

    spot = spot_trade_rows("2025-01-01", 300, 7_000_000, micros=True, seed=12)
    spot_text = csv_text(spot + [spot[5]] + [(spot[6][0] + 10_000, "1.001", *spot[6][2:])])  # a duplicate, an off-tick
    header = "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"
    cases = [
        (spot_text, "trades", SPOT),
        ("\n".join(issue_block("1.")), "aggTrades", "binance.um.BTCUSDT.aggTrades"),
        (header + "\n" + "\n".join(issue_block("2.")), "bookTicker", "binance.um.ETHUSDT.bookTicker"),
    ]
    for text, kind, key in cases:
        parsed = bv.parse(text.encode(), kind)
        slow = bv.to_envelopes(parsed, target(key))
        fast = bv.to_rows(parsed, target(key))
        et = bv.EVENT_TYPES[kind]
        assert fast.table(et).equals(envelopes_to_table(et, slow.envelopes[et])), kind
        assert (fast.rows, len(fast.rejects), fast.in_file_duplicates) == (
            slow.rows,
            len(slow.rejects),
            slow.in_file_duplicates,
        )
    assert fast.rows == 5
    spot_fast = bv.to_rows(bv.parse(spot_text.encode(), "trades"), target(SPOT))
    assert (spot_fast.rows, spot_fast.in_file_duplicates, len(spot_fast.rejects)) == (300, 1, 1)


@pytest.mark.broker
def test_stream_and_bulk_cover_a_day_once_through_the_real_sink(archive, tmp_path):
    """Both orders, with the real lake sink on a real broker: stream then bulk (the bulk load
    skips what the sink wrote), bulk then stream (the sink drops what the bulk load wrote)."""
    from runtime import kafka_config as kc
    from streaming.kafka.broker import EmbeddedBroker
    from streaming.lake.sink import LakeSink, SinkConfig
    from tests.support.lake import (
        create_sink_topics,
        open_home_catalog,
        produce,
        sink_topics,
    )

    _server, bulk, lake, rows, _agg, _tmp = archive
    asset = build_bulk_history_asset([SPOT])
    first, second = DAYS_OK[0], DAYS_OK[2]  # a ms day and a µs day
    topics = sink_topics()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b, dg.instance_for_test() as instance:
        create_sink_topics(b.bootstrap, topics, partitions=1)
        lake.ensure_tables()

        def run_sink() -> int:
            sink = LakeSink(
                kc.KafkaConnection(bootstrap_servers=b.bootstrap),
                open_home_catalog(bulk_home(lake)),
                SinkConfig(topics=topics, batch_max_records=500, batch_max_ms=200),
            )
            return sink.run(idle_exit_s=1.0).duplicates

        produce(b.bootstrap, streamed(rows[first][50:110]))
        assert run_sink() == 0
        res = materialize(instance, asset, lake, bulk, first, SPOT)
        assert res.success and mat_meta(res)["trades.held_by_other_source"] == 60
        assert lake_day(lake, first).num_rows == 400

        res = materialize(instance, asset, lake, bulk, second, SPOT)
        assert res.success and mat_meta(res)["trades.held_by_other_source"] == 0
        produce(b.bootstrap, streamed(rows[second][300:340]))
        assert run_sink() == 40  # the sink found them in the lake already
        got = lake_day(lake, second)
        assert got.num_rows == 400 and len(set(got.column("event_id").to_pylist())) == 400


def bulk_home(lake: LakeResource):
    from runtime.home import resolve_home

    return resolve_home(Path(lake.uri.removeprefix("sqlite:///")).parent)

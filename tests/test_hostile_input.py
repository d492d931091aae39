"""One bad input never takes a service down, never stops a connection quietly, and never makes
the published stream differ from the collector's book (issue 12). Each test here failed before
its fix; the randomized counterpart is tests/test_fuzz_adapters.py."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from collectors.config import ShardConfig
from collectors.runner import ShardRunner

DEEP = b'{"symbols":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
OKX_FUTURES_NO_DASH = json.dumps(
    {
        "code": "0",
        "msg": "",
        "data": [
            {
                "instType": "FUTURES",
                "instId": "BTCUSD",
                "instFamily": "BTC-USD",
                "uly": "BTC-USD",
                "ctVal": "100",
                "ctValCcy": "USD",
                "ctType": "inverse",
                "tickSz": "0.1",
                "lotSz": "1",
                "state": "live",
            },
            {
                "instType": "FUTURES",
                "instId": "BTC-USD-220527",
                "instFamily": "BTC-USD",
                "uly": "BTC-USD",
                "ctVal": "100",
                "ctValCcy": "USD",
                "ctType": "inverse",
                "tickSz": "0.1",
                "lotSz": "1",
                "state": "live",
            },
        ],
    }
)


# -- item 5: no crash loops ---------------------------------------------------------------------------


async def _start_with_body(exchange: str, market: str, symbol: str, path: str, body: bytes) -> ShardRunner:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(path, serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        cfg = ShardConfig("hostile", exchange, market, (symbol,), rest_url=f"http://127.0.0.1:{port}")
        shard = ShardRunner(cfg, producer_config={"bootstrap.servers": "127.0.0.1:9"})
        await shard.pool.start()
        try:
            await shard._load_instruments(timeout=10)
        finally:
            await shard.pool.close()
        return shard
    finally:
        await runner.cleanup()


def test_shard_start_survives_exchange_info_nested_too_deep():
    for ex, mk, sym, path in (
        ("bybit", "perp", "BTC-USDT-PERP", "/v5/market/instruments-info"),
        ("okx", "perp", "BTC-USDT-PERP", "/api/v5/public/instruments"),
        ("binance", "spot", "BTC-USDT", "/api/v3/exchangeInfo"),
    ):
        shard = asyncio.run(_start_with_body(ex, mk, sym, path, DEEP))
        assert shard.instruments == {}  # scales will be inferred from frames


def test_shard_start_survives_okx_futures_inst_id_without_dash():
    shard = asyncio.run(
        _start_with_body("okx", "future", "BTC-USD-220527", "/api/v5/public/instruments", OKX_FUTURES_NO_DASH.encode())
    )
    assert list(shard.instruments) == ["BTC-USD-220527"]  # the good entry is kept


# -- item 5/6: the normalizer dead-letters what it cannot represent, never crashes --------------------


def test_normalizer_dead_letters_overflow_negative_and_out_of_range_values():
    from schemas.model import EventType
    from streaming.processors.normalizer import Normalizer
    from tests.support.envelopes import envelope
    from tests.test_normalizer import _catalog, _raw, _with

    n = Normalizer(_catalog())
    cases = [  # (event type, mutation, expected reason code)
        (EventType.TICKER, lambda e: (setattr(e, "size_scale", 0), setattr(e.ticker, "bid_qty", -(2**62))), "range"),
        (EventType.FUNDING, lambda e: (setattr(e, "price_scale", 0), setattr(e.funding, "mark_px", -(2**62))), "range"),
        (
            EventType.MARK_PRICE,
            lambda e: (setattr(e, "price_scale", 0), setattr(e.mark_price, "index_px", 2**62)),
            "range",
        ),
        (EventType.FUNDING, lambda e: setattr(e.funding, "rate", 1_500_000_000_000), "range"),  # +150 %
        (EventType.FUNDING, lambda e: setattr(e.funding, "rate", -1_500_000_000_000), "range"),
        (EventType.TRADE, lambda e: setattr(e, "seq", -5), "range"),
        (EventType.BOOK_DELTA, lambda e: setattr(e.book_delta, "first_seq", -7), "range"),
    ]
    for i, (et, fn, code) in enumerate(cases):
        t, v, h = _raw(_with(envelope(et, 100 + i), fn), et=et)
        out = n.process(t, 0, i, v, h)
        assert out.kind == "dlq" and out.reason.split(":")[0] == code, (i, out)
    # a funding rate of -0.0125 % (the sample's) is fine
    t, v, h = _raw(envelope(EventType.FUNDING, 200), et=EventType.FUNDING)
    assert n.process(t, 0, 50, v, h).kind == "ok"


# -- item 5: `ticklake capture verify` on a bad file: exit 2, one line ---------------------------------


def _bad_captures(tmp_path):
    import gzip
    import io
    import zipfile

    from workloads.samples import BINANCE_SPOT_HFT, BYBIT_OB500

    good_gz = BINANCE_SPOT_HFT.read_bytes()
    files = {
        "truncated.gz": good_gz[:5000],  # gzip cut mid-stream
        "corrupt.gz": good_gz[:200] + bytes(range(256)) * 20 + good_gz[5320:9000],
        "bad.zip": b"PK\x03\x04" + b"\x00" * 60 + b"not a zip at all",
        "deep.jsonl": b'{"stream":' + b"[" * 50_000 + b"]" * 50_000 + b"}\n",
        "stream_not_string.jsonl": b'{"stream":["btcusdt@trade"],"data":{"e":"trade"}}\n',
        "stream_number.jsonl": b'{"stream":5,"data":{}}\n',
        "undecodable.ws.1.0": b"wss://stream.binance.com:9443/\xff\xfe <-> 1633998512.06\n1633998512.07: {}\n",
        "undecodable_url.http.0.0": b"https://api.binance.com/\xc3\x28?symbol=X -> 1633998512.1: {}\n",
        "hft_stream_list.gz": gzip.compress(b'1723161600000000000 {"stream":{"a":1},"data":{}}\n'),
    }
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.data", BYBIT_OB500.read_bytes()[:100])
    raw = bytearray(zbuf.getvalue())
    raw[40:60] = b"\xff" * 20  # corrupt deflate data
    files["corrupt_member.zip"] = bytes(raw)
    paths = []
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_capture_verify_exits_2_with_one_line_on_bad_files(tmp_path, capsys):
    from collectors.verify import main

    for p in _bad_captures(tmp_path):
        code = main(["capture", "verify", str(p)])
        err = capsys.readouterr().err.strip()
        assert code == 2, (p.name, code, err)
        assert err.startswith("ticklake: ") and "\n" not in err and len(err) < 400, (p.name, err)


# -- item 4: connections cannot die quietly ------------------------------------------------------------


def test_oversized_frame_and_a_failing_session_task_end_in_dead_letter_and_reconnect(kafka_broker):
    """A 2 MB non-JSON frame is dead-lettered clipped to what the broker accepts (size and
    SHA-256 of the whole kept) on a session that goes on; an exception raised while handling a
    frame ends that session with a counted reason and the shard reconnects and resyncs."""
    import hashlib

    from runtime.dlq import DLQ_RAW_MAX
    from tests.support.collectors import shard_dead_letters, wait_until
    from tests.test_collector_faults import check_books, run_synthetic

    big = "not json " + "x" * 2_000_000
    seen = {}

    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: feed.items > 300, 30)
        clients = feed.sim.live_clients()
        seen["clients"] = len(clients)
        for c in clients:
            c.offer(big)
        assert await wait_until(lambda: runner.stats.dead_letters >= 1, 20), "oversized frame never refused"
        orig = runner.on_frame

        def fail_once(worker, session, frame, ts):
            runner.on_frame = orig
            raise RuntimeError("injected handler failure")

        runner.on_frame = fail_once
        assert await wait_until(lambda: runner.stats.session_ends.get("error", 0) >= 1, 20)
        seen["reconnects"] = runner.stats.reconnects

    emu, runner, shard, events = run_synthetic(kafka_broker, "binance-spot", scenario, n_symbols=2, frames=2500)
    check_books(emu, shard, events)
    assert seen["reconnects"] >= 1 and runner.stats.session_ends["error"] == 1
    dls = [d for d in shard_dead_letters(kafka_broker.bootstrap, shard.name) if d.raw.startswith(b"not json")]
    assert len(dls) == seen["clients"] >= 1
    for dl in dls:
        assert len(dl.raw) == DLQ_RAW_MAX and dl.raw == big.encode()[:DLQ_RAW_MAX]
        assert f"of {len(big)} bytes, sha256 {hashlib.sha256(big.encode()).hexdigest()}" in dl.reason


# -- item 3: a frame is all or nothing -------------------------------------------------------------------


def _rebuilt(events):
    """Books from published BOOK_SNAPSHOT / BOOK_DELTA events alone (what consumers see)."""
    from orderbook import L2Book
    from schemas.model import EventType

    books = {}
    for e in events:
        if e.event_type == EventType.BOOK_SNAPSHOT.pb:
            b = books[e.native_symbol] = L2Book()
            b.apply_snapshot(
                [(x.px, x.qty) for x in e.book_snapshot.bids], [(x.px, x.qty) for x in e.book_snapshot.asks]
            )
        elif e.event_type == EventType.BOOK_DELTA.pb and e.native_symbol in books:
            d = e.book_delta
            books[e.native_symbol].apply([(x.px, x.qty) for x in d.bids], [(x.px, x.qty) for x in d.asks])
    return books


def _assert_stream_rebuilds(adapter, events):
    books = _rebuilt(events)
    for native, st in adapter.states.items():
        if st.book.synced:
            assert native in books, native
            assert (books[native].bids, books[native].asks) == (st.book.bids, st.book.asks), native


def _with_data(rec, **changes):
    from collectors.capture import Record

    obj = json.loads(rec.payload)
    obj["data"].update(changes)
    return Record(rec.recv_ts_us, rec.kind, rec.url, json.dumps(obj).encode())


def test_diff_refused_after_its_levels_changes_neither_book_nor_sequence():
    """A USD-M diff whose time field is bad was applied and its u taken before the refusal; the
    next diff passed the pu check and the published deltas no longer rebuilt the book."""
    from collectors.exchanges.binance import BinanceUsdmAdapter
    from tests.support.adapters import feed, records
    from workloads.samples import BINANCE_USDM_CF

    recs = records(BINANCE_USDM_CF)[:400]
    ad = BinanceUsdmAdapter(snapshot_depth=10**6)
    run = feed(ad, recs[:60])
    assert ad.book("SUSHIUSDT").synced
    i = next(
        i for i in range(60, 400) if b'"sushiusdt@depth' in recs[i].payload and json.loads(recs[i].payload)["data"]["b"]
    )
    seq_before = ad.book("SUSHIUSDT").seq
    bad = ad.on_frame(_with_data(recs[i], T="abc").payload, recs[i].recv_ts_us)
    assert bad.events == [] and "bad millisecond timestamp" in bad.dead_letters[0].reason
    assert [r.native_symbol for r in bad.resyncs] == ["SUSHIUSDT"]  # the update is lost: rebuild
    assert not ad.book("SUSHIUSDT").synced and seq_before
    run.results.append(bad)
    feed(ad, recs[i + 1 :], run)
    feed(ad, [r for r in recs[:60] if r.kind == "rest" and b"SUSHIUSDT" in r.url.encode()], run)  # re-fetch
    _assert_stream_rebuilds(ad, run.events)


def test_buffered_diff_with_a_string_u_does_not_break_the_snapshot():
    from collectors.exchanges.binance import BinanceSpotAdapter
    from tests.support.adapters import feed, records
    from workloads.samples import BINANCE_SPOT_CF

    recs = records(BINANCE_SPOT_CF)[:14]
    first = json.loads(recs[0].payload)["data"]
    # numeric string: the venue's number in another JSON type; converted when it arrives
    ad = BinanceSpotAdapter()
    run = feed(ad, [_with_data(recs[0], u=str(first["u"]))] + recs[1:])
    assert run.dead_letters == [] and ad.book("NKNUSDT").synced
    _assert_stream_rebuilds(ad, run.events)
    # not a number: refused on arrival with its own reason, the snapshot still applies
    ad = BinanceSpotAdapter()
    run = feed(ad, [_with_data(recs[0], u="abc")] + recs[1:])
    (dl,) = run.dead_letters
    assert "final update id u" in dl.reason and "malformed JSON" not in dl.reason
    assert ad.book("NKNUSDT").synced


def test_a_refused_frame_does_not_widen_the_scale():
    from collectors.exchanges.binance import BinanceSpotAdapter

    ad = BinanceSpotAdapter()
    trade = {
        "stream": "btcusdt@trade",
        "data": {
            "e": "trade",
            "E": 1,
            "s": "BTCUSDT",
            "t": 9,
            "p": "0.000000000000000001",
            "q": "abc",
            "T": 2,
            "m": True,
        },
    }
    assert ad.on_frame(json.dumps(trade), 3).dead_letters
    trade["data"].update(p="61737.63000000", q="0.02000000")
    res = ad.on_frame(json.dumps(trade), 3)
    assert res.dead_letters == [] and res.events[0].price_scale == 8


def test_one_odd_early_value_does_not_make_the_book_unrepresentable():
    """Without exchange info, a trade priced with 18 decimals before the first snapshot widened
    the unlocked scale to 18; the snapshot then overflowed int64 and the book never synced."""
    from collectors.exchanges.binance import BinanceSpotAdapter
    from tests.support.adapters import feed, records
    from workloads.samples import BINANCE_SPOT_HFT

    recs = records(BINANCE_SPOT_HFT)[:40]
    ad = BinanceSpotAdapter()
    odd = {
        "stream": "btcusdt@trade",
        "data": {
            "e": "trade",
            "E": 1,
            "s": "BTCUSDT",
            "t": 9,
            "p": "0.000000000000000001",
            "q": "1",
            "T": 2,
            "m": True,
        },
    }
    assert ad.on_frame(json.dumps(odd), 1).dead_letters == []
    snap = next(i for i, r in enumerate(recs) if r.kind == "rest")
    run = feed(ad, recs[: snap + 1])  # (bookTickers before it are refused: scale 18)
    assert ad.book("BTCUSDT").synced
    later = feed(ad, recs[snap + 1 :])
    assert later.dead_letters == []
    _assert_stream_rebuilds(ad, run.events + later.events)


def test_frames_for_unsubscribed_symbols_are_dead_lettered_and_not_tracked():
    from collectors.exchanges.binance import BinanceSpotAdapter
    from collectors.exchanges.okx import OkxAdapter
    from tests.support.adapters import feed, records
    from workloads.samples import BINANCE_SPOT_CF, OKX_TARDIS_FUT

    ad = BinanceSpotAdapter(subscribed=["NKNUSDT"])
    run = feed(ad, records(BINANCE_SPOT_CF))
    assert set(ad.states) == {"NKNUSDT"} and ad.book("NKNUSDT").synced
    assert run.dead_letters and all("not subscribed" in d.reason for d in run.dead_letters)
    # per-instType liquidation channels report every instrument: ignored and counted, not dead letters
    ok = OkxAdapter(subscribed=["BTC-USDT-SWAP"])
    liq = [r for r in records(OKX_TARDIS_FUT) if b"liquidation-orders" in r.payload]
    run = feed(ok, liq)
    assert run.dead_letters == [] and ok.states == {} and ok.ignored["liquidation:not_subscribed"] == len(liq)


# -- item 6: range checks at the collector --------------------------------------------------------------


def test_funding_rates_beyond_ten_percent_and_negative_ids_are_refused():
    from collectors.exchanges.binance import BinanceSpotAdapter, BinanceUsdmAdapter
    from collectors.exchanges.okx import OkxAdapter
    from workloads.samples import BINANCE_USDM_TARDIS, OKX_TARDIS_SWAP

    frames = [json.loads(x) for x in BINANCE_USDM_TARDIS.read_text().splitlines() if x.strip()]
    mark = next(f for f in frames if f.get("stream") == "btcusdt@markPrice")
    mark["data"]["r"] = "1.50000000"  # +150 %
    res = BinanceUsdmAdapter().on_frame(json.dumps(mark), 1)
    assert res.events == [] and "beyond ±10 %" in res.dead_letters[0].reason
    okx = [json.loads(x) for x in OKX_TARDIS_SWAP.read_text().splitlines() if x.strip()]
    fund = next(f for f in okx if f.get("arg", {}).get("channel") == "funding-rate")
    fund["data"][0]["nextFundingRate"] = "-1.5"
    res = OkxAdapter().on_frame(json.dumps(fund), 1)
    assert res.events == [] and "beyond ±10 %" in res.dead_letters[0].reason
    trade = {
        "stream": "btcusdt@trade",
        "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "t": -5, "p": "61737.63", "q": "0.02", "T": 2, "m": True},
    }
    res = BinanceSpotAdapter().on_frame(json.dumps(trade), 3)
    assert res.events == [] and "trade id -5 out of range" in res.dead_letters[0].reason


# -- item 6: validators match whole values ------------------------------------------------------------


def test_validators_refuse_a_trailing_newline():
    """`$` matches before a final newline, so "BTC-USDT\\n" passed and became a Kafka key."""
    import pandas as pd
    import pytest

    from collectors.bulk.sources import BulkSource
    from collectors.config import ConfigError, ShardConfig
    from resources.artifacts import InvalidArtifactKey, validate_key
    from schemas.symbols import SymbolError, validate_canonical, validate_native
    from schemas.topics import prediction_topic
    from schemas.validation import _fullmatch
    from streaming.clickhouse.sql import ident
    from streaming.pragma.keys import FeedKey, PragmaKeyError

    for fn, arg, exc in (
        (validate_canonical, "BTC-USDT\n", SymbolError),
        (validate_native, "BTCUSDT\n", SymbolError),
        (validate_key, "charts/BTC-USDT\n/x.png", InvalidArtifactKey),
        (lambda m: prediction_topic("spot", m), "model\n", ValueError),
        (ident, "trades\n", ValueError),
        (BulkSource.parse, "binance.spot.BTCUSDT.trades\n", Exception),
        (lambda n: ShardConfig(n, "binance", "spot", ("BTC-USDT",)), "shard\n", ConfigError),
        (lambda t: FeedKey("spot", "unknown", "binance", t), "BTC\n", PragmaKeyError),
    ):
        with pytest.raises(exc):
            fn(arg)
    assert validate_canonical("BTC-USDT") == "BTC-USDT"
    check = _fullmatch(r"^[A-Z]+-[A-Z]+$")
    assert list(check(pd.DataFrame({"s": ["BTC-USDT", "BTC-USDT\n"]})["s"]).check_output) == [True, False]


def test_retry_after_is_capped_and_nonsense_ignored():
    from collectors.exchanges.binance_venue import SPOT_RATE_LIMIT as BINANCE_SPOT
    from collectors.ratelimit import MAX_RETRY_AFTER_S, IpRateLimiter, IpState, parse_retry_after

    assert parse_retry_after("inf", 0.0) == MAX_RETRY_AFTER_S
    assert parse_retry_after("1e30", 0.0) == MAX_RETRY_AFTER_S
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", 0.0) == MAX_RETRY_AFTER_S
    assert parse_retry_after("nan", 0.0) is None and parse_retry_after("-5", 0.0) == 0.0
    assert parse_retry_after("120", 0.0) == 120.0
    ip = IpRateLimiter("127.0.0.2", BINANCE_SPOT)
    verdict = ip.on_response(418, {"Retry-After": "inf"}, 1000.0)
    assert verdict.state is IpState.BANNED and verdict.retry_after_s == MAX_RETRY_AFTER_S
    assert ip.state(1000.0 + MAX_RETRY_AFTER_S + 1) is IpState.HEALTHY  # it comes back


# -- item 6: archive caps --------------------------------------------------------------------------------


def test_bulk_archives_that_expand_too_far_or_hold_many_members_are_refused(tmp_path):
    import gzip
    import zipfile

    import pytest

    from collectors.bulk.binance_vision import read_zip_csv
    from collectors.bulk.bybit_history import book_lines, read_trades_csv
    from collectors.bulk.common import BulkFileError

    bomb = tmp_path / "BTCUSDT-trades-2024-08-08.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("x.csv", "w") as f:
        block = b"0" * (1 << 20)
        for _ in range(100):  # 100 MiB of zeros -> ~100 KB compressed
            f.write(block)
    assert bomb.stat().st_size < 500_000
    with pytest.raises(BulkFileError, match="expands"):
        read_zip_csv(bomb)
    with pytest.raises(BulkFileError, match="expands"):
        list(book_lines(bomb))
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(40):
            z.writestr(f"d{i}/", b"")
        z.writestr("x.csv", b"1,2\n")
    with pytest.raises(BulkFileError, match="entries"):
        read_zip_csv(many)
    gz = gzip.compress(b"id,price\n" + b"0" * (100 << 20))
    with pytest.raises(BulkFileError, match="expands"):
        read_trades_csv(gz)
    # a normal gzip (two members, as concatenated files are) still reads
    header = b"timestamp,symbol,side,size,price,tickDirection,trdMatchID\n"
    ok = read_trades_csv(gzip.compress(header) + gzip.compress(b"1,BTCUSDT,Buy,1,2,PlusTick,abc\n"))
    assert ok.num_rows == 1


# -- item 6: credentials inside values are redacted --------------------------------------------------


def test_credentials_inside_values_are_redacted_in_catalog_metadata():
    from resources.lake import redacted_properties
    from runtime.redact import redact_value

    props = {
        "uri": "postgresql://ticklake:s3cr3t@db.internal:5432/catalog",
        "warehouse": "s3://bucket/wh",
        "s3.secret-access-key": "AKIAXXXX",
        "jdbc": "host=db user=u password='p w' dbname=c",
        "rest": "https://cat.example/v1?token=abc123&prefix=x",
        "plain": "https://host/x",
    }
    out = redacted_properties(props)
    text = repr(out)
    for secret in ("s3cr3t", "AKIAXXXX", "p w", "abc123"):
        assert secret not in text, out
    assert out["uri"] == "postgresql://ticklake:***@db.internal:5432/catalog"
    assert out["rest"] == "https://cat.example/v1?token=***&prefix=x" and out["plain"] == "https://host/x"
    assert out["warehouse"] == "s3://bucket/wh"
    assert redact_value("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_value("user@example.com") == "user@example.com"
    from runtime.kafka_config import redacted

    out = redacted(
        {
            "sasl.password": "pw1",
            "sasl.oauthbearer.token.endpoint.url": "https://u:pw2@idp/token",
            "bootstrap.servers": "b:9092",
        }
    )
    assert "pw1" not in repr(out) and "pw2" not in repr(out) and out["bootstrap.servers"] == "b:9092"

"""Binance spot and USD-M adapters on genuine captures, with faults built from genuine frames."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from collectors.capture import REST, WS, Record
from collectors.exchanges.binance import (
    BinanceSpotAdapter,
    BinanceUsdmAdapter,
    usdm_route,
)
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id
from schemas.model import EventType, Market
from tests.support.adapters import Run, book_levels_json, dec, feed, records, same_book
from workloads.samples import (
    BINANCE_SPOT_CF,
    BINANCE_SPOT_HFT,
    BINANCE_SPOT_TARDIS,
    BINANCE_USDM_CF,
    BINANCE_USDM_TARDIS,
)


def depth_frames(recs, symbol=None):
    """(index, data) of every depthUpdate in a record list, parsed independently of the adapter."""
    out = []
    for i, r in enumerate(recs):
        if r.kind == WS:
            d = json.loads(r.payload).get("data", {})
            if d.get("e") == "depthUpdate" and (symbol is None or d["s"] == symbol):
                out.append((i, d))
    return out


def snapshots(recs):
    return {
        r.url.split("symbol=")[1].split("&")[0]: (i, json.loads(r.payload))
        for i, r in enumerate(recs)
        if r.kind == REST
    }


def reference_book(snapshot, diffs, usdm=False):
    """Textbook rebuild with Decimals: the adapter's integer book must equal this."""
    last = snapshot["lastUpdateId"]
    bids = {Decimal(p): Decimal(q) for p, q in snapshot["bids"] if Decimal(q)}
    asks = {Decimal(p): Decimal(q) for p, q in snapshot["asks"] if Decimal(q)}
    for d in diffs:
        if (d["u"] < last) if usdm else (d["u"] <= last):
            continue
        for side, key in ((bids, "b"), (asks, "a")):
            for p, q in d[key]:
                if Decimal(q):
                    side[Decimal(p)] = Decimal(q)
                else:
                    side.pop(Decimal(p), None)
    return bids, asks


# -- genuine captures rebuild ------------------------------------------------------------------------


def test_spot_cryptofeed_all_symbols_bridge_and_match_reference():
    recs = records(BINANCE_SPOT_CF)
    ad = BinanceSpotAdapter()
    run = feed(ad, recs)
    snaps = snapshots(recs)
    assert set(snaps) == {"NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"} == set(ad.states)
    for sym, (_, snap) in snaps.items():
        st = ad.states[sym]
        diffs = [d for _, d in depth_frames(recs, sym)]
        last = snap["lastUpdateId"]
        applied = [d for d in diffs if d["u"] > last]
        assert st.stats.snapshots == 1 and st.stats.gaps == 0 and st.stats.crossed == 0
        assert st.stats.deltas_applied == len(applied) > 0
        assert st.stats.deltas_stale == len(diffs) - len(applied)
        assert st.stats.bbo_mismatched == 0
        # the first applied diff bridges lastUpdateId+1, and the adapter says so in its events
        first = applied[0]
        assert first["U"] <= last + 1 <= first["u"]
        deltas = run.of(EventType.BOOK_DELTA, sym)
        assert (deltas[0].book_delta.first_seq, deltas[0].seq) == (first["U"], first["u"])
        snap_ev = run.of(EventType.BOOK_SNAPSHOT, sym)
        assert len(snap_ev) == 1 and snap_ev[0].seq == last
        assert snap_ev[0].book_snapshot.reason == pb.SNAPSHOT_REASON_INITIAL
        # and consecutive applied diffs are contiguous
        for a, b in zip(deltas, deltas[1:]):
            assert b.book_delta.first_seq == a.seq + 1
        ref_bids, ref_asks = reference_book(snap, diffs)
        ours_b = {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.bids.items()}
        ours_a = {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.asks.items()}
        assert ours_b == ref_bids and ours_a == ref_asks
    assert run.dead_letters == [] and run.resyncs == []
    # one snapshot request per symbol, at its first diff
    assert sorted(q.native_symbol for q in run.requests) == sorted(snaps)


def test_spot_hftbacktest_stale_applied_and_book_ticker_agreement():
    recs = records(BINANCE_SPOT_HFT)
    ad = BinanceSpotAdapter()
    run = feed(ad, recs)
    st = ad.states["BTCUSDT"]
    assert (st.stats.deltas_stale, st.stats.deltas_applied, st.stats.gaps, st.stats.crossed) == (2, 3449, 0, 0)
    # every bookTicker received after the snapshot whose u equals an applied diff's u is compared
    snap_i, snap = snapshots(recs)["BTCUSDT"]
    applied_u = {d["u"] for _, d in depth_frames(recs) if d["u"] > snap["lastUpdateId"]}
    tickers_u = {
        json.loads(r.payload)["data"]["u"] for r in recs[snap_i:] if r.kind == WS and b"@bookTicker" in r.payload[:40]
    }
    assert st.stats.bbo_checked == len(applied_u & tickers_u) > 100
    assert st.stats.bbo_mismatched == 0
    assert len(run.of(EventType.TRADE)) == sum(1 for r in recs if b"@trade" in r.payload[:40])
    assert run.dead_letters == []


def test_usdm_cryptofeed_pu_chain():
    recs = records(BINANCE_USDM_CF)
    ad = BinanceUsdmAdapter()
    run = feed(ad, recs)
    snaps = snapshots(recs)
    assert set(snaps) == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
    for sym, (_, snap) in snaps.items():
        st = ad.states[sym]
        assert st.market is Market.PERP and st.symbol == sym.replace("USDT", "-USDT-PERP")
        assert (st.stats.snapshots, st.stats.gaps, st.stats.crossed, st.stats.bbo_mismatched) == (1, 0, 0, 0)
        deltas = run.of(EventType.BOOK_DELTA, sym)
        last = snap["lastUpdateId"]
        assert deltas[0].book_delta.first_seq <= last <= deltas[0].seq  # U <= lastUpdateId <= u
        for a, b in zip(deltas, deltas[1:]):
            assert b.book_delta.prev_seq == a.seq  # pu == previous u
        diffs = [d for _, d in depth_frames(recs, sym)]
        ref_bids, ref_asks = reference_book(snap, diffs, usdm=True)
        assert {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.bids.items()} == ref_bids
        assert {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.asks.items()} == ref_asks
    assert sum(s.stats.bbo_checked for s in ad.states.values()) > 0
    assert run.dead_letters == []


# -- injected faults -----------------------------------------------------------------------------------


def snapshot_record(ad_clean, sym, recv_ts, usdm=False) -> Record:
    """A REST depth snapshot of the clean run's book as of now (what the venue would answer)."""
    st = ad_clean.states[sym]
    bids, asks = book_levels_json(st.book, st.px.scale, st.sz.scale)
    body = json.dumps({"lastUpdateId": st.book.seq, "bids": bids, "asks": asks}).encode()
    path = "fapi.binance.com/fapi/v1/depth" if usdm else "api.binance.com/api/v3/depth"
    return Record(recv_ts, REST, f"https://{path}?symbol={sym}&limit=1000", body)


@pytest.mark.parametrize("usdm,path,sym", [(False, BINANCE_SPOT_CF, "NKNUSDT"), (True, BINANCE_USDM_CF, "SUSHIUSDT")])
def test_removed_frame_resyncs_only_that_symbol_and_recovers(usdm, path, sym):
    cls = BinanceUsdmAdapter if usdm else BinanceSpotAdapter
    recs = records(path)
    sym_diffs = depth_frames(recs, sym)
    drop_i = sym_diffs[40][0]  # a diff well after the sync
    serve_after = sym_diffs[45][0]  # the venue answers the new snapshot a few diffs later

    clean = cls()
    clean_run = feed(clean, recs[: serve_after + 1])
    snap = snapshot_record(clean, sym, recs[serve_after].recv_ts_us, usdm)
    feed(clean, recs[serve_after + 1 :], clean_run)

    faulty = cls()
    run = feed(faulty, [r for i, r in enumerate(recs[: serve_after + 1]) if i != drop_i])
    st = faulty.states[sym]
    assert st.stats.gaps == 1 and st.stats.resyncs == 1 and not st.book.synced
    assert [r.native_symbol for r in run.resyncs] == [sym]
    assert "gap" in run.resyncs[0].reason
    resync_requests = [q for q in run.requests if q.native_symbol == sym]
    assert len(resync_requests) == 2  # initial sync + the resync
    assert dict(resync_requests[-1].params)["symbol"] == sym
    after = feed(faulty, [snap] + recs[serve_after + 1 :])
    resnap = after.of(EventType.BOOK_SNAPSHOT, sym)
    assert len(resnap) == 1 and resnap[0].book_snapshot.reason == pb.SNAPSHOT_REASON_RESYNC
    assert after.of(EventType.BOOK_DELTA, sym), "deltas continue after the resync"
    # the resynced book ends identical to the clean one; every other symbol never noticed
    assert same_book(faulty.states[sym].book, clean.states[sym].book)
    for other, st_other in faulty.states.items():
        if other != sym:
            assert st_other.stats == clean.states[other].stats
            assert same_book(st_other.book, clean.states[other].book)
    assert faulty.states[sym].stats.gaps == 1 and faulty.states[sym].stats.crossed == 0


def test_malformed_json_is_a_dead_letter_and_nothing_else_changes():
    recs = records(BINANCE_SPOT_CF)
    i, _ = depth_frames(recs, "LRCBTC")[5]
    broken = Record(recs[i].recv_ts_us, WS, recs[i].url, recs[i].payload[: len(recs[i].payload) // 2])
    clean, faulty = BinanceSpotAdapter(), BinanceSpotAdapter()
    feed(clean, recs)
    run = feed(faulty, recs[:i] + [broken] + recs[i:])
    assert len(run.dead_letters) == 1
    dl = run.dead_letters[0]
    assert dl.reason.startswith("malformed JSON") and dl.raw == broken.payload
    for sym in clean.states:
        assert faulty.states[sym].stats == clean.states[sym].stats
        assert same_book(faulty.states[sym].book, clean.states[sym].book)
    assert faulty.dead_letter_count == 1


def test_crossed_book_is_refused_and_resyncs_that_symbol():
    recs = records(BINANCE_SPOT_CF)
    i, d = depth_frames(recs, "NKNUSDT")[30]
    ad = BinanceSpotAdapter()
    feed(ad, recs[:i])
    best_ask = ad.states["NKNUSDT"].book.best_ask_px()
    st = ad.states["NKNUSDT"]
    crossed_px = str(dec(best_ask, st.px.scale) + Decimal("0.0001"))
    bad = dict(d, b=[[crossed_px, "5.00000000"]], a=[])
    frame = json.dumps({"stream": "nknusdt@depth@100ms", "data": bad}).encode()
    res = ad.on_frame(frame, recs[i].recv_ts_us)
    assert res.events == []
    assert len(res.dead_letters) == 1 and "crossed" in res.dead_letters[0].reason
    assert [r.native_symbol for r in res.resyncs] == ["NKNUSDT"]
    assert [q.native_symbol for q in res.requests] == ["NKNUSDT"]
    assert st.stats.crossed == 1 and st.stats.resyncs == 1 and not st.book.synced
    assert all(s.book.synced for n, s in ad.states.items() if n != "NKNUSDT")


def test_unusable_numbers_and_unknown_shapes_are_dead_letters():
    recs = records(BINANCE_SPOT_CF)
    i, d = depth_frames(recs, "NKNUSDT")[10]
    ad = BinanceSpotAdapter()
    feed(ad, recs[:i])
    # a diff price with more decimals than the instrument's fixed scale: refused, and the book
    # (which now misses a venue update) is resynced rather than silently rounded
    d2 = dict(d, b=[[d["b"][0][0] + "1", d["b"][0][1]]] if d["b"] else [["0.351300001", "1.0"]])
    res = ad.on_frame(json.dumps({"stream": "nknusdt@depth@100ms", "data": d2}), 1)
    assert len(res.dead_letters) == 1 and "precision" in res.dead_letters[0].reason
    assert [r.native_symbol for r in res.resyncs] == ["NKNUSDT"]
    for frame, why in [
        (b"[1, 2, 3]", "expected an object"),
        (b'{"stream":"x@y","data":{"e":"somethingNew","s":"NKNUSDT"}}', "unknown message shape"),
        (
            b'{"stream":"x@trade","data":{"e":"trade","s":"NKNUSDT","t":1,"p":"1.0","q":"1.0","T":1,"m":"yes"}}',
            "not a boolean",
        ),
        (b'{"stream":"x@trade","data":{"e":"trade","s":"??","t":1}}', "unknown instrument"),
        (b'{"code":-1121,"msg":"Invalid symbol."}', "venue error -1121"),
    ]:
        res = ad.on_frame(frame, 2)
        assert res.events == [] and len(res.dead_letters) == 1, frame
        assert why in res.dead_letters[0].reason, res.dead_letters[0].reason
        assert res.dead_letters[0].raw == frame


def test_snapshot_older_than_the_stream_is_fetched_again():
    recs = records(BINANCE_SPOT_CF)
    snap_i, snap = snapshots(recs)["NKNUSDT"]
    diffs = depth_frames(recs, "NKNUSDT")
    # the stream as if it had started after lastUpdateId+1: the snapshot cannot bridge it
    late = [recs[i] for i, d in diffs if d["U"] > snap["lastUpdateId"] + 1][:3]
    ad = BinanceSpotAdapter()
    run = feed(ad, late + [recs[snap_i]])
    st = ad.states["NKNUSDT"]
    assert st.stats.snapshots == 0 and not st.book.synced
    assert [q.native_symbol for q in run.requests] == ["NKNUSDT", "NKNUSDT"]
    assert run.of(EventType.BOOK_SNAPSHOT) == [] and run.dead_letters == []


def test_event_ids_are_deterministic_and_ignore_the_receive_clock():
    recs = records(BINANCE_USDM_CF)[:400]
    a, b = BinanceUsdmAdapter(), BinanceUsdmAdapter()
    ev_a = feed(a, recs).events
    shifted = [Record(r.recv_ts_us + 12345, r.kind, r.url, r.payload) for r in recs]
    ev_b = feed(b, shifted).events
    assert [e.event_id for e in ev_a] == [e.event_id for e in ev_b]
    assert all(e.event_id == compute_event_id(e) for e in ev_a)
    assert len({e.event_id for e in ev_a}) == len(ev_a)
    assert ev_b[0].ingest_ts == ev_a[0].ingest_ts + 12345


def test_a_snapshot_that_never_comes_is_asked_for_again():
    recs = records(BINANCE_SPOT_CF)
    diffs = [recs[i] for i, _ in depth_frames(recs, "NKNUSDT")][:12]
    ad = BinanceSpotAdapter(max_buffer=5)
    run = feed(ad, diffs)
    # diff 1 -> request; the buffer overflows at diff 6 (keeps 2) and again at diff 10 -> re-requests
    assert [q.native_symbol for q in run.requests] == ["NKNUSDT"] * 3
    assert len(ad.states["NKNUSDT"].buffer) <= 5 and not ad.states["NKNUSDT"].book.synced


# -- event mapping (tardis-node fixture frames), values checked against the raw strings ------------


def tardis_frames(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_spot_trade_ticker_mapping():
    ad = BinanceSpotAdapter()
    frames = tardis_frames(BINANCE_SPOT_TARDIS)
    run = Run()
    for f in frames:
        if not f.get("generated"):
            run.results.append(ad.on_frame(json.dumps(f), 777))
    trades = run.of(EventType.TRADE)
    raw_trades = [f["data"] for f in frames if f["stream"].endswith("@trade")]
    assert len(trades) == len(raw_trades) == 2
    for env, raw in zip(trades, raw_trades):
        assert env.symbol == "BNB-BTC" and env.native_symbol == raw["s"]
        assert dec(env.trade.px, env.price_scale) == Decimal(raw["p"])
        assert dec(env.trade.qty, env.size_scale) == Decimal(raw["q"])
        assert env.trade.trade_id == str(raw["t"]) and env.seq == raw["t"]
        assert env.exchange_ts == raw["T"] * 1000 and env.ingest_ts == 777
        assert env.trade.taker_side == (pb.SIDE_SELL if raw["m"] else pb.SIDE_BUY)
    tickers = run.of(EventType.TICKER)
    bt = next(f["data"] for f in frames if f["stream"].endswith("@bookTicker"))
    env = next(t for t in tickers if t.native_symbol == bt["s"])
    assert env.seq == bt["u"]
    assert (
        dec(env.ticker.bid_px, env.price_scale),
        dec(env.ticker.bid_qty, env.size_scale),
        dec(env.ticker.ask_px, env.price_scale),
        dec(env.ticker.ask_qty, env.size_scale),
    ) == tuple(Decimal(bt[k]) for k in "bBaA")
    t24 = next(f["data"] for f in frames if f["stream"].endswith("@ticker"))
    env = next(t for t in tickers if t.native_symbol == t24["s"])
    assert dec(env.ticker.last_px, env.price_scale) == Decimal(t24["c"])
    assert dec(env.ticker.volume_24h, env.size_scale) == Decimal(t24["v"])
    assert dec(env.ticker.bid_px, env.price_scale) == Decimal(t24["b"])
    assert env.exchange_ts == t24["E"] * 1000


def test_usdm_mark_funding_liquidation_mapping():
    ad = BinanceUsdmAdapter()
    frames = tardis_frames(BINANCE_USDM_TARDIS)
    by_stream = {}
    for f in frames:
        if f.get("generated"):
            continue
        by_stream.setdefault(f["stream"], []).append((f["data"], ad.on_frame(json.dumps(f), 5)))
    # markPrice: MARK_PRICE + FUNDING on a perpetual
    raw, res = by_stream["btcusdt@markPrice"][0]
    (mark,) = [e for e in res.events if e.event_type == EventType.MARK_PRICE.pb]
    (fund,) = [e for e in res.events if e.event_type == EventType.FUNDING.pb]
    assert dec(mark.mark_price.mark_px, mark.price_scale) == Decimal(raw["p"])
    assert fund.funding.rate == int(Decimal(raw["r"]) * 10**12)
    assert fund.funding.next_funding_ts == raw["T"] * 1000 and fund.exchange_ts == raw["E"] * 1000
    assert dec(fund.funding.mark_px, fund.price_scale) == Decimal(raw["p"])
    raw, res = by_stream["btcusdt@markPrice@1s"][0]
    (mark,) = [e for e in res.events if e.event_type == EventType.MARK_PRICE.pb]
    assert dec(mark.mark_price.index_px, mark.price_scale) == Decimal(raw["i"])
    # a dated contract's mark price carries the estimated settle price and no funding
    raw, res = by_stream["btcbusd_210129@markPrice@1s"][0]
    assert [e.event_type for e in res.events] == [EventType.MARK_PRICE.pb]
    env = res.events[0]
    assert env.market == Market.FUTURE.pb and env.symbol == "BTC-BUSD-210129"
    assert dec(env.mark_price.estimated_settle_px, env.price_scale) == Decimal(raw["P"])
    # forceOrder -> LIQUIDATION (the order's side, price, filled quantity, status)
    raw, res = by_stream["btcusdt@forceOrder"][0]
    (liq,) = res.events
    o = raw["o"]
    assert liq.liquidation.side == pb.SIDE_BUY and liq.liquidation.order_status == o["X"]
    assert dec(liq.liquidation.px, liq.price_scale) == Decimal(o["p"])
    assert dec(liq.liquidation.qty, liq.size_scale) == Decimal(o["z"])
    assert liq.exchange_ts == o["T"] * 1000
    # aggTrade (this old frame has no aggregate id) and plain trades; insurance-fund fills are skipped
    raw, res = by_stream["btcusdt@aggTrade"][0]
    (tr,) = res.events
    assert (tr.trade.first_trade_id, tr.trade.last_trade_id, tr.trade.trade_id) == (raw["f"], raw["l"], str(raw["f"]))
    assert dec(tr.trade.px, tr.price_scale) == Decimal(raw["p"])
    raw, res = by_stream["ethusdt@trade"][0]
    assert raw["X"] == "INSURANCE_FUND" and res.events == [] and res.dead_letters == []
    assert ad.ignored["trade:INSURANCE_FUND"] == 1
    market_trades = [res for raw, res in by_stream["btcusdt@trade"]]
    assert sum(len(r.events) for r in market_trades) == 2


def test_server_shutdown_asks_for_a_new_connection():
    ad = BinanceSpotAdapter()
    res = ad.on_frame(b'{"stream":"btcusdt@depth","data":{"e":"serverShutdown","E":1747125563541}}', 1)
    assert res.reconnect == "serverShutdown" and res.dead_letters == []
    assert ad.on_frame(b'{"result":null,"id":1}', 1).dead_letters == []


def test_urls_route_usdm_streams_and_chunk():
    usdm = BinanceUsdmAdapter()
    urls = usdm.ws_urls("wss://fstream.binance.com", ["BTCUSDT", "ETHUSDT"])
    assert len(urls) == 2
    public, market = urls
    assert public.startswith("wss://fstream.binance.com/public/stream?streams=")
    assert market.startswith("wss://fstream.binance.com/market/stream?streams=")
    assert "btcusdt@depth@100ms" in public and "ethusdt@bookTicker" in public
    for s in ("btcusdt@aggTrade", "ethusdt@markPrice@1s", "btcusdt@forceOrder"):
        assert s in market and s not in public
    assert usdm_route("btcusdt@trade") == "public" and usdm_route("!forceOrder@arr") == "market"
    spot = BinanceSpotAdapter(streams=("depth@100ms", "trade"))
    syms = [f"S{i}USDT" for i in range(600)]  # 1200 streams -> 2 connections
    urls = spot.ws_urls("", syms)
    assert len(urls) == 2 and all(u.startswith("wss://stream.binance.com:9443/stream?streams=") for u in urls)
    assert sum(len(u.split("streams=")[1].split("/")) for u in urls) == 1200
    assert spot.ws_url("", ["BTCUSDT"]) == urls[0].split("?")[0] + "?streams=btcusdt@depth@100ms/btcusdt@trade"


def test_exchange_info_fixes_scales_and_base_quote():
    from collectors.exchanges.binance_instruments import parse_binance
    from schemas.instruments import by_native

    body = {
        "symbols": [
            {
                "symbol": "BTCUSDT",
                "baseAsset": "BTC",
                "quoteAsset": "USDT",
                "filters": [
                    {"filterType": "PRICE_FILTER", "tickSize": "0.01000000"},
                    {"filterType": "LOT_SIZE", "stepSize": "0.00001000"},
                ],
            }
        ]
    }
    specs = by_native(parse_binance(body, futures=False))  # no baseAssetPrecision: the step decides
    assert (specs["BTCUSDT"].price_scale, specs["BTCUSDT"].size_scale) == (2, 5)
    ad = BinanceSpotAdapter(instruments=specs)
    res = ad.on_frame(
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9,'
        b'"p":"61737.63000000","q":"0.02000000","T":2,"m":true}}',
        3,
    )
    (env,) = res.events
    assert (env.price_scale, env.size_scale, env.trade.px, env.trade.qty) == (2, 5, 6173763, 2000)
    res = ad.on_frame(
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9,'
        b'"p":"61737.63100000","q":"0.02000000","T":2,"m":true}}',
        3,
    )
    assert res.events == [] and "precision" in res.dead_letters[0].reason

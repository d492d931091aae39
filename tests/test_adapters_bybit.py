"""Bybit v5 adapter: the genuine ob500 history file, faults built from its frames, and the
event mapping of the tardis-node fixture frames checked against their raw strings."""

from __future__ import annotations

import json
from decimal import Decimal

from collectors.capture import WS, Record
from collectors.exchanges.bybit import BybitAdapter
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import EventType, Market
from tests.support.adapters import Run, book_levels_json, dec, feed, records, same_book
from workloads.samples import (
    BYBIT_OB500,
    BYBIT_TARDIS_ALLLIQ,
    BYBIT_TARDIS_DERIV,
    BYBIT_TARDIS_SPOT,
)


def reference_book(msgs):
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for m in msgs:
        if m["type"] == "snapshot":
            bids, asks = {}, {}
        for side, key in ((bids, "b"), (asks, "a")):
            for p, q in m["data"][key]:
                if Decimal(q):
                    side[Decimal(p)] = Decimal(q)
                else:
                    side.pop(Decimal(p), None)
    return bids, asks


def test_ob500_history_rebuilds_consistently():
    recs = records(BYBIT_OB500)
    msgs = [json.loads(r.payload) for r in recs]
    assert msgs[0]["type"] == "snapshot" and all(m["type"] == "delta" for m in msgs[1:])
    ad = BybitAdapter(category="linear")
    run = feed(ad, recs)
    st = ad.states["XRPUSDT"]
    assert st.symbol == "XRP-USDT-PERP" and st.market is Market.PERP
    assert st.stats.as_dict() | {"deltas_applied": 0} == {
        "snapshots": 1,
        "deltas_applied": 0,
        "deltas_stale": 0,
        "gaps": 0,
        "resyncs": 0,
        "crossed": 0,
        "bbo_checked": 0,
        "bbo_mismatched": 0,
        "checksum_ok": 0,
        "checksum_bad": 0,
    }
    assert st.stats.deltas_applied == len(msgs) - 1
    deltas = run.of(EventType.BOOK_DELTA)
    assert [d.seq for d in deltas] == [m["data"]["u"] for m in msgs[1:]]
    assert all(b.seq == a.seq + 1 for a, b in zip(deltas, deltas[1:]))
    assert [d.exchange_ts for d in deltas] == [m["ts"] * 1000 for m in msgs[1:]]
    snap = run.of(EventType.BOOK_SNAPSHOT)[0]
    assert snap.book_snapshot.reason == pb.SNAPSHOT_REASON_INITIAL and len(snap.book_snapshot.bids) == 500
    ref_b, ref_a = reference_book(msgs)
    assert {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.bids.items()} == ref_b
    assert {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.asks.items()} == ref_a
    assert not st.book.crossed() and run.dead_letters == [] and run.sends == []


def snapshot_record(clean: BybitAdapter, recv_ts: int) -> Record:
    st = clean.states["XRPUSDT"]
    bids, asks = book_levels_json(st.book, st.px.scale, st.sz.scale)
    msg = {
        "topic": "orderbook.500.XRPUSDT",
        "type": "snapshot",
        "ts": recv_ts // 1000,
        "data": {"s": "XRPUSDT", "b": bids, "a": asks, "u": st.book.seq, "seq": 1},
    }
    return Record(recv_ts, WS, "", json.dumps(msg).encode())


def test_missing_delta_resubscribes_that_book_and_recovers():
    recs = records(BYBIT_OB500)
    drop, serve_after = 20, 25
    clean = BybitAdapter(category="linear")
    feed(clean, recs[: serve_after + 1])
    snap = snapshot_record(clean, recs[serve_after].recv_ts_us)
    feed(clean, recs[serve_after + 1 :])

    ad = BybitAdapter(category="linear")
    run = feed(ad, [r for i, r in enumerate(recs[: serve_after + 1]) if i != drop])
    st = ad.states["XRPUSDT"]
    assert st.stats.gaps == 1 and st.stats.resyncs == 1 and not st.book.synced
    assert [r.native_symbol for r in run.resyncs] == ["XRPUSDT"]
    assert [json.loads(s.payload) for s in run.sends] == [
        {"op": "unsubscribe", "args": ["orderbook.500.XRPUSDT"]},
        {"op": "subscribe", "args": ["orderbook.500.XRPUSDT"]},
    ]
    # deltas that arrive before the fresh snapshot are not applied
    assert st.stats.deltas_stale == serve_after - drop - 1
    after = feed(ad, [snap] + recs[serve_after + 1 :])
    (resnap,) = after.of(EventType.BOOK_SNAPSHOT)
    assert resnap.book_snapshot.reason == pb.SNAPSHOT_REASON_RESYNC
    assert len(after.of(EventType.BOOK_DELTA)) == len(recs) - serve_after - 1
    assert same_book(st.book, clean.states["XRPUSDT"].book)


def test_u1_restart_overwrites_the_book_and_size_zero_deletes():
    recs = records(BYBIT_OB500)
    ad = BybitAdapter(category="linear")
    feed(ad, recs[:10])
    m = json.loads(recs[10].payload)
    m["data"]["u"] = 1  # service restart: this message is the whole book
    res = ad.on_frame(json.dumps(m), 1)
    (snap,) = res.events
    assert snap.event_type == EventType.BOOK_SNAPSHOT.pb and snap.seq == 1
    assert snap.book_snapshot.reason == pb.SNAPSHOT_REASON_VENUE
    st = ad.states["XRPUSDT"]
    kept_b = [p for p, q in m["data"]["b"] if Decimal(q)]
    assert sorted(dec(p, st.px.scale) for p in st.book.bids) == sorted(Decimal(p) for p in kept_b)
    n = json.loads(recs[11].payload)
    n["data"]["u"] = 2
    px, _ = st.book.best_bid()
    n["data"]["b"] = [[str(dec(px, st.px.scale)), "0"]]
    res = ad.on_frame(json.dumps(n), 2)
    assert [e.event_type for e in res.events] == [EventType.BOOK_DELTA.pb]
    assert px not in st.book.bids and st.book.seq == 2


def test_crossed_delta_and_malformed_frames_are_dead_letters():
    recs = records(BYBIT_OB500)
    ad = BybitAdapter(category="linear")
    feed(ad, recs[:5])
    st = ad.states["XRPUSDT"]
    m = json.loads(recs[5].payload)
    ask = st.book.best_ask_px()
    m["data"]["b"] = [[str(dec(ask, st.px.scale)), "100"]]
    res = ad.on_frame(json.dumps(m), 1)
    assert res.events == [] and "crossed" in res.dead_letters[0].reason
    assert st.stats.crossed == 1 and [r.native_symbol for r in res.resyncs] == ["XRPUSDT"]
    assert len(res.sends) == 2
    for frame, why in [
        (recs[6].payload[:-7], "malformed JSON"),
        (b'{"topic":"mystery.XRPUSDT","data":{}}', "unknown topic"),
        (b'{"success":false,"ret_msg":"error:handler not found","op":"subscribe"}', "rejected"),
        (b'{"topic":"tickers.XRPUSDT","type":"delta","ts":1,"data":{"symbol":"XRPUSDT"}}', "before any snapshot"),
    ]:
        res = ad.on_frame(frame, 1)
        assert res.events == [] and why in res.dead_letters[0].reason, res.dead_letters


def test_ping_every_20s_and_control_frames():
    ad = BybitAdapter(category="spot", depth=50)
    assert [s.payload for s in ad.keepalive(1_000_000).sends] == ['{"op":"ping"}']
    assert ad.keepalive(11_000_000).sends == []
    assert [s.payload for s in ad.keepalive(21_000_000).sends] == ['{"op":"ping"}']
    for pong in (
        b'{"success":true,"ret_msg":"pong","conn_id":"x","req_id":"","op":"ping"}',
        b'{"op":"pong","args":["1675418560633"],"conn_id":"x"}',
        b'{"success":true,"ret_msg":"","conn_id":"x","req_id":"","op":"subscribe"}',
    ):
        res = ad.on_frame(pong, 1)
        assert res.events == [] and res.dead_letters == []
    symbols = [f"C{i}USDT" for i in range(4)]  # 4 symbols x 3 topics = 12 args -> 2 requests
    sends = [json.loads(s.payload) for s in ad.on_open(symbols).sends]
    assert [len(s["args"]) for s in sends] == [10, 2]
    assert "orderbook.50.C0USDT" in sends[0]["args"] and all(s["op"] == "subscribe" for s in sends)
    assert ad.ws_url("wss://stream.bybit.com", symbols) == "wss://stream.bybit.com/v5/public/spot"
    lin = BybitAdapter(category="linear")
    assert "allLiquidation.BTCUSDT" in lin.topics("BTCUSDT")


def lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_trades_tickers_funding_mark_mapping_linear_inverse():
    ad = BybitAdapter(category="inverse")
    out = {}
    for line in lines(BYBIT_TARDIS_DERIV):
        msg = json.loads(line)
        out.setdefault(msg["topic"], []).append((msg, ad.on_frame(line, 9)))
    # publicTrade: one TRADE per item
    msg, res = out["publicTrade.BTCUSD"][0]
    assert len(res.events) == len(msg["data"]) == 3
    for env, t in zip(res.events, msg["data"]):
        assert env.symbol == "BTC-USD-PERP" and env.trade.trade_id == t["i"]
        assert dec(env.trade.px, env.price_scale) == Decimal(t["p"])
        assert dec(env.trade.qty, env.size_scale) == Decimal(t["v"])
        assert env.trade.taker_side == pb.SIDE_BUY and env.exchange_ts == t["T"] * 1000
    # tickers: snapshot, then a delta merged into it
    (snap_msg, snap_res), (delta_msg, delta_res) = out["tickers.BTCUSD"]
    kinds = [e.event_type for e in snap_res.events]
    assert kinds == [EventType.TICKER.pb, EventType.MARK_PRICE.pb, EventType.FUNDING.pb]
    tk, mark, fund = snap_res.events
    s = snap_msg["data"]
    assert dec(tk.ticker.last_px, tk.price_scale) == Decimal(s["lastPrice"])
    assert dec(tk.ticker.volume_24h, tk.size_scale) == Decimal(s["volume24h"])
    assert dec(mark.mark_price.mark_px, mark.price_scale) == Decimal(s["markPrice"])
    assert dec(mark.mark_price.index_px, mark.price_scale) == Decimal(s["indexPrice"])
    assert fund.funding.rate == int(Decimal(s["fundingRate"]) * 10**12)
    assert fund.funding.next_funding_ts == int(s["nextFundingTime"]) * 1000
    assert tk.seq == snap_msg["cs"] and tk.exchange_ts == snap_msg["ts"] * 1000
    d = delta_msg["data"]
    assert [e.event_type for e in delta_res.events] == [EventType.TICKER.pb, EventType.FUNDING.pb]
    tk2 = delta_res.events[0]
    assert dec(tk2.ticker.open_interest, tk2.size_scale) == Decimal(d["openInterest"])  # from the delta
    assert dec(tk2.ticker.last_px, tk2.price_scale) == Decimal(s["lastPrice"])  # kept from snapshot
    assert dec(tk2.ticker.bid_px, tk2.price_scale) == Decimal(d["bid1Price"])
    # a dated inverse contract: mark price but no funding (its fundingRate is "")
    (fut_msg, fut_res), _ = out["tickers.BTCUSDU23"]
    assert [e.event_type for e in fut_res.events] == [EventType.TICKER.pb, EventType.MARK_PRICE.pb]
    assert fut_res.events[0].market == Market.FUTURE.pb
    # legacy liquidation topic: position side Buy = a long was liquidated by a sell order
    msg, res = out["liquidation.GALAUSDT"][0]
    (liq,) = res.events
    assert liq.liquidation.side == pb.SIDE_SELL and msg["data"]["side"] == "Buy"
    assert dec(liq.liquidation.px, liq.price_scale) == Decimal(msg["data"]["price"])
    assert dec(liq.liquidation.qty, liq.size_scale) == Decimal(msg["data"]["size"])
    assert all(not r.dead_letters for v in out.values() for _, r in v)


def test_all_liquidation_mapping():
    ad = BybitAdapter(category="linear")
    (line,) = lines(BYBIT_TARDIS_ALLLIQ)
    res = ad.on_frame(line, 1)
    raw = json.loads(line)["data"][0]
    (liq,) = res.events
    assert liq.symbol == "PIPPIN-USDT-PERP" and liq.exchange_ts == raw["T"] * 1000
    assert raw["S"] == "Sell" and liq.liquidation.side == pb.SIDE_BUY  # a short liquidated by a buy
    assert dec(liq.liquidation.px, liq.price_scale) == Decimal(raw["p"])
    assert dec(liq.liquidation.qty, liq.size_scale) == Decimal(raw["v"])


def test_spot_trades_and_one_book_depth_per_symbol():
    ad = BybitAdapter(category="spot")
    run = Run()
    msgs = [json.loads(x) for x in lines(BYBIT_TARDIS_SPOT)]
    for m in msgs:
        run.results.append(ad.on_frame(json.dumps(m), 1))
    trades = run.of(EventType.TRADE)
    raw = [t for m in msgs if m["topic"].startswith("publicTrade") for t in m["data"]]
    assert len(trades) == len(raw) == 5
    for env, t in zip(trades, raw):
        assert env.market == Market.SPOT.pb and env.trade.trade_id == t["i"]
        assert dec(env.trade.px, env.price_scale) == Decimal(t["p"])
        assert env.trade.taker_side == (pb.SIDE_BUY if t["S"] == "Buy" else pb.SIDE_SELL)
    st = ad.states["BTCUSDT"]
    # orderbook.1 came first; orderbook.50 for the same symbol is another u sequence: not mixed in
    assert st.topic == "orderbook.1.BTCUSDT" and ad.ignored["orderbook:other_depth"] == 2
    assert st.stats.snapshots == 1 and st.stats.deltas_applied == 1 and st.stats.gaps == 0
    assert dec(st.book.best_bid()[1], st.sz.scale) == Decimal("0.166754")

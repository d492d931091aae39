"""OKX v5 adapter: the genuine cryptofeed capture (CRC32 checksums), faults built from its
frames (corrupted checksum, seqId chain breaks), and event mapping of tardis-node fixtures."""

from __future__ import annotations

import json
from decimal import Decimal

from collectors.capture import WS, Record
from collectors.exchanges.okx import OkxAdapter, okx_checksum
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import EventType, Market
from tests.support.adapters import dec, feed, records, same_book
from workloads.samples import OKX_CF, OKX_TARDIS_FUT, OKX_TARDIS_SPOT, OKX_TARDIS_SWAP

INSTRUMENTS = {"BTC-USD-220527": Market.FUTURE, "UNI-USD-SWAP": Market.PERP, "BTC-USDT": Market.SPOT}


def book_msgs(recs, inst=None):
    out = []
    for i, r in enumerate(recs):
        m = json.loads(r.payload)
        if "data" in m and m.get("arg", {}).get("channel") == "books" and (inst is None or m["arg"]["instId"] == inst):
            out.append((i, m))
    return out


def test_cryptofeed_capture_all_checksums_verify():
    recs = records(OKX_CF)
    ad = OkxAdapter()
    run = feed(ad, recs)
    msgs = book_msgs(recs)
    assert len(msgs) == 290
    assert sum(s.stats.checksum_ok for s in ad.states.values()) == 290
    for inst, market in INSTRUMENTS.items():
        st = ad.states[inst]
        n = len(book_msgs(recs, inst))
        assert st.market is market
        assert (st.stats.snapshots, st.stats.deltas_applied, st.stats.checksum_ok) == (1, n - 1, n)
        assert (st.stats.gaps, st.stats.crossed, st.stats.checksum_bad, st.stats.resyncs) == (0, 0, 0, 0)
        # independent rebuild with Decimals
        bids: dict[Decimal, Decimal] = {}
        asks: dict[Decimal, Decimal] = {}
        for _, m in book_msgs(recs, inst):
            d = m["data"][0]
            for side, key in ((bids, "bids"), (asks, "asks")):
                for lv in d[key]:
                    if Decimal(lv[1]):
                        side[Decimal(lv[0])] = Decimal(lv[1])
                    else:
                        side.pop(Decimal(lv[0]), None)
        assert {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.bids.items()} == bids
        assert {dec(p, st.px.scale): dec(q, st.sz.scale) for p, q in st.book.asks.items()} == asks
    deltas = run.of(EventType.BOOK_DELTA)
    assert all(d.book_delta.checksum != 0 for d in deltas)
    assert run.dead_letters == [] and run.sends == []
    assert {t.symbol for t in run.of(EventType.TRADE)} == {"BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"}


def with_checksum(rec: Record, delta: int) -> Record:
    m = json.loads(rec.payload)
    m["data"][0]["checksum"] += delta
    return Record(rec.recv_ts_us, rec.kind, rec.url, json.dumps(m).encode())


def snapshot_msg(clean: OkxAdapter, inst: str, recv_ts: int) -> Record:
    """What OKX pushes after a resubscribe: the current book, strings as the venue writes them."""
    st = clean.states[inst]
    sb, sa = st.levels_str
    bids = [[*sb[p], "0", "1"] for p, _ in st.book.top_bids(400)]
    asks = [[*sa[p], "0", "1"] for p, _ in st.book.top_asks(400)]
    cs = okx_checksum([tuple(b[:2]) for b in bids], [tuple(a[:2]) for a in asks])
    msg = {
        "arg": {"channel": "books", "instId": inst},
        "action": "snapshot",
        "data": [{"asks": asks, "bids": bids, "ts": str(recv_ts // 1000), "checksum": cs}],
    }
    return Record(recv_ts, WS, "", json.dumps(msg).encode())


def test_corrupted_checksum_resyncs_only_that_instrument():
    recs = records(OKX_CF)
    inst = "BTC-USDT"
    bad_i = book_msgs(recs, inst)[30][0]
    serve_after = book_msgs(recs, inst)[40][0]
    clean = OkxAdapter()
    feed(clean, recs[: serve_after + 1])
    snap = snapshot_msg(clean, inst, recs[serve_after].recv_ts_us)
    feed(clean, recs[serve_after + 1 :])

    ad = OkxAdapter()
    run = feed(ad, [with_checksum(r, 1) if i == bad_i else r for i, r in enumerate(recs[: serve_after + 1])])
    st = ad.states[inst]
    assert st.stats.checksum_bad == 1 and st.stats.resyncs == 1 and st.stats.gaps == 0
    assert [r.native_symbol for r in run.resyncs] == [inst] and "checksum" in run.resyncs[0].reason
    assert [json.loads(s.payload) for s in run.sends] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": inst}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": inst}]},
    ]
    (dl,) = run.dead_letters
    assert "checksum mismatch" in dl.reason and dl.native_symbol == inst
    after = feed(ad, [snap] + recs[serve_after + 1 :])
    (resnap,) = after.of(EventType.BOOK_SNAPSHOT)
    assert resnap.book_snapshot.reason == pb.SNAPSHOT_REASON_RESYNC
    assert st.stats.checksum_bad == 1 and after.dead_letters == []
    assert same_book(st.book, clean.states[inst].book)
    for other in INSTRUMENTS:
        if other != inst:
            assert ad.states[other].stats == clean.states[other].stats


def seq_chain(recs, inst, start=1000, step=3):
    """The genuine frames of one instrument with seqId/prevSeqId added as OKX sends them today."""
    out, last = [], None
    for _, m in book_msgs(recs, inst):
        d = m["data"][0]
        if m["action"] == "snapshot":
            d["prevSeqId"], d["seqId"] = -1, start
        else:
            d["prevSeqId"], d["seqId"] = last, last + step
        last = d["seqId"]
        out.append(m)
    return out


def frame(m) -> bytes:
    return json.dumps(m).encode()


def test_seqid_chain_heartbeat_reset_and_break():
    recs = records(OKX_CF)
    msgs = seq_chain(recs, "UNI-USD-SWAP")
    ad = OkxAdapter()
    for m in msgs[:20]:
        res = ad.on_frame(frame(m), 1)
        assert res.dead_letters == [] and res.resyncs == []
    st = ad.states["UNI-USD-SWAP"]
    last = msgs[19]["data"][0]
    # heartbeat: no levels, seqId == prevSeqId == previous seqId; the checksum is the book's own
    hb = {
        "arg": msgs[1]["arg"],
        "action": "update",
        "data": [
            {
                "asks": [],
                "bids": [],
                "ts": last["ts"],
                "checksum": last["checksum"],
                "prevSeqId": last["seqId"],
                "seqId": last["seqId"],
            }
        ],
    }
    res = ad.on_frame(frame(hb), 2)
    assert res.dead_letters == [] and res.resyncs == [] and st.book.seq == last["seqId"]
    # sequence reset (maintenance): seqId drops below prevSeqId, later messages chain from it
    nxt = json.loads(json.dumps(msgs[20]))
    nxt["data"][0]["prevSeqId"], nxt["data"][0]["seqId"] = last["seqId"], 5
    assert ad.on_frame(frame(nxt), 3).resyncs == [] and st.book.seq == 5
    n2 = json.loads(json.dumps(msgs[21]))
    n2["data"][0]["prevSeqId"], n2["data"][0]["seqId"] = 5, 9
    assert ad.on_frame(frame(n2), 4).resyncs == []
    # an update that does not continue the chain is a gap for this instrument only
    n3 = json.loads(json.dumps(msgs[22]))
    n3["data"][0]["prevSeqId"], n3["data"][0]["seqId"] = 12, 15
    res = ad.on_frame(frame(n3), 5)
    assert [r.native_symbol for r in res.resyncs] == ["UNI-USD-SWAP"] and "gap" in res.resyncs[0].reason
    assert st.stats.gaps == 1 and st.stats.checksum_ok == 23 and not st.book.synced  # 20 + hb + 2
    # a replayed (already applied) update is stale, not a gap
    ad2 = OkxAdapter()
    for m in msgs[:10]:
        ad2.on_frame(frame(m), 1)
    assert ad2.on_frame(frame(msgs[8]), 1).resyncs == []
    assert ad2.states["UNI-USD-SWAP"].stats.deltas_stale == 1


def test_control_frames_errors_and_keepalive():
    ad = OkxAdapter()
    assert ad.on_frame("pong", 1).dead_letters == []
    assert ad.on_frame(b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"}}', 1).dead_letters == []
    res = ad.on_frame(b'{"event":"error","code":"60012","msg":"Invalid request"}', 1)
    assert "venue error 60012" in res.dead_letters[0].reason
    res = ad.on_frame(b'{"event":"notice","code":"64008","msg":"The connection will soon be closed"}', 1)
    assert res.reconnect.startswith("notice 64008") and res.dead_letters == []
    for f, why in [
        (b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":[]', "malformed JSON"),
        (b'{"arg":{"channel":"unknown-thing","instId":"BTC-USDT"},"data":[]}', "unknown channel"),
        (
            b'{"arg":{"channel":"trades","instId":"BTC-USD-240329-60000-C"},"data":[{"instId":'
            b'"BTC-USD-240329-60000-C","tradeId":"1","px":"1","sz":"1","side":"buy","ts":"1"}]}',
            "unsupported OKX instrument",
        ),
    ]:
        res = ad.on_frame(f, 1)
        assert res.events == [] and why in res.dead_letters[0].reason
    # keep-alive: "ping" only after 20 s of silence
    ad = OkxAdapter()
    ad.on_frame("pong", 100_000_000)
    assert ad.keepalive(110_000_000).sends == []
    assert [s.payload for s in ad.keepalive(120_000_001).sends] == ["ping"]
    assert ad.keepalive(125_000_000).sends == []


def test_subscriptions_by_market():
    ad = OkxAdapter()
    (send,) = ad.on_open(["BTC-USDT", "ETH-USDT-SWAP", "BTC-USD-250328"]).sends
    args = json.loads(send.payload)["args"]
    assert {"channel": "funding-rate", "instId": "ETH-USDT-SWAP"} in args
    assert {"channel": "mark-price", "instId": "BTC-USD-250328"} in args
    assert {"channel": "funding-rate", "instId": "BTC-USDT"} not in args
    assert [a for a in args if a["channel"] == "liquidation-orders"] == [
        {"channel": "liquidation-orders", "instType": "FUTURES"},
        {"channel": "liquidation-orders", "instType": "SWAP"},
    ]
    assert ad.ws_url("", []) == "wss://ws.okx.com:8443/ws/v5/public"


def fixture(path):
    return [line for line in path.read_text().splitlines() if line.strip() and '"generated":true' not in line]


def test_trade_ticker_mapping_spot():
    ad = OkxAdapter()
    out = {json.loads(x)["arg"]["channel"]: (json.loads(x), ad.on_frame(x, 3)) for x in fixture(OKX_TARDIS_SPOT)}
    msg, res = out["trades"]
    (tr,) = res.events
    t = msg["data"][0]
    assert tr.symbol == "CRV-USDT" and tr.market == Market.SPOT.pb and tr.trade.trade_id == t["tradeId"]
    assert dec(tr.trade.px, tr.price_scale) == Decimal(t["px"]) and dec(tr.trade.qty, tr.size_scale) == Decimal(t["sz"])
    assert tr.trade.taker_side == pb.SIDE_BUY and tr.exchange_ts == int(t["ts"]) * 1000
    msg, res = out["trades-all"]
    assert res.events[0].symbol == "BSV-USDT"
    msg, res = out["tickers"]
    (tk,) = res.events
    t = msg["data"][0]
    for field, key, scale in (
        ("bid_px", "bidPx", tk.price_scale),
        ("bid_qty", "bidSz", tk.size_scale),
        ("ask_px", "askPx", tk.price_scale),
        ("ask_qty", "askSz", tk.size_scale),
        ("last_px", "last", tk.price_scale),
        ("volume_24h", "vol24h", tk.size_scale),
    ):
        assert dec(getattr(tk.ticker, field), scale) == Decimal(t[key]), field


def test_funding_mark_bbo_mapping_swap():
    ad = OkxAdapter()
    results = [(json.loads(x), ad.on_frame(x, 3)) for x in fixture(OKX_TARDIS_SWAP)]
    fund = [(m, r) for m, r in results if m["arg"]["channel"] == "funding-rate"]
    (m, r), (m_sos, r_sos) = fund
    (env,) = r.events
    d = m["data"][0]
    assert env.symbol == "WNCG-USDT-PERP" and env.event_type == EventType.FUNDING.pb
    assert env.funding.rate == int(Decimal(d["fundingRate"]) * 10**12)
    assert env.funding.predicted_rate == int(Decimal(d["nextFundingRate"]) * 10**12)
    assert env.funding.next_funding_ts == int(d["fundingTime"]) * 1000
    # a funding message without the rate itself is kept in the DLQ, not published as rate 0
    assert r_sos.events == [] and "no fundingRate" in r_sos.dead_letters[0].reason
    (m, r) = next((m, r) for m, r in results if m["arg"]["channel"] == "mark-price")
    (env,) = r.events
    assert dec(env.mark_price.mark_px, env.price_scale) == Decimal(m["data"][0]["markPx"])
    (m, r) = next((m, r) for m, r in results if m["arg"]["channel"] == "bbo-tbt")
    (env,) = r.events
    d = m["data"][0]
    assert env.event_type == EventType.TICKER.pb
    assert (dec(env.ticker.bid_px, env.price_scale), dec(env.ticker.ask_qty, env.size_scale)) == (
        Decimal(d["bids"][0][0]),
        Decimal(d["asks"][0][1]),
    )
    ignored = [r for m, r in results if m["arg"]["channel"] in ("index-tickers", "open-interest")]
    assert ignored and all(r.events == [] and r.dead_letters == [] for r in ignored)


def test_liquidation_orders_mapping_futures():
    ad = OkxAdapter()
    results = [(json.loads(x), ad.on_frame(x, 3)) for x in fixture(OKX_TARDIS_FUT)]
    liqs = [(m, r) for m, r in results if m["arg"]["channel"] == "liquidation-orders"]
    assert len(liqs) == 2
    for m, r in liqs:
        (env,) = r.events
        item = m["data"][0]
        det = item["details"][0]
        assert env.native_symbol == item["instId"] and env.market == Market.FUTURE.pb
        assert env.symbol == "XRP-USD-230929"
        assert env.liquidation.side == pb.SIDE_BUY and det["side"] == "buy"
        assert dec(env.liquidation.px, env.price_scale) == Decimal(det["bkPx"])
        assert dec(env.liquidation.qty, env.size_scale) == Decimal(det["sz"])
        assert env.exchange_ts == int(det["ts"]) * 1000
    # the same venue event twice is the same event id (dedup downstream)
    assert liqs[0][1].events[0].event_id == liqs[1][1].events[0].event_id
    (m, r) = next((m, r) for m, r in results if m["arg"]["channel"] == "mark-price")
    assert r.events[0].symbol == "FIL-USDT-220325"

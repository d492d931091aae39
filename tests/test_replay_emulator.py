"""The exchange emulator speaks each venue's protocol (checked with plain websocket and HTTP
clients, not our collectors), serves captures, and is driven over its control API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from websockets.asyncio.client import connect

from collectors.exchanges.okx import okx_checksum as adapter_okx_checksum
from collectors.replay import Emulator, serve_capture
from schemas.model import Exchange, Market
from tests.support.collectors import EIPS
from workloads.samples import OKX_CF, SAMPLES

ROOT = Path(__file__).resolve().parents[1]


async def _recv_json(ws, timeout: float = 5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def test_binance_streams_subscribe_method_and_rest_limits():
    async def main():
        emu = Emulator()
        emu.play_synthetic("binance", "spot", n_symbols=2, rate=200, gate=False)
        await emu.start()
        try:
            base = emu.ws_base("binance", "spot")
            async with connect(base + "/stream?streams=syn0usdt@trade", local_addr=(EIPS[0], 0)) as ws:
                msg = await _recv_json(ws)
                assert msg["stream"] == "syn0usdt@trade" and msg["data"]["e"] == "trade"
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["syn1usdt@depth@100ms"], "id": 7}))
                seen_ack = seen_depth = False
                for _ in range(200):
                    m = await _recv_json(ws)
                    seen_ack |= m == {"result": None, "id": 7}
                    seen_depth |= m.get("stream") == "syn1usdt@depth@100ms" and m["data"]["e"] == "depthUpdate"
                    if seen_ack and seen_depth:
                        break
                assert seen_ack and seen_depth
            async with connect(base + "/ws/syn0usdt@bookTicker") as ws:  # raw stream: no wrapper
                m = await _recv_json(ws)
                assert m["s"] == "SYN0USDT" and {"u", "b", "B", "a", "A"} <= m.keys()
            rest = emu.rest_base("binance", "spot")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(EIPS[1], 0))) as s:
                async with s.get(rest + "/api/v3/depth", params={"symbol": "SYN0USDT", "limit": "1000"}) as r:
                    assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "50"
                    body = await r.json()
                    assert body["lastUpdateId"] > 0 and body["bids"] and body["asks"]
                    assert float(body["bids"][0][0]) < float(body["asks"][0][0])
                # an invalid request still costs its weight (limit 100 -> 5)
                async with s.get(rest + "/api/v3/depth", params={"symbol": "NOPE"}) as r:
                    assert r.status == 400 and (await r.json())["code"] == -1121
                    w2 = int(r.headers["X-MBX-USED-WEIGHT-1M"])
                    assert w2 in (55, 5)  # 5 if a new minute began between the two
                async with s.get(rest + "/api/v3/exchangeInfo") as r:
                    info = await r.json()
                    assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) in (w2 + 20, 20)
                    syms = {x["symbol"]: x for x in info["symbols"]}
                    f = {x["filterType"]: x for x in syms["SYN0USDT"]["filters"]}
                    assert f["PRICE_FILTER"]["tickSize"] == "0.01" and f["LOT_SIZE"]["stepSize"] == "0.001"
                    assert syms["SYN0USDT"]["baseAsset"] == "SYN0" and syms["SYN0USDT"]["quoteAsset"] == "USDT"
        finally:
            await emu.stop()

    asyncio.run(main())


def test_bybit_and_okx_subscribe_ping_and_snapshot_on_subscribe():
    async def main():
        emu = Emulator()
        emu.play_synthetic("bybit", "perp", n_symbols=1, rate=100, gate=False)
        emu.play_synthetic("okx", "spot", n_symbols=1, rate=100, gate=False)
        await emu.start()
        try:
            async with connect(emu.ws_base("bybit", "perp") + "/v5/public/linear") as ws:
                await ws.send(json.dumps({"op": "subscribe", "args": ["orderbook.50.SYN0USDT"], "req_id": "r1"}))
                ack = await _recv_json(ws)
                assert ack["success"] is True and ack["op"] == "subscribe" and ack["req_id"] == "r1"
                snap = await _recv_json(ws)
                assert snap["topic"] == "orderbook.50.SYN0USDT" and snap["type"] == "snapshot"
                u = snap["data"]["u"]
                await ws.send(json.dumps({"op": "ping"}))
                got_pong = False
                for _ in range(100):
                    m = await _recv_json(ws)
                    if m.get("op") == "pong":
                        got_pong = True
                    elif m.get("type") == "delta":
                        assert m["data"]["u"] == u + 1  # u increases by exactly one
                        u += 1
                    if got_pong and u > snap["data"]["u"] + 2:
                        break
                assert got_pong
            async with connect(emu.ws_base("bybit", "perp") + "/v5/public/bogus") as ws:
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 1008
            async with connect(emu.ws_base("okx", "spot") + "/ws/v5/public") as ws:
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), 5) == "pong"
                await ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "SYN0-USDT"}]}))
                ack = await _recv_json(ws)
                assert ack["event"] == "subscribe" and ack["arg"] == {"channel": "books", "instId": "SYN0-USDT"}
                snap = await _recv_json(ws)
                d = snap["data"][0]
                assert snap["action"] == "snapshot" and d["prevSeqId"] == -1
                # the checksum the emulator renders is the one the adapter verifies
                assert d["checksum"] == adapter_okx_checksum([lv[:2] for lv in d["bids"]], [lv[:2] for lv in d["asks"]])
                upd = await _recv_json(ws)
                assert upd["action"] == "update" and upd["data"][0]["prevSeqId"] == d["seqId"]
                await ws.send(json.dumps({"op": "nonsense"}))
                for _ in range(50):
                    m = await _recv_json(ws)
                    if m.get("event") == "error":
                        assert m["code"] == "60012"
                        break
                else:
                    raise AssertionError("no error answer")
        finally:
            await emu.stop()

    asyncio.run(main())


async def _okx_subscriber(emu, insts: list[str], got: dict[str, int], stop: asyncio.Event) -> None:
    """A plain websocket client subscribing every channel of some instruments; counts the
    market-data frames it receives per instrument."""
    async with connect(emu.ws_base("okx", "spot") + "/ws/v5/public") as ws:
        args = [{"channel": ch, "instId": i} for i in insts for ch in ("books", "trades", "tickers")]
        await ws.send(json.dumps({"op": "subscribe", "args": args}))
        while not stop.is_set():
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
            except TimeoutError:
                continue
            if "event" not in m and "arg" in m:
                got[m["arg"]["instId"]] = got.get(m["arg"]["instId"], 0) + 1


def test_capture_playback_holds_each_stream_until_a_subscriber_takes_it():
    """A three-instrument capture whose collectors connect one by one, a second apart, at
    unlimited speed: every frame reaches the client of its instrument (nothing is replayed
    to nobody once the first one subscribed), and the stats say the capture was served."""

    async def main():
        emu = Emulator()
        feed = emu.play_capture(OKX_CF, speed=None)
        await emu.start()
        got: dict[str, int] = {}
        stop = asyncio.Event()
        try:
            clients = []
            for inst in ("BTC-USDT", "UNI-USD-SWAP", "BTC-USD-220527"):
                clients.append(asyncio.create_task(_okx_subscriber(emu, [inst], got, stop)))
                await asyncio.sleep(1.0)
                if inst != "BTC-USD-220527":
                    assert not feed.finished.is_set() and emu.stats()["waiting_for"]
            await asyncio.wait_for(feed.finished.wait(), 30)
            await asyncio.sleep(0.5)
            st = emu.stats()
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            await emu.stop()
        return feed, got, st

    feed, got, st = asyncio.run(main())
    per_inst: dict[str, int] = {}
    for key in feed.keys:
        if key:
            inst = key.partition(":")[2]
            per_inst[inst] = per_inst.get(inst, 0) + 1
    assert got == per_inst
    assert st["finished"] and st["complete"] and st["unserved"] == 0 and st["served"] == sum(per_inst.values())


def test_frames_nobody_subscribed_are_counted_and_the_replay_is_not_complete():
    """With a hold timeout, a stream no collector ever subscribes is released to nobody; the
    stats count it per stream and the completion rule refuses to call the capture complete."""
    from pipelines.local.replay import incomplete_reason

    async def main():
        emu = Emulator(hold_timeout_s=0.3)
        feed = emu.play_capture(OKX_CF, speed=None)
        await emu.start()
        got: dict[str, int] = {}
        stop = asyncio.Event()
        client = asyncio.create_task(_okx_subscriber(emu, ["BTC-USDT"], got, stop))
        try:
            await asyncio.wait_for(feed.finished.wait(), 60)
            await asyncio.sleep(0.3)
            return feed, emu.stats()
        finally:
            stop.set()
            await client
            await emu.stop()

    feed, st = asyncio.run(main())
    others = sum(1 for k in feed.keys if k and not k.endswith(":BTC-USDT"))
    assert st["finished"] and not st["complete"] and st["unserved"] == others
    assert set(st["feeds"][0]["unserved_keys"]) == {k for k in feed.keys if k and not k.endswith(":BTC-USDT")}
    why = incomplete_reason(st)
    assert f"{others} events of {OKX_CF} reached no collector" in why and "trades:UNI-USD-SWAP" in why


def test_okx_checksum_matches_the_genuine_capture():
    """The emulator's OKX checksum reproduces the values OKX itself sent."""
    from collectors.capture import read
    from collectors.emulator.book import okx_checksum

    n = 0
    for rec in read(OKX_CF):
        obj = json.loads(rec.payload)
        if isinstance(obj, dict) and obj.get("action") == "snapshot":
            d = obj["data"][0]
            assert okx_checksum(d["bids"], d["asks"]) == d["checksum"]
            n += 1
    assert n >= 3


def test_control_api_and_capture_directory_serving(tmp_path):
    async def main():
        emu = await serve_capture(SAMPLES, speed="max")
        try:
            desc = emu.describe()
            assert {"binance:spot", "binance:perp", "bybit:perp", "okx:spot", "okx:perp", "okx:future"} <= set(
                desc["venues"]
            )
            assert "BTCUSDT" in desc["venues"]["binance:spot"]["symbols"]  # hftbacktest
            assert "NKNUSDT" in desc["venues"]["binance:spot"]["symbols"]  # cryptofeed
            shards = {s.name: s for s in emu.shard_configs("replay")}
            assert shards["replay-bybit-perp"].adapter_options == {"channels": ("orderbook",), "depth": 500}
            assert shards["replay-okx-future"].symbols == ("BTC-USD-220527",)
            assert all(s.ws_url.startswith("ws://127.0.0.1:") for s in shards.values())
            async with aiohttp.ClientSession() as s:
                async with s.post(emu.control_url + "/gap", json={"venue": "binance-spot", "symbol": "BTCUSDT"}) as r:
                    assert r.status == 200
                async with s.post(
                    emu.control_url + "/faults",
                    json={"venue": "binance-spot", "ip": EIPS[0], "statuses": "429:1,418:2"},
                ) as r:
                    assert r.status == 200
                async with s.get(emu.control_url + "/stats") as r:
                    st = await r.json()
                    assert st["finished"] is False and len(st["feeds"]) >= 5
                async with s.post(emu.control_url + "/gap", json={"venue": "nowhere", "symbol": "X"}) as r:
                    assert r.status == 400
            assert emu.sims["binance-spot"].drop_next == {"BTCUSDT": 1}
            assert list(emu.sims["binance-spot"].ratelimiter.ips[EIPS[0]].forced) == [(429, 1.0), (418, 2.0)]
        finally:
            await emu.stop()

    asyncio.run(main())


def test_emulator_command_line_writes_its_endpoints(tmp_path):
    state = tmp_path / "emu.json"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collectors.replay",
            str(OKX_CF),
            "--synthetic",
            "binance:spot:3:50",
            "--state-file",
            str(state),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        info = json.loads(state.read_text())
        assert info["venues"]["binance:spot"]["symbols"] == ["SYN0USDT", "SYN1USDT", "SYN2USDT"]
        assert {s["name"] for s in info["shards"]} >= {"replay-binance-spot", "replay-okx-spot"}
        assert info["control"].startswith("http://127.0.0.1:")
    finally:
        p.terminate()
        assert p.wait(20) == 0


def test_capture_venue_detection_covers_every_servable_sample():
    async def main():
        emu = await serve_capture(SAMPLES, speed="max")
        try:
            venues = {(f.sim.exchange, getattr(f.sim, "market", None)) for f in emu.feeds}
        finally:
            await emu.stop()
        return venues

    venues = asyncio.run(main())
    assert (Exchange.BINANCE, Market.SPOT) in venues and (Exchange.BINANCE, Market.PERP) in venues
    assert {ex for ex, _ in venues} == {Exchange.BINANCE, Exchange.BYBIT, Exchange.OKX}

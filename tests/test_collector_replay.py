"""Genuine captures replayed by the exchange emulator into real collector shards and the real
broker: what lands on the raw topics must rebuild the venue's books exactly, and every event
of the capture must arrive, per instrument and type, however late and in whatever order the
shards of a multi-shard capture subscribe."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from collectors.replay import Emulator
from schemas.model import EventType, Exchange, event_type_from_pb
from tests.support.collectors import (
    EIPS,
    RunningShard,
    ensure_collector_topics,
    shard_dead_letters,
    shard_events,
    unique,
    venue_top,
    verify_books,
    wait_until,
)
from workloads.samples import SAMPLES

#: every capture the emulator serves, with the replay speed it is tested at: unlimited, and
#: paced (hftbacktest to ~6 s; OKX, three shards, at twice the recorded pace).
CAPTURES = [
    ("binance/cryptofeed_BINANCE.ws.1.0", None),
    ("binance/hftbacktest_spot_btcusdt_20240808.gz", 60.0),
    ("binance_futures/cryptofeed_BINANCE_FUTURES.ws.1.0", None),
    ("bybit/nautilus_2024-12-01_XRPUSDT_ob500.data.zip", None),
    ("okx/cryptofeed_OKX.ws.1.0", 2.0),
]


def capture_trades(feed) -> int:
    """Trades in the capture, counted straight from the venue frames."""
    n = 0
    for rec in feed.records:
        if rec.kind != "ws":
            continue
        obj = json.loads(rec.payload)
        if not isinstance(obj, dict):
            continue
        data = obj.get("data")
        if isinstance(data, dict) and data.get("e") in ("trade", "aggTrade") and data.get("X", "MARKET") == "MARKET":
            n += 1
        elif str(obj.get("topic", "")).startswith("publicTrade.") or (
            isinstance(obj.get("arg"), dict) and obj["arg"].get("channel") == "trades" and "event" not in obj
        ):
            n += len(data)
    return n


def capture_events(feed) -> tuple[Counter, dict[str, list[int]]]:
    """What the capture says the venue sent, counted from its frames: (native, event type) ->
    events, and per native the final update ids of its Binance depth diffs (how many of those
    a collector publishes depends on the snapshot it fetched: see test below). A frame of a
    kind not listed here fails the count, so a new capture cannot pass unexamined."""
    n: Counter = Counter()
    diffs: dict[str, list[int]] = {}
    for rec in feed.records:
        if rec.kind != "ws":
            continue
        obj = json.loads(rec.payload)
        if not isinstance(obj, dict) or "event" in obj or "result" in obj or "success" in obj:
            continue  # acks
        data = obj.get("data")
        if isinstance(data, dict) and isinstance(obj.get("stream"), str):  # Binance
            e, native = data.get("e"), data.get("s", "")
            if e in ("trade", "aggTrade"):
                n[(native, EventType.TRADE)] += data.get("X", "MARKET") == "MARKET"
            elif e == "depthUpdate":
                diffs.setdefault(native, []).append(int(data["u"]))
            elif e == "bookTicker" or (e is None and {"u", "B", "A"} <= data.keys()):
                n[(native, EventType.TICKER)] += 1
            elif e != "kline":
                pytest.fail(f"uncounted Binance frame {rec.payload[:120]!r}")
        elif isinstance(obj.get("arg"), dict):  # OKX
            ch, native = obj["arg"]["channel"], obj["arg"]["instId"]
            if ch == "trades":
                n[(native, EventType.TRADE)] += len(data)
            elif ch == "tickers":
                n[(native, EventType.TICKER)] += len(data)
            elif ch.startswith("books"):
                n[(native, EventType.BOOK_SNAPSHOT if obj.get("action") == "snapshot" else EventType.BOOK_DELTA)] += 1
            else:
                pytest.fail(f"uncounted OKX frame {rec.payload[:120]!r}")
        elif isinstance(obj.get("topic"), str):  # Bybit
            topic = obj["topic"]
            if topic.startswith("publicTrade."):
                n[(topic.split(".")[-1], EventType.TRADE)] += len(data)
            elif topic.startswith("orderbook."):
                kind = EventType.BOOK_SNAPSHOT if obj.get("type") == "snapshot" else EventType.BOOK_DELTA
                n[(data["s"], kind)] += 1
            elif topic.startswith("tickers."):
                n[(data["symbol"], EventType.TICKER)] += 1
            else:
                pytest.fail(f"uncounted Bybit frame {rec.payload[:120]!r}")
        else:
            pytest.fail(f"uncounted frame {rec.payload[:120]!r}")
    return n, diffs


def test_samples_are_present():
    missing = [c for c, _ in CAPTURES if not (SAMPLES / c).exists()]
    assert not missing, f"captures missing under {SAMPLES}: {missing}"


@pytest.mark.parametrize(("capture", "speed"), CAPTURES, ids=[c for c, _ in CAPTURES])
def test_capture_replays_completely_into_consistent_raw_books(capture, speed, kafka_broker):
    """No gate set by the test: the emulator's own rule (hold each frame until its stream has
    a subscriber) must deliver the whole capture while the shards start one after another,
    last shard first, a second apart, as the supervisor's runs do in a stack."""
    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    prefix = unique("cap")

    async def scenario():
        emu = Emulator(server_ping_s=5)
        feed = emu.play_capture(SAMPLES / capture, speed=speed)
        await emu.start()
        shards = emu.shard_configs(prefix, egress_ips=EIPS[:3], watchdog_s=60)
        assert shards, "the capture must yield at least one shard"
        runs, runners = [], []
        try:
            for cfg in reversed(shards):
                runs.append(RunningShard(cfg, bootstrap))
                runners.append(await runs[-1].__aenter__())
                await asyncio.sleep(1.0)
            assert await wait_until(lambda: emu.stats()["finished"], 120), emu.stats()["feeds"]
            assert emu.stats()["complete"], emu.stats()["feeds"]
            assert not feed.error and feed.errors == 0 and feed.unserved == 0
            queued = sum(c.queued for c in feed.sim.clients.values())
            assert await wait_until(lambda: sum(r.stats.frames_in for r in runners) >= queued, 30)
        finally:
            for r in runs:
                await r.__aexit__(None, None, None)
        await emu.stop()
        return emu, feed, shards, runners

    emu, feed, shards, runners = asyncio.run(scenario())
    sim = feed.sim
    ex = shards[0].exchange
    events = []
    for cfg in shards:
        events += shard_events(bootstrap, cfg.name, ex)
        assert shard_dead_letters(bootstrap, cfg.name) == []
    for r in runners:
        assert r.stats.dead_letters == 0 and not r.stats.resyncs, r.stats.as_dict()
        assert r.stats.delivery_errors == 0 and r.stats.delivered == r.stats.events_out

    chains = verify_books(events)
    book_symbols = {n for n, b in sim.books.items() if b.known}
    assert book_symbols, "the capture carries order books"
    natives = {e.symbol: e.native_symbol for e in events}
    assert {natives[s] for s in chains} == book_symbols
    assert sum(ch.deltas for ch in chains.values()) > 0
    for sym, ch in chains.items():
        assert ch.snapshots >= 1, (sym, ch)
        assert (ch.gaps, ch.crossed, ch.snapshot_mismatch) == (0, 0, 0), (sym, ch)
        # The book the raw topic describes is the venue's book at the end of the capture.
        bids, asks = venue_top(sim.books[natives[sym]], 20, ch.price_scale, ch.size_scale)
        assert ch.book.top_bids(20) == bids and ch.book.top_asks(20) == asks, sym

    trades = [e for e in events if e.event_type == EventType.TRADE.pb]
    assert len(trades) == capture_trades(feed)
    assert len({e.event_id for e in events}) == len(events), "each venue event is published once"

    # Every event of the capture, per instrument and type, exactly. Binance books are synced
    # from a REST snapshot: each diff is then either inside that snapshot (u <= its id; USD-M
    # applies the diff ending at the id too) or published as a delta.
    expected, diffs = capture_events(feed)
    got = Counter((e.native_symbol, event_type_from_pb(e.event_type)) for e in events)
    usdm = shards[0].market != "spot"
    for native, us in diffs.items():
        snaps = [e for e in events if e.native_symbol == native and e.event_type == EventType.BOOK_SNAPSHOT.pb]
        assert len(snaps) == 1, (native, len(snaps))
        expected[(native, EventType.BOOK_SNAPSHOT)] = 1
        expected[(native, EventType.BOOK_DELTA)] = sum(u > snaps[0].seq or (usdm and u == snaps[0].seq) for u in us)
    assert got == +expected

    stats: dict[str, dict[str, int]] = {}
    for r in runners:
        stats.update(r.book_stats())
    if ex is Exchange.OKX:
        assert sum(s["checksum_ok"] for s in stats.values()) > 0
        assert sum(s["checksum_bad"] for s in stats.values()) == 0
    if ex is Exchange.BINANCE and shards[0].market == "spot" and any("bookTicker" in k for k in emu.capture_keys(feed)):
        assert sum(s["bbo_checked"] for s in stats.values()) > 0
        assert sum(s["bbo_mismatched"] for s in stats.values()) == 0

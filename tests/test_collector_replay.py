"""Genuine captures replayed by the exchange emulator into real collector shards and the real
broker: what lands on the raw topics must rebuild the venue's books exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from collectors.capture import read as read_capture
from collectors.replay import Emulator
from schemas.model import EventType, Exchange
from tests.collector_harness import (
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

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"

CAPTURES = [
    "binance/cryptofeed_BINANCE.ws.1.0",
    "binance/hftbacktest_spot_btcusdt_20240808.gz",
    "binance_futures/cryptofeed_BINANCE_FUTURES.ws.1.0",
    "bybit/nautilus_2024-12-01_XRPUSDT_ob500.data.zip",
    "okx/cryptofeed_OKX.ws.1.0",
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
                isinstance(obj.get("arg"), dict) and obj["arg"].get("channel") == "trades" and "event" not in obj):
            n += len(data)
    return n


def test_samples_are_present():
    missing = [c for c in CAPTURES if not (SAMPLES / c).exists()]
    assert not missing, f"captures missing under {SAMPLES}: {missing}"


@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_replays_into_consistent_raw_books(capture, kafka_broker):
    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    prefix = unique("cap")

    async def scenario():
        emu = Emulator(server_ping_s=5)
        gate = asyncio.Event()
        # Paced so the replay lasts ~6 s: REST snapshots are answered when the replay reaches
        # them, with live diffs still to come (at unlimited speed they would all be stale).
        ts = [r.recv_ts_us for r in read_capture(SAMPLES / capture) if r.recv_ts_us]
        feed = emu.play_capture(SAMPLES / capture, speed=max(1.0, (ts[-1] - ts[0]) / 1e6 / 6.0), gate=gate)
        await emu.start()
        shards = emu.shard_configs(prefix, egress_ips=EIPS[:3], watchdog_s=60)
        assert shards, "the capture must yield at least one shard"
        runs = [RunningShard(cfg, bootstrap) for cfg in shards]
        runners = [await r.__aenter__() for r in runs]
        try:
            keys = emu.capture_keys(feed)
            assert await emu.wait_subscribed(feed.sim.name, keys, timeout=30), (
                keys - {k for k, v in feed.sim.subscribers.items() if v})
            gate.set()
            await asyncio.wait_for(feed.finished.wait(), 120)
            assert not feed.error and feed.errors == 0
            assert await emu.drained(30)
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

    stats: dict[str, dict[str, int]] = {}
    for r in runners:
        stats.update(r.book_stats())
    if ex is Exchange.OKX:
        assert sum(s["checksum_ok"] for s in stats.values()) > 0
        assert sum(s["checksum_bad"] for s in stats.values()) == 0
    if ex is Exchange.BINANCE and shards[0].market == "spot" and any("bookTicker" in k for k in emu.capture_keys(feed)):
        assert sum(s["bbo_checked"] for s in stats.values()) > 0
        assert sum(s["bbo_mismatched"] for s in stats.values()) == 0

"""Faults injected by the exchange emulator while a real shard publishes to the real broker.

Each scenario ends with the same judgement of the raw topics: every book rebuilt from the
published snapshots and deltas has no unexplained gap, never crosses, and equals the
venue's own book at the end; refused frames are in dlq.collector with a reason.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import pytest

from collectors.config import ShardConfig
from collectors.replay import Emulator, sim_name
from collectors.sharding import home_ip
from schemas.model import EventType, Exchange, Market
from schemas.symbols import canonical_symbol
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

VENUES = {
    "binance-spot": (Exchange.BINANCE, Market.SPOT),
    "binance-usdm": (Exchange.BINANCE, Market.PERP),
    "bybit-linear": (Exchange.BYBIT, Market.PERP),
    "okx-spot": (Exchange.OKX, Market.SPOT),
}


def synced(runner) -> bool:
    """Every symbol has a synced book on a live, non-retiring connection."""
    carried = set()
    for w in runner.workers:
        if w.alive and w.retire_since is None:
            for n in w.natives:
                b = w.adapter.book(n)
                if b is not None and b.synced:
                    carried.add(n)
    return carried == set(runner.native_of.values())


def subscribed(sim, natives) -> bool:
    """The venue has a live subscription mentioning every symbol."""
    keys = [k.lower() for k, subs in sim.subscribers.items() if subs]
    return all(any(n.lower() in k for k in keys) for n in natives)


async def quiet(runner, emu: Emulator, settle_s: float = 0.6, timeout: float = 30.0) -> None:
    """Until the emulator has written everything and the shard stopped receiving."""
    assert await emu.drained(timeout)
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = runner.stats.frames_in
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle_s and synced(runner):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("shard never settled")


Scenario = Callable[[Emulator, object, object], Awaitable[None]]
#: Frames per second of the per-venue scenarios (drop, gap, malformed): their fault comes
#: 500-1,200 frames in, so ~2.3-3 s of stream follow it at this rate (the default 600 took
#: 6.7 s per run of the 9).
QUICK_RATE = 1200


def run_synthetic(
    kafka_broker,
    venue: str,
    scenario: Scenario,
    *,
    n_symbols: int = 4,
    rate: float = 600,
    frames: int = 4000,
    ips: tuple[str, ...] = EIPS[:2],
    cfg: dict | None = None,
    runner_kw: dict | None = None,
    emu_kw: dict | None = None,
):
    """Serve synthetic load for ``venue``, run one shard on it, play ``scenario`` while the
    feed runs, then return (emulator, runner, cfg, events) after a clean stop."""
    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    ex, mk = VENUES[venue]

    async def main():
        emu = Emulator(server_ping_s=5, **(emu_kw or {}))
        gate = asyncio.Event()
        feed = emu.play_synthetic(ex, mk, n_symbols=n_symbols, rate=rate, frames=frames, gate=gate)
        await emu.start()
        ep = emu.endpoints(ex, mk)
        natives = feed.model.spec.symbols
        shard = ShardConfig(
            unique("flt"),
            ex,
            mk,
            tuple(canonical_symbol(ex, mk, n) for n in natives),
            ips,
            ws_url=ep.ws,
            rest_url=ep.rest,
            backoff_base_s=0.05,
            backoff_cap_s=0.5,
            **(cfg or {}),
        )
        async with RunningShard(shard, bootstrap, **(runner_kw or {})) as runner:
            assert await wait_until(lambda: subscribed(feed.sim, natives), 30), "never subscribed"
            gate.set()
            assert await wait_until(lambda: synced(runner), 30), "books never synced"
            await scenario(emu, runner, feed)
            await asyncio.wait_for(feed.finished.wait(), 120)
            await quiet(runner, emu)
        await emu.stop()
        return emu, runner, shard

    emu, runner, shard = asyncio.run(main())
    events = shard_events(bootstrap, shard.name, ex)
    return emu, runner, shard, events


def check_books(emu: Emulator, shard: ShardConfig, events) -> dict:
    sim = emu.sims[sim_name(shard.exchange, shard.market)]
    chains = verify_books(events)
    assert set(chains) == set(shard.symbols)
    for sym, ch in chains.items():
        assert (ch.gaps, ch.crossed, ch.snapshot_mismatch) == (0, 0, 0), (sym, ch)
        assert ch.deltas > 0
        native = shard.native_symbols[shard.symbols.index(sym)]
        bids, asks = venue_top(sim.books[native], 50, ch.price_scale, ch.size_scale)
        assert ch.book.top_bids(50) == bids and ch.book.top_asks(50) == asks, f"{sym} differs from the venue"
    assert len({e.event_id for e in events}) == len(events), "an event was published twice"
    return chains


def trade_ids(events) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.event_type == EventType.TRADE.pb:
            out[e.symbol].append(int(e.trade.trade_id.removeprefix("emu-")))
    return {s: sorted(v) for s, v in out.items()}


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", ["binance-spot", "bybit-linear", "okx-spot"])
def test_connection_drop_mid_stream_reconnects_and_resyncs(kafka_broker, venue):
    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: feed.items > 1200, 30)
        assert emu.drop_connections() >= 1
        assert await wait_until(lambda: runner.stats.reconnects >= 1, 10)

    emu, runner, shard, events = run_synthetic(kafka_broker, venue, scenario, rate=QUICK_RATE)
    chains = check_books(emu, shard, events)
    assert runner.stats.reconnects >= 1
    # every symbol was re-established from a fresh snapshot after the drop
    assert all(ch.snapshots >= 2 for ch in chains.values()), chains
    assert runner.stats.dead_letters == 0


@pytest.mark.parametrize("venue", ["binance-spot", "binance-usdm", "bybit-linear", "okx-spot"])
def test_sequence_gap_resyncs_only_that_symbol(kafka_broker, venue):
    victim = {}

    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: feed.items > 800, 30)
        victim["native"] = feed.model.spec.symbols[1]
        emu.inject_gap(feed.sim.name, victim["native"])
        assert await wait_until(lambda: feed.sim.gaps_injected.get(victim["native"]), 20)

    emu, runner, shard, events = run_synthetic(kafka_broker, venue, scenario, rate=QUICK_RATE)
    check_books(emu, shard, events)
    assert dict(runner.stats.resyncs) == {victim["native"]: 1}
    assert runner.stats.reconnects == 0  # one symbol resynced, the connection stayed up
    snaps = Counter(
        e.symbol for e in events if e.event_type == EventType.BOOK_SNAPSHOT.pb and e.book_snapshot.reason == 2
    )  # SNAPSHOT_REASON_RESYNC
    assert snaps == Counter({shard.symbols[1]: 1})


@pytest.mark.parametrize("venue", ["binance-spot", "okx-spot"])
def test_malformed_frames_are_counted_in_the_dlq_with_a_reason(kafka_broker, venue):
    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: feed.items > 500, 30)
        emu.inject_malformed(feed.sim.name, count=3)
        assert await wait_until(lambda: feed.sim.malformed_sent == 3, 20)

    emu, runner, shard, events = run_synthetic(kafka_broker, venue, scenario, rate=QUICK_RATE)
    check_books(emu, shard, events)
    dls = shard_dead_letters(kafka_broker.bootstrap, shard.name)
    assert len(dls) == 3 == runner.stats.dead_letters
    for dl in dls:
        assert "malformed JSON" in dl.reason
        assert dl.stage == "collector" and dl.exchange == str(shard.exchange) and dl.raw
    assert not runner.stats.resyncs


def test_429_then_418_on_one_egress_ip_fails_over_and_returns(kafka_broker):
    ips = EIPS[:3]
    seen: dict = {}

    async def scenario(emu, runner, feed):
        sim = feed.sim
        canon = dict(zip(runner.cfg.symbols, runner.cfg.native_symbols))
        owned = {s for s in runner.cfg.symbols if home_ip(s, ips) == ips[0]}
        assert owned, "the test needs symbols homed on the faulted IP"
        seen["owned"] = owned
        before = dict(runner.carriers())
        assert all(before[s] == ips[0] for s in owned)
        # The venue answers the next two requests from ips[0] with 429 then 418 (ban);
        # a gap on one of its symbols makes the shard ask for a snapshot from there.
        emu.rest_faults(sim.name, ips[0], [(429, 1.5), (418, 3.0)])
        emu.inject_gap(sim.name, canon[sorted(owned)[0]])
        moved_away = await wait_until(lambda: all(runner.carriers().get(s) not in (None, ips[0]) for s in owned), 20)
        assert moved_away, runner.carriers()
        seen["during"] = dict(runner.carriers())
        assert await wait_until(lambda: sim.ratelimiter.ips[ips[0]].statuses.get(418, 0) >= 1, 30)
        # After the ban its symbols come home, and stay there.
        assert await wait_until(lambda: all(runner.carriers().get(s) == ips[0] for s in owned) and synced(runner), 40)
        seen["after"] = dict(runner.carriers())

    emu, runner, shard, events = run_synthetic(
        kafka_broker, "binance-spot", scenario, n_symbols=8, rate=500, frames=9000, ips=ips
    )
    check_books(emu, shard, events)
    sim = emu.sims["binance-spot"]
    st = sim.ratelimiter.ips[ips[0]].statuses
    assert st.get(429) == 1 and st.get(418, 0) >= 1  # requests already in flight share the ban
    # Retry-After was honoured: nothing more came from that IP while it was told to wait
    # (requests already on the wire when the 429 was sent may land just after it).
    log = [e for e in sim.rest_log if e["ip"] == ips[0]]
    t429 = next(e["ts"] for e in log if e["status"] == 429)
    assert not [e for e in log if t429 + 0.3 <= e["ts"] < t429 + 1.5]
    states = [(ip, s) for _, ip, s in runner.stats.ip_events]
    assert (ips[0], "throttled") in states and (ips[0], "banned") in states and (ips[0], "healthy") in states
    # Only the faulted IP's symbols moved, each to a healthy IP; everything else stayed put.
    owned = seen["owned"]
    for s, ip in seen["during"].items():
        assert (ip != ips[0]) if s in owned else (ip == home_ip(s, ips)), (s, ip)
    assert seen["after"] == {s: home_ip(s, ips) for s in shard.symbols}
    # The venue saw the moved symbols subscribed from the other IPs while ips[0] was out.
    moved_natives = {n.lower() for s, n in zip(shard.symbols, shard.native_symbols) if s in owned}
    foreign = [
        c
        for c in sim.closed_clients + list(sim.clients.values())
        if c.ip != ips[0] and any(k.split("@")[0] in moved_natives for k in c.subscribed_ever)
    ]
    assert foreign
    # The healthy IPs' own connections were never replaced.
    own_conns = Counter(
        c.ip
        for c in sim.closed_clients + list(sim.clients.values())
        if c.ip != ips[0] and not any(k.split("@")[0] in moved_natives for k in c.subscribed_ever)
    )
    assert all(n == 1 for n in own_conns.values()), own_conns
    assert runner.stats.dead_letters == 0  # throttles are retried elsewhere, never handed on


def test_refused_handshakes_are_retried_until_the_venue_is_back(kafka_broker):
    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: feed.items > 600, 30)
        emu.refuse(feed.sim.name, 3.0)
        assert await wait_until(lambda: feed.sim.refused >= 5, 10), "the shard must keep trying"
        assert await wait_until(lambda: synced(runner), 30)

    emu, runner, shard, events = run_synthetic(kafka_broker, "binance-spot", scenario)
    check_books(emu, shard, events)
    assert runner.stats.session_ends["connect failed"] >= 5


def test_watchdog_reconnects_a_silent_connection(kafka_broker):
    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: feed.items > 600, 30)
        emu.pause(2.5, feed.sim.name)  # socket open, pings answered, no data
        assert await wait_until(lambda: runner.stats.session_ends["watchdog"] >= 1, 10)

    emu, runner, shard, events = run_synthetic(kafka_broker, "okx-spot", scenario, cfg={"watchdog_s": 1.0})
    check_books(emu, shard, events)
    assert runner.stats.session_ends["watchdog"] >= 1


def test_rotation_and_venue_shutdown_notice_lose_and_duplicate_nothing(kafka_broker):
    async def scenario(emu, runner, feed):
        assert await wait_until(lambda: runner.stats.rotations >= 2, 30)
        emu.server_shutdown(feed.sim.name)
        assert await wait_until(lambda: runner.stats.rotations >= 3, 15)

    emu, runner, shard, events = run_synthetic(
        kafka_broker,
        "binance-spot",
        scenario,
        rate=800,
        frames=9000,
        cfg={"rotation_s": 2.5},
        runner_kw={"handover_overlap_s": 0.5},
    )
    check_books(emu, shard, events)
    assert runner.stats.rotations >= 3
    assert runner.stats.duplicates > 0, "the connections overlapped, so duplicates had to be removed"
    # Every trade the venue printed is on the raw topic exactly once: no handover lost one.
    for sym, ids in trade_ids(events).items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{sym}: trades missing or repeated"
    # ...and every trade it printed after the shard subscribed (ids are per symbol, from 1000001).
    model = emu.feeds[0].model
    for native, sym in zip(shard.native_symbols, shard.symbols):
        assert trade_ids(events)[sym][-1] == model.trade_ids[native]


def test_application_keepalive_reaches_every_connection(kafka_broker, monkeypatch):
    from collectors.exchanges import bybit

    # Bybit wants {"op":"ping"} every 20 s; shortened so the test need not wait minutes.
    monkeypatch.setattr(bybit, "PING_INTERVAL_US", 500_000)

    async def scenario(emu, runner, feed):
        await asyncio.sleep(4.0)

    emu, runner, shard, events = run_synthetic(
        kafka_broker,
        "bybit-linear",
        scenario,
        n_symbols=6,
        ips=EIPS[:3],
        frames=3000,
        rate=500,
        emu_kw={"app_ping_timeout_s": 2.0},
    )
    check_books(emu, shard, events)
    clients = emu.sims["bybit"].closed_clients
    assert clients and all(c.app_pings >= 3 for c in clients), [(c.ip, c.app_pings) for c in clients]
    assert not [c for c in clients if "ping" in c.close_reason]
    assert runner.stats.reconnects == 0

"""The REST and websocket clients against the emulator over real sockets: per-IP binding,
the venue's weight header, 429/418 handling and failover between egress IPs."""

from __future__ import annotations

import asyncio

import aiohttp

from collectors.emulator.ratelimit import VenueLimits
from collectors.exchanges.base import RestRequest
from collectors.ratelimit import IpState, RateLimitPolicy
from collectors.replay import Emulator
from collectors.rest_client import RestPool
from collectors.ws_client import WsSession
from tests.support.collectors import EIPS

# A small weight budget so a test can exhaust it quickly: 60 per 2 s window, as Binance
# reports it in X-MBX-USED-WEIGHT-1M.
LIMITS = VenueLimits(
    window_s=2.0, limit=60, weight_header="X-MBX-USED-WEIGHT-1M", throttle_status=429, ban_status=418, ban_s=5.0
)
POLICY = RateLimitPolicy(
    "test",
    window_s=2.0,
    limit=60,
    used_weight_header="X-MBX-USED-WEIGHT-1M",
    throttle_statuses=frozenset({429}),
    ban_statuses=frozenset({418}),
    headroom=1.0,
)
DEPTH = RestRequest("/api/v3/depth", (("symbol", "SYN0USDT"), ("limit", "100")), weight=5, native_symbol="SYN0USDT")


async def _emulator() -> Emulator:
    emu = Emulator()
    emu.venue("binance", "spot", limits=LIMITS)
    emu.play_synthetic("binance", "spot", n_symbols=1, rate=10, gate=False)
    return await emu.start()


def test_weight_header_is_honoured_and_no_429_is_ever_earned():
    async def main():
        emu = await _emulator()
        sim = emu.sims["binance-spot"]
        base = emu.rest_base("binance", "spot")
        try:
            # Another process on the same IP already spent most of this window's weight
            # (the emulator counts per source IP, so the header reports it to us).
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(EIPS[0], 0))) as s:
                for _ in range(10):
                    async with s.get(base + "/api/v3/depth", params={"symbol": "SYN0USDT", "limit": "100"}) as r:
                        if r.status != 200:
                            break
            async with RestPool(base, [EIPS[0]], POLICY) as pool:
                results = await asyncio.gather(*(pool.get(DEPTH, [EIPS[0]]) for _ in range(40)))
                assert [r.status for r in results] == [200] * 40
                assert {r.ip for r in results} == {EIPS[0]}
                assert pool.stats.by_status == {200: 40}
        finally:
            await emu.stop()
        rec = sim.ratelimiter.ips[EIPS[0]]
        assert rec.statuses.get(429, 0) == 0 and rec.statuses.get(418, 0) == 0
        assert rec.max_used <= LIMITS.limit
        return rec

    asyncio.run(main())


def test_a_client_that_ignores_the_budget_is_throttled_then_banned():
    """The same load without the limiter: the emulator enforces the venue's rules, so the
    previous test passing is not a property of a lenient emulator."""

    async def main():
        emu = await _emulator()
        base = emu.rest_base("binance", "spot")
        statuses = []
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(EIPS[1], 0))) as s:
                for _ in range(30):
                    async with s.get(base + "/api/v3/depth", params={"symbol": "SYN0USDT", "limit": "100"}) as r:
                        statuses.append(r.status)
                        retry_after = r.headers.get("Retry-After")
                        if r.status != 200:
                            assert retry_after is not None
        finally:
            await emu.stop()
        assert 429 in statuses and 418 in statuses
        assert statuses.index(429) < statuses.index(418)

    asyncio.run(main())


def test_throttled_and_banned_ips_are_skipped_until_retry_after_passes():
    async def main():
        emu = await _emulator()
        sim = emu.sims["binance-spot"]
        base = emu.rest_base("binance", "spot")
        changes = []
        try:
            async with RestPool(
                base, list(EIPS[:2]), POLICY, on_state_change=lambda ip, st: changes.append((ip, st))
            ) as pool:
                emu.rest_faults("binance-spot", EIPS[0], [(429, 1.0), (418, 2.0)])
                r1 = await pool.get(DEPTH, [EIPS[0], EIPS[1]])
                # 429 on the preferred IP: answered from the other one, immediately
                assert r1.status == 200 and r1.ip == EIPS[1] and r1.attempts == 2
                assert pool.state(EIPS[0]) is IpState.THROTTLED
                assert pool.healthy_ips() == [EIPS[1]]
                r2 = await pool.get(DEPTH, [EIPS[0], EIPS[1]])
                assert r2.ip == EIPS[1]  # not retried on the throttled IP
                await asyncio.sleep(1.1)
                assert pool.poll_states()[EIPS[0]] is IpState.HEALTHY  # what the shard's planner sees
                r3 = await pool.get(DEPTH, [EIPS[0], EIPS[1]])  # back: 418 now, banned
                assert r3.ip == EIPS[1] and pool.state(EIPS[0]) is IpState.BANNED
                await asyncio.sleep(2.1)
                pool.poll_states()
                r4 = await pool.get(DEPTH, [EIPS[0], EIPS[1]])
                assert r4.ip == EIPS[0] and pool.state(EIPS[0]) is IpState.HEALTHY
        finally:
            await emu.stop()
        assert changes == [
            (EIPS[0], IpState.THROTTLED),
            (EIPS[0], IpState.HEALTHY),
            (EIPS[0], IpState.BANNED),
            (EIPS[0], IpState.HEALTHY),
        ]
        log = [(e["ip"], e["status"]) for e in sim.rest_log]
        assert log.count((EIPS[0], 429)) == 1 and log.count((EIPS[0], 418)) == 1

    asyncio.run(main())


def test_every_ip_blocked_means_waiting_not_failing():
    async def main():
        emu = await _emulator()
        base = emu.rest_base("binance", "spot")
        try:
            async with RestPool(base, [EIPS[2]], POLICY) as pool:
                emu.rest_faults("binance-spot", EIPS[2], [(429, 1.0)])
                r = await asyncio.wait_for(pool.get(DEPTH, [EIPS[2]]), 10)
                assert r.status == 200 and r.attempts == 2
        finally:
            await emu.stop()

    asyncio.run(main())


def test_websocket_session_binds_the_egress_ip():
    async def main():
        emu = await _emulator()
        sim = emu.sims["binance-spot"]
        try:
            for ip in EIPS[3:6]:
                s = await WsSession.open(emu.ws_base("binance", "spot") + "/stream?streams=syn0usdt@trade", ip)
                assert s.local_address[0] == ip
                await s.close()
        finally:
            await emu.stop()
        assert [c.ip for c in sim.closed_clients] == list(EIPS[3:6])

    asyncio.run(main())

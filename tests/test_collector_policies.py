"""Backoff, per-IP rate limiting, sharding and dedup: the pure policy parts of the collectors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from collectors.backoff import Backoff, BackoffPolicy
from collectors.config import ConfigError, ShardConfig, dump_shards, load_shards, parse_shards
from collectors.dedup import DedupWindow
from collectors.exchanges.binance_venue import SPOT_RATE_LIMIT as BINANCE_SPOT
from collectors.exchanges.bybit_venue import RATE_LIMIT as BYBIT
from collectors.ratelimit import (
    IpRateLimiter,
    IpState,
    RateLimitPolicy,
    parse_retry_after,
)
from collectors.sharding import assign, home_ip, moved, plan_connections, preference

EIPS = [f"127.0.0.{i}" for i in range(2, 12)]  # production's 10 EIPs, as loopback aliases
SYMBOLS = [f"S{i:03d}-USDT" for i in range(400)]


# -- backoff --------------------------------------------------------------------------------


def test_backoff_delays_stay_within_jitter_bounds_and_grow_to_cap():
    pol = BackoffPolicy(base_s=0.5, cap_s=30.0, multiplier=2.0)
    b = Backoff(pol, random.Random(7))
    for attempt in range(40):
        lo, hi = pol.bounds(attempt)
        d = b.next_delay()
        assert lo <= d <= hi, (attempt, d, lo, hi)
        assert hi == min(30.0, 0.5 * 2**attempt)
    # at the cap the delay is jittered in [cap/2, cap] and never collapses to ~0
    tail = [b.next_delay() for _ in range(500)]
    assert min(tail) >= 15.0 and max(tail) <= 30.0
    assert len({round(x, 6) for x in tail}) > 400, "jitter must actually vary"


def test_backoff_never_gives_up():
    b = Backoff(BackoffPolicy(base_s=0.01, cap_s=1.0), random.Random(1))
    # a feed down for a very long time still gets a finite delay, attempt after attempt
    for _ in range(100_000):
        d = b.next_delay()
        assert 0.5 <= d <= 1.0 or b.attempt <= 7
    assert b.attempt == 100_000


def test_backoff_resets_only_after_a_long_enough_healthy_connection():
    b = Backoff(BackoffPolicy(base_s=1, cap_s=64, reset_after_s=60), random.Random(3))
    for _ in range(6):
        b.next_delay()
    b.note_uptime(5.0)  # flapped again quickly: keep backing off
    assert b.attempt == 6
    b.note_uptime(61.0)  # was healthy for a minute: start over
    assert b.attempt == 0
    assert 0.5 <= b.next_delay() <= 1.0


def test_backoff_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        BackoffPolicy(base_s=0)
    with pytest.raises(ValueError):
        BackoffPolicy(base_s=2, cap_s=1)


# -- rate limiting --------------------------------------------------------------------------


def test_limiter_holds_requests_at_the_budget_until_the_window_rolls():
    pol = RateLimitPolicy("t", window_s=60, limit=100, headroom=0.9)
    lim = IpRateLimiter("127.0.0.2", pol)
    t = 600.0  # start of a window
    sent = 0
    while lim.wait_time(10, t) == 0:
        lim.reserve(10, t)
        sent += 1
    assert sent * 10 <= 90 and sent == 9
    assert lim.wait_time(10, t + 1) == pytest.approx(59.0)
    assert lim.wait_time(10, 660.0) == 0  # next minute


def test_limiter_probes_one_request_at_a_time_until_the_venue_reports_usage():
    lim = IpRateLimiter("127.0.0.2", BINANCE_SPOT)
    t = 1800.0
    assert lim.wait_time(5, t) == 0
    lim.reserve(5, t)
    # others may share the IP: no second request before the first answer's header
    assert lim.wait_time(5, t) > 0
    lim.on_response(200, {"X-MBX-USED-WEIGHT-1M": "40"}, t + 0.05)
    for _ in range(3):
        assert lim.wait_time(5, t + 0.1) == 0
        lim.reserve(5, t + 0.1)  # the window's usage is known: concurrent requests ok
    assert lim.inflight == 3
    # a new window starts unconfirmed again
    assert lim.wait_time(5, t + 60) > 0


def test_limiter_honours_the_venue_used_weight_header():
    lim = IpRateLimiter("127.0.0.2", BINANCE_SPOT)
    t = 1200.0
    assert lim.wait_time(50, t) == 0
    lim.reserve(50, t)
    # another process on the same IP used most of the minute: the header says so
    lim.on_response(200, {"x-mbx-used-weight-1m": "5390"}, t + 0.1)
    assert lim.used(t + 0.2) == 5390
    assert lim.wait_time(50, t + 0.2) > 0  # 5390 + 50 > 5400 (90% of 6000)
    # a stale, lower header value never lowers our count below what we reserved
    lim.reserve(5, t + 0.3)
    lim.on_response(200, {"X-MBX-USED-WEIGHT-1M": "100"}, t + 0.3)
    assert lim.used(t + 0.3) == 5395


def test_429_throttles_for_retry_after_then_418_bans():
    lim = IpRateLimiter("127.0.0.3", BINANCE_SPOT)
    t = 5000.0
    v = lim.on_response(429, {"Retry-After": "7"}, t)
    assert v.state is IpState.THROTTLED and v.retry_after_s == pytest.approx(7)
    assert lim.state(t + 6.9) is IpState.THROTTLED
    assert lim.wait_time(1, t + 1) == pytest.approx(6)
    assert lim.state(t + 7.01) is IpState.HEALTHY
    v = lim.on_response(418, {"Retry-After": "120"}, t + 8)
    assert v.state is IpState.BANNED
    assert lim.state(t + 100) is IpState.BANNED
    # a throttle arriving during a ban neither shortens nor downgrades it
    lim.on_response(429, {"Retry-After": "1"}, t + 10)
    assert lim.state(t + 100) is IpState.BANNED
    assert lim.state(t + 128.5) is IpState.HEALTHY


def test_ban_without_retry_after_uses_the_venue_default():
    lim = IpRateLimiter("127.0.0.4", BYBIT)  # Bybit bans with 403 and no Retry-After
    lim.on_response(403, {}, 10.0)
    assert lim.state(10.0 + BYBIT.default_ban_s - 1) is IpState.BANNED
    assert lim.state(10.0 + BYBIT.default_ban_s + 1) is IpState.HEALTHY


def test_retry_after_parsing():
    assert parse_retry_after("12", 0) == 12
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("garbage", 0) is None
    # HTTP-date form
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == pytest.approx(60.0)


# -- sharding -------------------------------------------------------------------------------


def test_assignment_is_deterministic_and_spread():
    a = assign(SYMBOLS, EIPS)
    assert a == assign(list(reversed(SYMBOLS)), list(reversed(EIPS)))
    counts = Counter(a.values())
    assert set(counts) == set(EIPS)
    assert max(counts.values()) < 2.0 * len(SYMBOLS) / len(EIPS)


@pytest.mark.parametrize("down", [EIPS[0], EIPS[4], EIPS[9]])
def test_failover_moves_only_the_failed_ips_symbols_and_back(down):
    before = assign(SYMBOLS, EIPS)
    healthy = [ip for ip in EIPS if ip != down]
    during = assign(SYMBOLS, EIPS, healthy)
    changed = moved(before, during)
    owned = {s for s, ip in before.items() if ip == down}
    assert set(changed) == owned and owned  # exactly the failed IP's symbols
    assert all(new != down for _, new in changed.values())
    spread = Counter(new for _, new in changed.values())
    assert len(spread) >= 5, "a failed IP's symbols spread over the others, not onto one"
    assert assign(SYMBOLS, EIPS, EIPS) == before  # recovery restores the original map


def test_adding_an_ip_moves_about_one_share_and_only_to_the_new_ip():
    before = assign(SYMBOLS, EIPS)
    new = "127.0.0.12"
    after = assign(SYMBOLS, EIPS + [new])
    changed = moved(before, after)
    assert changed and all(n == new for _, n in changed.values())
    assert len(changed) < 2 * len(SYMBOLS) / 11


def test_no_healthy_ip_keeps_symbols_home():
    assert assign(SYMBOLS, EIPS, []) == assign(SYMBOLS, EIPS)


def test_preference_starts_with_home():
    for s in SYMBOLS[:50]:
        assert preference(s, EIPS)[0] == home_ip(s, EIPS)


def test_connection_plan_bounds_size_and_keeps_own_connections_on_failover():
    plan = plan_connections(SYMBOLS, EIPS, max_symbols_per_connection=16)
    assert all(len(c.symbols) <= 16 for c in plan)
    assert sorted(s for c in plan for s in c.symbols) == sorted(SYMBOLS)
    down = EIPS[2]
    plan2 = plan_connections(SYMBOLS, EIPS, [ip for ip in EIPS if ip != down], 16)
    # every connection of a healthy IP's own symbols is untouched; the failed IP's symbols
    # ride new failover connections on the others
    kept = {c for c in plan if c.ip != down}
    assert kept <= set(plan2)
    new = set(plan2) - set(plan)
    assert new and all(c.is_failover and c.home == down for c in new)
    assert plan_connections(SYMBOLS, EIPS, EIPS, 16) == plan


# -- dedup ----------------------------------------------------------------------------------


def test_dedup_window_drops_repeats_and_stays_bounded():
    d = DedupWindow(capacity=3)
    assert [d.first_time(k) for k in "abcab"] == [True, True, True, False, False]
    assert d.first_time("d") is True  # evicts "a"
    assert len(d) == 3
    assert d.first_time("a") is True  # outside the window again
    assert d.duplicates == 2


# -- config ---------------------------------------------------------------------------------


def test_shard_config_validates_and_maps_native_symbols(tmp_path):
    cfg = ShardConfig("binance-spot-0", "binance", "spot", ("BTC-USDT", "ETH-BTC"), tuple(EIPS[:2]))
    assert cfg.native_symbols == ("BTCUSDT", "ETHBTC")
    assert cfg.endpoints.rest == "https://api.binance.com"
    assert cfg.service_tag == "collector:binance-spot-0"
    with pytest.raises(ConfigError):
        ShardConfig("Bad Name", "binance", "spot", ("BTC-USDT",))
    with pytest.raises(ConfigError):
        ShardConfig("x", "binance", "spot", ("BTC-USDT-PERP",))  # perp symbol in a spot shard
    with pytest.raises(ConfigError):
        ShardConfig("x", "binance", "spot", ("BTC-USDT",), ("not-an-ip",))
    with pytest.raises(ConfigError):
        ShardConfig("x", "binance", "spot", ("../etc",))
    p = tmp_path / "collectors.yaml"
    p.write_text(
        "defaults:\n  egress_ips: [127.0.0.2, 127.0.0.3]\n"
        "shards:\n"
        "  - {name: a, exchange: okx, market: perp, symbols: [BTC-USDT-PERP]}\n"
        "  - {name: b, exchange: bybit, market: spot, symbols: [ETH-USDT], enabled: false}\n"
    )
    shards = load_shards(p)
    assert [s.name for s in shards] == ["a", "b"]
    assert shards[0].egress_ips == ("127.0.0.2", "127.0.0.3")
    assert shards[0].native_symbols == ("BTC-USDT-SWAP",)
    assert shards[1].enabled is False
    assert ShardConfig.from_dict(shards[0].to_dict()) == shards[0]
    with pytest.raises(ConfigError):
        parse_shards(
            {"shards": [{"name": "a", "exchange": "okx", "market": "spot", "symbols": ["BTC-USDT"], "bogus": 1}]}
        )
    with pytest.raises(ConfigError):
        parse_shards({"shards": [{"name": "a", "exchange": "okx", "market": "spot", "symbols": ["BTC-USDT"]}] * 2})
    assert load_shards(tmp_path / "missing.yaml") == []
    # adapter options (tuples in code) survive the YAML round trip the supervisor reads
    opt = ShardConfig("c", "binance", "spot", ("BTC-USDT",), adapter_options={"streams": ("depth@100ms", "trade")})
    dump_shards([opt], tmp_path / "again.yaml")
    (back,) = load_shards(tmp_path / "again.yaml")
    assert list(back.adapter_options["streams"]) == ["depth@100ms", "trade"] and back.symbols == opt.symbols

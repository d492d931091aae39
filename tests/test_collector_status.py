"""Live collection by default, and what `ticklake status` says about each collector shard.

Real shards (ShardRunner, the real broker) against a venue that cannot be reached, the way
this machine (no internet) or a firewalled one sees the real venues: a closed local port
(connection refused) and a host in the reserved `.invalid` domain (DNS fails everywhere,
RFC 6761); and against the exchange emulator, where the shard is connected. The reports the
shards write are read back through the same code `ticklake status` uses.
"""

from __future__ import annotations

import asyncio
import json
import time

import yaml

from collectors.config import (
    DEFAULT_COLLECTORS_YAML,
    ShardConfig,
    dump_shards,
    ensure_default_config,
    parse_shards,
)
from collectors.status import collectors_status, explain, status_file
from schemas.model import Exchange, Market
from streaming.kafka.broker import find_free_port
from tests.support.collectors import (
    RunningShard,
    ensure_collector_topics,
    synthetic_okx_spot,
    unique,
    wait_until,
)


def test_default_config_collects_btc_and_eth_on_every_venue_and_is_never_overwritten(tmp_path):
    shards = parse_shards(yaml.safe_load(DEFAULT_COLLECTORS_YAML))
    pairs = {(s.exchange, s.market) for s in shards}
    assert pairs == {
        (x, m) for x in (Exchange.BINANCE, Exchange.BYBIT, Exchange.OKX) for m in (Market.SPOT, Market.PERP)
    }
    for s in shards:
        assert {sym.split("-")[0] for sym in s.symbols} == {"BTC", "ETH"} and s.enabled
        assert not s.ws_url and not s.rest_url  # the venues' production endpoints
    path = tmp_path / "home" / "collectors.yaml"
    assert ensure_default_config(path) is True
    assert parse_shards(yaml.safe_load(path.read_text())) == shards
    path.write_text("shards: []\n")  # the user's edit stays
    assert ensure_default_config(path) is False and path.read_text() == "shards: []\n"


def test_status_says_why_a_venue_is_unreachable(kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    port = find_free_port()  # nobody listens there: connection refused
    refused = ShardConfig(
        name=unique("refused"),
        exchange=Exchange.BINANCE,
        market=Market.SPOT,
        symbols=("BTC-USDT",),
        ws_url=f"ws://127.0.0.1:{port}",
        rest_url=f"http://127.0.0.1:{port}",
        backoff_cap_s=1.0,
    )
    nodns = ShardConfig(
        name=unique("nodns"),
        exchange=Exchange.OKX,
        market=Market.PERP,
        symbols=("ETH-USDT-PERP",),
        ws_url="wss://ws.venue.invalid:8443",
        rest_url="https://www.venue.invalid",
        backoff_cap_s=1.0,
    )
    home = tmp_path / "home"

    def reports():
        return {s["shard"]: s for s in collectors_status(home, [refused, nodns])}

    async def scenario():
        runs = [
            RunningShard(
                cfg,
                bootstrap,
                status_path=status_file(cfg.name, home),
                status_interval_s=0.2,
                instruments_timeout_s=1.0,
            )
            for cfg in (refused, nodns)
        ]
        for r in runs:
            r.task = asyncio.create_task(r.runner.run(r.stop))
        try:
            # Still fetching reference data over REST: already unreachable, with the reason.
            assert await wait_until(lambda: all(s["state"] == "unreachable" for s in reports().values()), 20)
            early = reports()
            # Then the websocket connects fail too, and keep failing (it retries forever).
            assert await wait_until(
                lambda: all(
                    s["connections"] and all(c["failures"] >= 2 for c in s["connections"]) for s in reports().values()
                ),
                30,
            )
            return early, reports()
        finally:
            for r in runs:
                await r.__aexit__(None, None, None)

    early, late = asyncio.run(scenario())
    for st in (early, late):
        a, b = st[refused.name], st[nodns.name]
        assert a["state"] == b["state"] == "unreachable" and not a["connected"] and not b["connected"]
        assert a["last_frame_age_s"] is None and b["last_frame_age_s"] is None
        assert f"127.0.0.1:{port} refused" in a["reason"], a["reason"]
        assert "DNS lookup of" in b["reason"] and "venue.invalid failed" in b["reason"], b["reason"]
        assert "no internet access" in b["reason"]
    assert late[nodns.name]["connections"][0]["url"] == "wss://ws.venue.invalid:8443/ws/v5/public"
    # After the runs stopped, the reports say so (not a stale "unreachable").
    assert {s["state"] for s in collectors_status(home, [refused, nodns])} == {"stopped"}


def test_status_shows_a_connected_shard_and_its_last_frame_age(kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    home = tmp_path / "home"

    async def scenario():
        async with (
            synthetic_okx_spot("live") as cfg,
            RunningShard(cfg, bootstrap, status_path=status_file(cfg.name, home), status_interval_s=0.2),
        ):
            assert await wait_until(
                lambda: (
                    collectors_status(home, [cfg])[0]["state"] == "connected"
                    and collectors_status(home, [cfg])[0]["last_frame_age_s"] is not None
                ),
                30,
            )
            return cfg, collectors_status(home, [cfg])[0]

    cfg, st = asyncio.run(scenario())
    assert st["connected"] is True and st["reason"] == "" and st["last_frame_age_s"] < 5
    assert st["frames_in"] > 0 and st["connections"][0]["connected"]
    # A report nobody refreshes any more (the process died) is called out as such.
    path = status_file(cfg.name, home)
    rep = json.loads(path.read_text())
    rep.update(state="connected", updated_at=time.time() - 120)
    path.write_text(json.dumps(rep))
    stale = collectors_status(home, [cfg])[0]
    assert stale["state"] == "no report" and not stale["connected"] and "120s ago" in stale["reason"]


def test_stack_status_lists_every_configured_shard(ticklake_home, capsys):
    """`ticklake status` (JSON and text) has a line per shard of collectors.yaml, also for
    shards whose run never started."""
    from pipelines.local import stack
    from pipelines.local.cli import _print_collectors

    path = stack.collectors_file(ticklake_home)
    ensure_default_config(path)
    cfg = parse_shards(yaml.safe_load(path.read_text()))
    dump_shards([*cfg[:5], cfg[5].with_overrides(enabled=False)], path)
    col = stack._collectors_status(ticklake_home)
    assert col["config"] == str(path) and [s["shard"] for s in col["shards"]] == [s.name for s in cfg]
    assert {s["state"] for s in col["shards"][:5]} == {"not running"}
    assert col["shards"][5]["state"] == "disabled"
    _print_collectors(col)
    out = capsys.readouterr().out
    assert "binance-spot" in out and "NOT RUNNING" in out and "its run has not started" in out


def test_explain_names_the_cause():
    url = "wss://stream.binance.com:9443/stream?streams=btcusdt@trade"
    assert explain("connect failed: gaierror: [Errno -2] Name or service not known", url).startswith(
        "venue unreachable: DNS lookup of stream.binance.com failed"
    )
    assert "timed out" in explain("connect failed: TimeoutError: timed out during opening handshake", url)
    assert "no network route" in explain("connect failed: OSError: [Errno 101] Network is unreachable", url)
    assert "HTTP 451" in explain("connect failed: InvalidStatus: server rejected WebSocket connection: HTTP 451", url)


def test_a_replay_shard_whose_capture_ran_out_is_not_a_problem(kafka_broker, tmp_path):
    """A genuine Binance capture replayed to its end: the emulator sends nothing more, the
    shard's silence watchdog closes the session and it waits to reconnect, so its own report
    reads "unreachable". `status` must say the capture ran out instead of listing a problem
    (this made the acceptance replay's final status check fail now and then)."""
    from collectors.replay import Emulator
    from pipelines.local import replay as stack_replay
    from pipelines.local.stack import REPLAY, _settle_replayed_shards, collector_problems
    from workloads.samples import SAMPLES

    bootstrap = kafka_broker.bootstrap
    ensure_collector_topics(bootstrap)
    home = tmp_path / "home"

    async def scenario():
        emu = Emulator(server_ping_s=5)
        emu.play_capture(SAMPLES / "binance" / "cryptofeed_BINANCE.ws.1.0", speed=None)
        await emu.start()
        # A short watchdog, and a long wait before reconnecting: the silent window lasts.
        [cfg] = emu.shard_configs(unique("exhausted"), watchdog_s=1.0, backoff_base_s=20.0, backoff_cap_s=20.0)
        try:
            async with RunningShard(cfg, bootstrap, status_path=status_file(cfg.name, home), status_interval_s=0.2):
                assert await wait_until(lambda: emu.stats()["finished"], 60), emu.stats()["feeds"]
                assert await wait_until(lambda: collectors_status(home, [cfg])[0]["state"] == "unreachable", 30)
                shards = collectors_status(home, [cfg])
                stats = emu.stats()
        finally:
            await emu.stop()
        return cfg, shards, stats

    cfg, shards, stats = asyncio.run(scenario())
    assert "no data arrived (watchdog" in shards[0]["reason"], shards[0]
    assert collector_problems(shards), "the shard's own report calls it a problem"
    exhausted = stack_replay.exhausted_venues(stats)
    assert exhausted == ["binance-spot"], stats["venues"].keys()

    info = {
        "services": {REPLAY: {"shards": [cfg.name], "exhausted_venues": exhausted}},
        "collectors": {"shards": shards},
    }
    _settle_replayed_shards(info)
    [settled] = info["collectors"]["shards"]
    assert settled["state"] == "capture exhausted" and "no frames left" in settled["reason"]
    assert collector_problems(info["collectors"]["shards"]) == []

    # While the venue's capture still plays, the same silence is a problem; so is any failure
    # other than the watchdog's, exhausted or not; and shards of a live config are left alone.
    playing = {**stats, "feeds": [{**f, "finished": False} for f in stats["feeds"]]}
    assert stack_replay.exhausted_venues(playing) == []
    refused = {
        **shards[0],
        "connections": [
            {**c, "last_error": "connect failed: ConnectionRefusedError"} for c in shards[0]["connections"]
        ],
    }
    for services, shard in (
        ({REPLAY: {"shards": [cfg.name], "exhausted_venues": []}}, shards[0]),
        ({REPLAY: {"shards": [cfg.name], "exhausted_venues": exhausted}}, refused),
        ({REPLAY: {"shards": ["another"], "exhausted_venues": exhausted}}, shards[0]),
        ({}, shards[0]),
    ):
        info = {"services": services, "collectors": {"shards": [shard]}}
        _settle_replayed_shards(info)
        assert info["collectors"]["shards"][0]["state"] == "unreachable"
        assert len(collector_problems(info["collectors"]["shards"])) == 1

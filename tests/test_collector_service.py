"""The collector shard as a Dagster job and its supervisor sensor, on a real (temporary)
Dagster instance, the emulator and the real broker."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from collectors.config import ShardConfig, dump_shards
from collectors.replay import Emulator
from pipelines.services import collector as collector_service
from pipelines.services.collector import (
    SERVICE_TAG,
    SHARD_TAG,
    CollectorShardConfig,
    ShardHandle,
    collector_shard,
    collector_supervisor,
    resolve_shard,
    run_shard_until_stopped,
    shard_run_config,
    shard_tags,
)
from resources.kafka import KafkaResource
from tests.support.collectors import (
    EIPS,
    ensure_collector_topics,
    producer_config,
    shard_events,
    unique,
)


def _requests(result) -> dict[str, dict]:
    if isinstance(result, dg.SkipReason):
        return {}
    return {r.tags[SHARD_TAG]: {"tags": r.tags, "run_config": r.run_config} for r in result}


def _shards(tmp_path, monkeypatch, shards: list[ShardConfig]):
    path = dump_shards(shards, tmp_path / "collectors.yaml")
    monkeypatch.setenv("TICKLAKE_COLLECTORS", str(path))
    return path


def test_supervisor_keeps_exactly_one_live_run_per_enabled_shard(tmp_path, monkeypatch):
    assert list(collector_service.defs.jobs) == [collector_shard]
    assert list(collector_service.defs.sensors) == [collector_supervisor]
    _shards(
        tmp_path,
        monkeypatch,
        [
            ShardConfig("alpha", "binance", "spot", ("BTC-USDT",), EIPS[:2]),
            ShardConfig("beta", "okx", "perp", ("BTC-USDT-PERP",)),
            ShardConfig("gamma", "bybit", "spot", ("ETH-USDT",), enabled=False),
        ],
    )
    with dg.instance_for_test() as instance:

        def evaluate():
            return collector_supervisor(dg.build_sensor_context(instance=instance))

        first = _requests(evaluate())
        assert set(first) == {"alpha", "beta"}  # gamma is disabled
        assert first["alpha"]["tags"] == {SERVICE_TAG: "collector:alpha", SHARD_TAG: "alpha"}
        assert first["alpha"]["run_config"] == shard_run_config("alpha")

        def add(name: str, run_id: str, status=DagsterRunStatus.STARTED) -> DagsterRun:
            return instance.add_run(
                DagsterRun(job_name=collector_shard.name, run_id=run_id, status=status, tags=shard_tags(name))
            )

        alpha = add("alpha", "a" * 32)
        assert set(_requests(evaluate())) == {"beta"}  # alpha is alive: no second run
        add("beta", "b" * 32, DagsterRunStatus.STARTING)  # starting counts as alive
        assert isinstance(evaluate(), dg.SkipReason)
        instance.report_run_failed(alpha)  # its worker died
        assert set(_requests(evaluate())) == {"alpha"}
        add("alpha", "c" * 32)
        # a run of a shard that is not enabled (anymore) is canceled, and not replaced
        add("gamma", "d" * 32)
        assert isinstance(evaluate(), dg.SkipReason)
        assert instance.get_run_by_id("d" * 32).status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)
        assert instance.get_run_by_id("c" * 32).status is DagsterRunStatus.STARTED


def test_supervisor_reports_an_invalid_config_instead_of_guessing(tmp_path, monkeypatch):
    p = tmp_path / "collectors.yaml"
    p.write_text("shards:\n  - {name: x, exchange: binance, market: spot, symbols: [NOT A SYMBOL]}\n")
    monkeypatch.setenv("TICKLAKE_COLLECTORS", str(p))
    with dg.instance_for_test() as instance:
        res = collector_supervisor(dg.build_sensor_context(instance=instance))
    assert isinstance(res, dg.SkipReason) and "invalid" in res.skip_message


def test_run_config_resolves_shards_from_file_or_fields(tmp_path, monkeypatch):
    _shards(tmp_path, monkeypatch, [ShardConfig("alpha", "binance", "spot", ("BTC-USDT",), EIPS[:2])])
    cfg = resolve_shard(CollectorShardConfig(shard="alpha", ws_url="ws://127.0.0.1:9"))
    assert cfg.egress_ips == EIPS[:2] and cfg.endpoints.ws == "ws://127.0.0.1:9"
    cfg = resolve_shard(CollectorShardConfig(exchange="okx", market="spot", symbols=["ETH-USDT"]))
    assert cfg.native_symbols == ("ETH-USDT",)
    with pytest.raises(ValueError):
        resolve_shard(CollectorShardConfig(shard="nope"))


class EmulatorThread:
    """The emulator on its own event loop, for code that blocks the main thread (Dagster)."""

    def __init__(self, exchange: str, market: str, **synthetic) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.emu = Emulator(server_ping_s=5)
        self.args = (exchange, market, synthetic)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        ex, mk, syn = self.args

        async def start():
            self.feed = self.emu.play_synthetic(ex, mk, **syn)
            await self.emu.start()

        self.loop.run_until_complete(start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.emu.stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _shard_on(emu: Emulator, name: str) -> ShardConfig:
    ep = emu.endpoints("binance", "spot")
    return ShardConfig(
        name, "binance", "spot", ("SYN0-USDT", "SYN1-USDT", "SYN2-USDT"), EIPS[:2], ws_url=ep.ws, rest_url=ep.rest
    )


def test_collector_job_runs_a_shard_under_dagster(kafka_broker, tmp_path, monkeypatch):
    ensure_collector_topics(kafka_broker.bootstrap)
    et = EmulatorThread("binance", "spot", n_symbols=3, rate=500)
    try:
        name = unique("job")
        _shards(tmp_path, monkeypatch, [_shard_on(et.emu, name)])
        with dg.instance_for_test() as instance:
            result = collector_shard.execute_in_process(
                run_config=shard_run_config(name, max_seconds=5.0),
                resources={"kafka": KafkaResource(bootstrap_servers=kafka_broker.bootstrap)},
                instance=instance,
                tags=shard_tags(name),
            )
            assert result.success
            assert result.dagster_run.tags[SERVICE_TAG] == f"collector:{name}"
            logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
            assert any(f"collector {name} stopped" in m for m in logs)
    finally:
        et.stop()
    events = shard_events(kafka_broker.bootstrap, name, "binance")
    assert len(events) > 500
    assert {e.symbol for e in events} == {"SYN0-USDT", "SYN1-USDT", "SYN2-USDT"}


def test_termination_closes_and_flushes_before_returning(kafka_broker, sigint_raises):
    """An interrupt in the supervising thread (what a run termination delivers) stops the
    shard only after the producer flushed: every record it counted is on the broker."""
    ensure_collector_topics(kafka_broker.bootstrap)
    et = EmulatorThread("binance", "spot", n_symbols=3, rate=1500)
    name = unique("term")
    handle = ShardHandle()
    main = threading.get_ident()

    def interrupt_when_busy():
        handle.started.wait(30)
        deadline = time.monotonic() + 60
        while handle.stats.events_out < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_when_busy, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_shard_until_stopped(
                dg.get_dagster_logger(), _shard_on(et.emu, name), producer_config(kafka_broker.bootstrap), handle=handle
            )
    finally:
        et.stop()
    st = handle.stats
    assert st.events_out >= 2000
    assert st.delivered == st.events_out and st.delivery_errors == 0
    assert not handle.runner.workers  # every connection closed
    assert len(shard_events(kafka_broker.bootstrap, name, "binance")) == st.events_out


def test_sigterm_stops_a_command_line_shard_cleanly(kafka_broker, tmp_path):
    """Outside Dagster: SIGTERM closes the connections and flushes before the process exits."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    ensure_collector_topics(kafka_broker.bootstrap)
    et = EmulatorThread("binance", "spot", n_symbols=3, rate=1000)
    name = unique("sigterm")
    path = dump_shards([_shard_on(et.emu, name)], tmp_path / "collectors.yaml")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen(
        [sys.executable, "-m", "collectors.runner", name, "--config", str(path), "--bootstrap", kafka_broker.bootstrap],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(6.0)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        et.stop()
    assert p.returncode == 0, err[-2000:]
    final = [json.loads(line) for line in err.splitlines() if line.startswith("{") and '"shard stopped"' in line]
    assert final and final[-1]["unflushed"] == 0
    out = final[-1]["events_out"]
    assert out > 1000 and final[-1]["delivered"] == out
    assert len(shard_events(kafka_broker.bootstrap, name, "binance")) == out

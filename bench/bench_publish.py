"""Collector publish path and whole shard loop, each beside a baseline from the same run.

1. raw-topic publish rate: the shard's producer path (collectors.runner.Publisher: topic
   routing, Envelope encode with headers, idempotent zstd producer with a delivery callback)
   against a bare confluent-kafka producer with the same settings sending the same records
   pre-serialized. Events are the genuine hftbacktest BTCUSDT capture run through the Binance
   adapter (depth diffs, trades, bookTicker), repeated up to --events.
2. shard loop: a ShardRunner (websocket -> adapter parse -> book -> dedup -> publish) fed by
   the exchange emulator's synthetic Binance load in another process, in frames/s and
   frames per CPU-second of the shard process, against a receive-only websocket client on
   the same emulator (the floor: reading the socket and nothing else).

Every measured phase runs in its own spawned process, so peak RSS is that phase's own.
Latency, p50/p99 over a 1-in-50 sample: publish paths, produce() -> broker acknowledgement
(librdkafka's per-message latency; the shard path's is taken in a separate run because the
shard asks for failure reports only); shard loop, frame receipt -> acknowledgement.
Broker: the embedded Tansu broker started here (on this machine it shares the two cores
with the emulator and the measured process, so it bounds wall-clock rates).

    python bench/bench_publish.py [--events 200000] [--seconds 10] [--symbols 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workloads.samples import BINANCE_SPOT_HFT  # noqa: E402 - after the sys.path line above

CAPTURE = BINANCE_SPOT_HFT
SAMPLE_EVERY = 50


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def capture_envelopes(n: int):
    """n Envelopes from the genuine capture through the Binance adapter (cycled)."""
    from collectors.capture import REST, read
    from collectors.exchanges.base import RestRequest
    from collectors.exchanges.binance import BinanceSpotAdapter

    adapter = BinanceSpotAdapter(shard="bench", streams=("depth@100ms", "trade", "bookTicker"))
    events = []
    for rec in read(CAPTURE):
        if rec.kind == REST:
            req = RestRequest("/api/v3/depth", (("symbol", "BTCUSDT"), ("limit", "1000")), 50, native_symbol="BTCUSDT")
            res = adapter.on_rest(req, 200, rec.payload, rec.recv_ts_us)
        else:
            res = adapter.on_frame(rec.payload, rec.recv_ts_us)
        events.extend(res.events)
    if not events:
        raise SystemExit("the capture produced no events")
    return [events[i % len(events)] for i in range(n)]


# -- phase 1: publish paths ------------------------------------------------------------------------


def phase_bare(bootstrap: str, n: int, q: mp.Queue) -> None:
    from confluent_kafka import Producer

    from collectors.config import ShardConfig
    from collectors.runner import Publisher, ShardStats
    from runtime import kafka_config as kc
    from schemas.serde import encode

    envs = capture_envelopes(n)
    router = Publisher(ShardConfig("bench", "binance", "spot", ("BTC-USDT",)), None, ShardStats())  # type: ignore[arg-type]
    records = [(router.topic_for(e), encode(e)) for e in envs]
    del envs
    p = Producer(kc.producer_config(kc.KafkaConnection(bootstrap), client_id="bench-bare"))
    lat: list[float] = []

    def cb(err, msg):
        if err is None:
            lat.append(msg.latency())

    t0 = time.perf_counter()
    c0 = time.process_time()
    for i, (topic, rec) in enumerate(records):
        while True:
            try:
                if i % SAMPLE_EVERY:
                    p.produce(topic, rec.value, rec.key, headers=rec.headers)
                else:
                    p.produce(topic, rec.value, rec.key, headers=rec.headers, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(120)
    el = time.perf_counter() - t0
    q.put(
        {
            "name": "bare producer (pre-serialized)",
            "n": n,
            "s": el,
            "cpu": time.process_time() - c0,
            "p50_ms": _pct(lat, 0.5) * 1e3,
            "p99_ms": _pct(lat, 0.99) * 1e3,
            "rss_mb": _rss_mb(),
            "unflushed": left,
        }
    )


def phase_runner(bootstrap: str, n: int, q: mp.Queue) -> None:
    """The shard's own publish path, configured as the shard configures it."""
    from collectors.config import ShardConfig
    from collectors.runner import Publisher, ShardStats
    from runtime import kafka_config as kc

    envs = capture_envelopes(n)
    stats = ShardStats()
    pub = Publisher(
        ShardConfig("bench", "binance", "spot", ("BTC-USDT",)),
        kc.producer_config(kc.KafkaConnection(bootstrap), client_id="bench-runner"),
        stats,
    )
    t0 = time.perf_counter()
    c0 = time.process_time()
    for e in envs:
        pub.publish(e)
    left = pub.flush(120)
    el = time.perf_counter() - t0
    assert stats.delivered == n and stats.delivery_errors == 0, stats
    q.put(
        {
            "name": "shard Publisher (encode + route + produce)",
            "n": n,
            "s": el,
            "cpu": time.process_time() - c0,
            "rss_mb": _rss_mb(),
            "unflushed": left,
        }
    )


def phase_runner_latency(bootstrap: str, n: int, q: mp.Queue) -> None:
    """Latency of the same path: the shard asks for failure reports only, so this run uses a
    Producer with per-message reports and samples librdkafka's produce->ack latency."""
    from confluent_kafka import Producer

    from collectors.config import ShardConfig
    from collectors.runner import Publisher, ShardStats
    from runtime import kafka_config as kc

    envs = capture_envelopes(n)
    pub = Publisher(
        ShardConfig("bench", "binance", "spot", ("BTC-USDT",)),
        Producer(kc.producer_config(kc.KafkaConnection(bootstrap), client_id="bench-lat")),
        ShardStats(),
    )
    lat: list[float] = []
    inner, count = pub._on_delivery, [0]

    def cb(err, msg):
        inner(err, msg)
        count[0] += 1
        if err is None and count[0] % SAMPLE_EVERY == 0:
            lat.append(msg.latency())

    pub._on_delivery = cb
    for e in envs:
        pub.publish(e)
    pub.flush(120)
    q.put({"p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3})


# -- phase 2: shard loop ---------------------------------------------------------------------------


def phase_receive(venue: dict, seconds: float, q: mp.Queue) -> None:
    from websockets.asyncio.client import connect

    from collectors.exchanges.binance import BinanceSpotAdapter

    urls = BinanceSpotAdapter().ws_urls(venue["ws"], venue["symbols"])

    async def main():
        counts = [0]

        async def read(url):
            async with connect(url, max_queue=1024, compression=None, max_size=None) as ws:
                async for _ in ws:
                    counts[0] += 1

        tasks = [asyncio.create_task(read(u)) for u in urls]
        await asyncio.sleep(2.0)  # warm-up
        n0, t0, c0 = counts[0], time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        n1, el, cpu = counts[0], time.perf_counter() - t0, time.process_time() - c0
        for t in tasks:
            t.cancel()
        return n1 - n0, el, cpu

    n, el, cpu = asyncio.run(main())
    q.put(
        {
            "name": "receive-only websocket client",
            "n": n,
            "s": el,
            "cpu": cpu,
            "p50_ms": float("nan"),
            "p99_ms": float("nan"),
            "rss_mb": _rss_mb(),
        }
    )


def phase_shard(venue: dict, bootstrap: str, seconds: float, q: mp.Queue) -> None:
    from collectors.config import ShardConfig
    from collectors.runner import ShardRunner
    from runtime import kafka_config as kc
    from schemas.symbols import canonical_symbol

    cfg = ShardConfig(
        "bench-shard",
        "binance",
        "spot",
        tuple(canonical_symbol("binance", "spot", s) for s in venue["symbols"]),
        ws_url=venue["ws"],
        rest_url=venue["rest"],
        max_symbols_per_connection=len(venue["symbols"]),
        watchdog_s=60,
    )

    async def main():
        runner = ShardRunner(
            cfg, producer_config=kc.producer_config(kc.KafkaConnection(bootstrap), client_id="bench-shard")
        )
        lat: list[float] = []
        # Frame-to-ack latency: a frame's ingest_ts (receipt) to the moment the producer
        # queue no longer holds it, sampled by timing how long each sampled record takes to
        # leave the queue (polled every 5 ms).
        pending: list[tuple[int, float]] = []
        pub = runner.publisher
        orig_publish = pub.publish

        def publish(env):
            orig_publish(env)
            if pub._produced % SAMPLE_EVERY == 0:
                pending.append((pub._produced, env.ingest_ts / 1e6))

        pub.publish = publish

        async def sampler():
            while True:
                await asyncio.sleep(0.005)
                acked = pub._produced - len(pub.producer)
                now = time.time()
                while pending and pending[0][0] <= acked:
                    lat.append(now - pending.pop(0)[1])

        samp = asyncio.create_task(sampler())
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(3.0)  # connect, snapshots, warm-up
        s = runner.stats
        n0, e0, t0, c0 = s.frames_in, s.events_out, time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        n1, e1, el, cpu = s.frames_in, s.events_out, time.perf_counter() - t0, time.process_time() - c0
        stop.set()
        await task
        samp.cancel()
        return n1 - n0, e1 - e0, el, cpu, lat, s

    n, ev, el, cpu, lat, s = asyncio.run(main())
    q.put(
        {
            "name": "shard loop (ws -> parse -> book -> publish)",
            "n": n,
            "events": ev,
            "s": el,
            "cpu": cpu,
            "p50_ms": _pct(lat, 0.5) * 1e3,
            "p99_ms": _pct(lat, 0.99) * 1e3,
            "rss_mb": _rss_mb(),
            "resyncs": sum(s.resyncs.values()),
            "dead_letters": s.dead_letters,
        }
    )


def run_phase(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get(timeout=900)
    p.join(60)
    return res


def show(title: str, base: dict, other: dict, unit: str) -> None:
    def row(r: dict) -> str:
        rate = r["n"] / r["s"]
        per_core = r["n"] / r["cpu"] if r["cpu"] else float("nan")
        return (
            f"  {r['name']:<45} {rate:>11,.0f} {unit}/s  {per_core:>11,.0f} {unit}/cpu-s  "
            f"cpu {r['cpu'] / r['s']:>4.0%}  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
            f"peak RSS {r['rss_mb']:>6.0f} MB"
        )

    print(title)
    print(row(base) + "   [baseline]")
    print(row(other))
    ratio = (other["n"] / other["s"]) / (base["n"] / base["s"])
    ratio_cpu = (other["n"] / other["cpu"]) / (base["n"] / base["cpu"])
    print(f"  ratio (measured / baseline): {ratio:.2f}x throughput, {ratio_cpu:.2f}x per cpu-second\n")
    from figures import emit

    what = title.split(",")[0].split(" (")[0].lstrip("0123456789. ")
    emit(f"{what}: {other['name']}", other["n"] / other["s"], f"{unit}/s", base["name"], base["n"] / base["s"])
    if base["cpu"] and other["cpu"]:
        emit(
            f"{what} per cpu-second: {other['name']}",
            other["n"] / other["cpu"],
            f"{unit}/cpu-s",
            base["name"],
            base["n"] / base["cpu"],
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--symbols", type=int, default=20)
    args = ap.parse_args(argv)
    if not CAPTURE.exists():
        raise SystemExit(f"capture missing: {CAPTURE}")

    from streaming.kafka.broker import EmbeddedBroker
    from streaming.kafka.topic_admin import admin_client, ensure_topics
    from streaming.kafka.topic_config import TopicConfig

    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}\n")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        ensure_topics(admin_client(broker.bootstrap), TopicConfig.local(3))
        run_phase(phase_bare, broker.bootstrap, min(args.events, 50_000))  # warm the broker up
        bare = run_phase(phase_bare, broker.bootstrap, args.events)
        ours = run_phase(phase_runner, broker.bootstrap, args.events)
        ours.update(run_phase(phase_runner_latency, broker.bootstrap, args.events))
        show(f"1. raw-topic publish, {args.events:,} genuine Binance events", bare, ours, "msg")

        state = Path(tmp) / "emulator.json"
        emu = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collectors.replay",
                "--synthetic",
                f"binance:spot:{args.symbols}",
                "--state-file",
                str(state),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not state.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            venue = json.loads(state.read_text())["venues"]["binance:spot"]
            recv = run_phase(phase_receive, venue, args.seconds)
            shard = run_phase(phase_shard, venue, broker.bootstrap, args.seconds)
        finally:
            emu.terminate()
            emu.wait(20)
        show(
            f"2. shard loop on emulator synthetic load ({args.symbols} Binance spot symbols, max rate)",
            recv,
            shard,
            "frame",
        )
        print(
            f"  shard published {shard['events']:,} events from {shard['n']:,} frames; resyncs "
            f"{shard['resyncs']}, dead letters {shard['dead_letters']}"
        )
        print(
            "  note: frames/s of the shard is bounded by the emulator's output when the shard's cpu is "
            "below 100%; frames per cpu-second is the per-core figure."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

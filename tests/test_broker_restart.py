"""Fault test: the local broker crashes (kill -9) in the middle of a replay, with every service
running, and the stack recovers by itself.

`ticklake up --replay` of the first SLICE_S seconds of the genuine Binance spot BTCUSDT capture at a
speed slow enough that the broker dies under load: collectors publishing raw.*, the normalizer
and feature processor in transactions, the lake sink, ClickHouse live and the pragma publisher
all reading. Nothing is done by hand after the kill: the broker proxy starts the broker again
on the same address and persistent storage, and every client reconnects. Then every trade and
best bid/offer update of the slice is in the lake exactly once (counted from the capture file
here, independently of the code), and `ticklake status` reports every service healthy.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
from pathlib import Path

import pytest

from streaming.kafka.broker import find_free_port
from tests.support.stack import processes_of, ticklake

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "binance" / "hftbacktest_spot_btcusdt_20240808.gz"
#: Capture seconds replayed, and the replay speed: ~15 s of wall time, long enough to kill
#: the broker while the emulator is still serving.
SLICE_S = 30
SPEED = "2"
TIMEOUT_S = 600
#: `ticklake up` on a loaded 2-core machine (8 engineers) took ~9 min once: its own per-service
#: wait (--timeout) and the CLI call's limit are explicit and generous.
UP_TIMEOUT_S = 900
#: The lake not growing for this long after the emulator served the whole slice is a failure.
STALL_S = 180


def capture_slice(dest: Path) -> dict[str, int]:
    """The first SLICE_S seconds of the capture (same name, so the replay reads the same
    format); returns the number of frames per stream kind."""
    counts = {"trade": 0, "bookTicker": 0, "depth": 0}
    with gzip.open(SAMPLE, "rt") as src, gzip.open(dest, "wt") as out:
        first = None
        for line in src:
            ts = int(line.partition(" ")[0])
            first = ts if first is None else first
            if ts - first > SLICE_S * 1_000_000_000:
                break
            out.write(line)
            stream = json.loads(line.partition(" ")[2]).get("stream", "")
            for kind in counts:
                if f"@{kind}" in stream:
                    counts[kind] += 1
    return counts


def children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except (OSError, ValueError):
                pass
    return out


def replay_stats(home) -> dict:
    """The emulator's own counters (records served, finished), read from its control API."""
    from pipelines.local import replay as sr

    source = sr.load_source(home.run_dir)
    return sr.emulator_stats(source.control_url) if source is not None else {}


def lake_counts(home) -> dict[str, tuple[int, int]]:
    from pipelines.local.stack import open_local_catalog

    tables = open_local_catalog(home).ensure_tables()
    out = {}
    for name in ("trades", "tickers", "book_deltas"):
        ids = tables[name].scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()
        out[name] = (len(ids), len(set(ids)))
    return out


@pytest.mark.stack
@pytest.mark.timeout(UP_TIMEOUT_S + 2 * TIMEOUT_S)
def test_broker_killed_under_replay_load_recovers_and_loses_nothing(ticklake_home, tmp_path):
    home = ticklake_home.root
    captures = tmp_path / "captures"
    captures.mkdir()
    expected = capture_slice(captures / SAMPLE.name)
    assert expected["trade"] > 0 and expected["bookTicker"] > 0

    up = ticklake(
        home,
        "up",
        "--port",
        str(find_free_port()),
        "--replay",
        str(captures),
        "--speed",
        SPEED,
        "--timeout",
        str(UP_TIMEOUT_S // 2),
        timeout=UP_TIMEOUT_S,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads(ticklake(home, "status", "--json").stdout)
        proxy = info["services"]["broker"]["pid"]
        [broker] = children(proxy)

        # Under load: kill once the collectors are being served the capture, well before its end.
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            stats = replay_stats(ticklake_home)
            if stats.get("items", 0) or sum(f.get("items", 0) for f in stats.get("feeds", [])):
                break
            assert time.monotonic() < deadline, ("the replay never started", stats)
            time.sleep(0.2)
        time.sleep(2)
        os.kill(broker, signal.SIGKILL)
        assert not replay_stats(ticklake_home).get("finished"), "the replay ended before the broker was killed"

        # The stack restarts the broker by itself (same proxy, a new broker process).
        deadline = time.monotonic() + 60
        while not [c for c in children(proxy) if c != broker]:
            assert time.monotonic() < deadline, "the broker was not restarted"
            time.sleep(0.5)

        # Every trade and best bid/offer update of the slice in the lake exactly once.
        want = {"trades": expected["trade"], "tickers": expected["bookTicker"]}
        deadline = time.monotonic() + TIMEOUT_S
        last, changed = None, time.monotonic()
        while True:
            counts = lake_counts(ticklake_home)
            if all(counts[k][1] >= n for k, n in want.items()):
                break
            if counts != last:
                last, changed = counts, time.monotonic()
            # A lake that stopped growing long after the capture was served has lost records.
            stalled = replay_stats(ticklake_home).get("finished") and time.monotonic() - changed > STALL_S
            assert time.monotonic() < deadline and not stalled, (counts, want)
            time.sleep(2)
        time.sleep(5)  # anything duplicated late would land now
        counts = lake_counts(ticklake_home)
        for name, n in want.items():
            assert counts[name] == (n, n), (name, counts[name], n)
        total, unique = counts["book_deltas"]
        assert total == unique > 0, counts["book_deltas"]

        status = ticklake(home, "status", "--json")
        info = json.loads(status.stdout)
        unhealthy = {k: v.get("detail") for k, v in info["services"].items() if not v.get("healthy")}
        assert not unhealthy, unhealthy
        assert all(h["healthy"] for h in info.get("service_health", [])), info.get("service_health")
        assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
    finally:
        down = ticklake(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_of(home) == {}


@pytest.mark.timeout(180)
@pytest.mark.broker
def test_transaction_open_across_a_broker_kill_commits_with_the_stack_client_config(tmp_path):
    """The normalizer's failure mode, without the stack: a transaction is open (records
    written) when Tansu is killed and restarted by its proxy; then send_offsets_to_transaction
    and commit_transaction must return. With librdkafka's default metadata recovery the client
    re-bootstraps during the outage, decommissions the broker it still needs as group
    coordinator and send_offsets_to_transaction never returns (librdkafka #5511); the stack's
    services get metadata.recovery.strategy=none from service_env."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    from pipelines.local.stack import service_env
    from runtime import kafka_config as kc
    from runtime.home import resolve_home
    from streaming.kafka.broker import EmbeddedBroker
    from streaming.kafka.topic_admin import admin_client, create_topics
    from streaming.kafka.topic_config import HOUR_MS, TopicSpec

    with EmbeddedBroker(data_dir=tmp_path / "broker", log_path=tmp_path / "broker.log") as broker:
        env = service_env(resolve_home(tmp_path / "home"), broker.bootstrap, "t")
        conn = kc.connection_from_env(env)
        create_topics(admin_client(broker.bootstrap), {"in": TopicSpec(1, HOUR_MS), "out": TopicSpec(1, HOUR_MS)}, 1)
        plain = Producer(kc.producer_config(conn))
        for i in range(10):
            plain.produce("in", b"%d" % i)
        plain.flush(30)
        consumer = Consumer(kc.consumer_config(conn, "g"))
        consumer.subscribe(["in"])
        producer = Producer(kc.transactional_producer_config(conn, "t1"))
        producer.init_transactions(30)

        def take(n: int) -> list:
            got: list = []
            deadline = time.monotonic() + 60
            while len(got) < n and time.monotonic() < deadline:
                got += [m for m in consumer.consume(n - len(got), 1) if m.error() is None]
            assert len(got) == n
            return got

        def finish(msgs: list) -> None:
            producer.send_offsets_to_transaction(
                [TopicPartition("in", 0, msgs[-1].offset() + 1)], consumer.consumer_group_metadata(), 30
            )
            producer.commit_transaction(30)

        for attempt in ("before", "across"):
            msgs = take(5)
            producer.begin_transaction()
            for m in msgs:
                producer.produce("out", m.value())
            producer.flush(30)
            if attempt == "across":
                [tansu] = children(broker.pid)
                os.kill(tansu, signal.SIGKILL)
                time.sleep(3)  # the proxy restarts it meanwhile; clients see the outage
            done: list[BaseException | None] = []

            def run(msgs=msgs, done=done) -> None:
                try:
                    finish(msgs)
                    done.append(None)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    done.append(exc)

            t = threading.Thread(target=run, daemon=True)
            t.start()
            t.join(90)
            assert done == [None], f"{attempt} the kill: {done or 'send_offsets/commit never returned'}"
        producer.flush(10)
        consumer.close()

"""Lake sink against a real Tansu broker and a real SQLite Iceberg catalog.

The exactly-once test runs the sink as a separate process and SIGKILLs it at chosen points
(files written but not committed; one table committed, the rest of the batch not), then
restarts it: row counts must equal the distinct source records and event_ids stay unique.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pyiceberg.exceptions import NoSuchTableError

from runtime import kafka_config as kc
from schemas.model import Exchange, Market
from schemas.topics import DlqStage, dlq_topic
from streaming.kafka.broker import EmbeddedBroker
from streaming.kafka.io import plain_consumer, read_all
from streaming.lake.seal import seal_hour
from streaming.lake.sink import LakeSink, SinkConfig, SinkFencedError
from streaming.lake.state import HOUR_US, latest_sink_state
from streaming.lake.watermarks import read_watermarks
from tests.support.lake import (
    create_sink_topics,
    duplicate_ids,
    open_home_catalog,
    produce,
    sink_topics,
    table_rows,
    unique_counts,
)
from tests.support.sink_crash import TEST_HOOK_ENV
from workloads.synthetic import SyntheticMarket, SynthInstrument

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path):
    """A broker of the test's own: the sink reads the project's fixed topic names, which
    other tests in a shared broker may also write to."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        yield b


def market_events(n: int, seed: int = 7, spacing_us: int = 1_500_000):
    return SyntheticMarket(seed=seed).events(n, spacing_us=spacing_us)


def sink_command(bootstrap: str, home, idle_exit_s: float = 2.5) -> list[str]:
    """A hooked run is to be killed by its hook, so it gets a long idle exit: on a loaded machine
    a fetch can come back empty for seconds, and a 2.5 s idle exit then ended the run (exit 0)
    before its n-th commit."""
    return [
        sys.executable,
        "-m",
        "tests.support.sink_crash",  # the sink's python -m entry, with the kill -9 hook of TEST_HOOK_ENV
        "--bootstrap",
        bootstrap,
        "--home",
        str(home.root),
        "--exchange",
        "binance",
        "--market",
        "spot",
        "--batch-max-records",
        "400",
        "--batch-max-ms",
        "300",
        "--idle-exit-s",
        str(idle_exit_s),
        "--allowed-lateness-s",
        "5",
    ]


def sink_env(hook: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(TEST_HOOK_ENV, None)
    if hook:
        env[TEST_HOOK_ENV] = hook
    return env


def run_sink_process(bootstrap: str, home, hook: str | None, timeout: float = 120) -> int:
    proc = subprocess.run(
        sink_command(bootstrap, home, 2.5 if hook is None else 30.0),
        cwd=REPO,
        env=sink_env(hook),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode not in (0, -9):
        raise AssertionError(f"sink exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}")
    return proc.returncode


def kill_after_snapshots(bootstrap: str, home, snapshots: int, timeout: float = 120) -> int | None:
    """Start the sink and SIGKILL it from outside once book_deltas has `snapshots` more
    snapshots: wherever in its loop it happens to be. Returns the exit code."""
    catalog = open_home_catalog(home)

    def count() -> int:
        try:
            return len(catalog.load_table("market.book_deltas").metadata.snapshots)
        except NoSuchTableError:  # the sink has not created it yet
            return 0

    start = count()
    proc = subprocess.Popen(
        sink_command(bootstrap, home), cwd=REPO, env=sink_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and count() < start + snapshots and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def data_files_on_disk(home) -> set[str]:
    return {str(p) for p in home.warehouse_dir.rglob("*.parquet")}


def referenced_files(catalog) -> set[str]:
    out = set()
    for name in ("trades", "book_deltas", "book_snapshots", "tickers"):
        t = catalog.load_table(f"market.{name}")
        out |= {task.file.file_path.removeprefix("file://") for task in t.scan().plan_files()}
    return out


def test_exactly_once_under_kill9(broker, ticklake_home):
    events = market_events(3000)
    dups = events[100:160]  # re-sent copies, as an aborted upstream transaction leaves them
    topics = sink_topics()
    create_sink_topics(broker.bootstrap, topics)
    produce(broker.bootstrap, events + dups, raw=[(topics[0], b"\x00not a protobuf")])
    rng = random.Random(5)
    hooks = [
        f"after-write:{rng.randint(1, 4)}",
        f"after-commit:{rng.randint(1, 4)}",
        f"after-write:{rng.randint(1, 3)}",
        None,
    ]
    codes = [run_sink_process(broker.bootstrap, ticklake_home, h) for h in hooks[:3]]
    assert codes == [-9, -9, -9], codes
    # An outside kill -9 at whatever point the sink has reached (it may also have finished
    # first: the assertions below hold either way), then a clean run to the end.
    kill_after_snapshots(broker.bootstrap, ticklake_home, rng.randint(1, 2))
    catalog = open_home_catalog(ticklake_home)
    expected = unique_counts(events)
    # The sink exits after 2.5 s without records; on a loaded machine a run may stop early,
    # and a further run must then simply continue (bounded, so a real loss still fails).
    for _ in range(3):
        assert run_sink_process(broker.bootstrap, ticklake_home, hooks[3]) == 0
        if all(table_rows(catalog, n).num_rows >= c for n, c in expected.items()):
            break
    for name, n in expected.items():
        rows = table_rows(catalog, name)
        assert rows.num_rows == n, name
        assert duplicate_ids(rows) == [], name
        # The ledger of committed offsets agrees with what the table holds, hour by hour.
        state = latest_sink_state(catalog.load_table(f"market.{name}"))
        ts = rows.column("exchange_ts").cast("int64").to_pylist()
        per_hour: dict[int, int] = {}
        for t in ts:
            per_hour[t - t % HOUR_US] = per_hour.get(t - t % HOUR_US, 0) + 1
        assert {h: c.rows for h, c in state.ledger.items() if c.rows} == per_hour
    # The kills after writing left files no snapshot references: proof the hook hit the gap.
    orphans = data_files_on_disk(ticklake_home) - referenced_files(catalog)
    assert orphans, "expected orphan files from the kills between write and commit"
    # The malformed record went to dlq.lake with its reason: at least once, since dead letters
    # are flushed before the offsets that skip them commit (a kill in between re-sends it; the
    # deterministic dlq-source header identifies the copies).
    consumer = plain_consumer(kc.KafkaConnection(bootstrap_servers=broker.bootstrap), "dlq-check")
    dead = read_all(consumer, [(dlq_topic(DlqStage.LAKE), 0)], idle_s=1.0)
    consumer.close()
    assert 1 <= len(dead)
    assert all(dict(m.headers())["dlq-reason"].startswith(b"undecodable") for m in dead)
    sources = {dict(m.headers())["dlq-source"] for m in dead}
    assert len(sources) == 1 and sources.pop().startswith(topics[0].encode() + b"[")


def test_resume_from_snapshot_offsets_and_topic_reset(tmp_path, ticklake_home):
    topics = sink_topics(Exchange.BYBIT, Market.PERP)
    first = SyntheticMarket(instruments=[_inst("BTC-USDT-PERP"), _inst("ETH-USDT-PERP")], seed=3).events(
        800, spacing_us=2_000_000
    )
    catalog = open_home_catalog(ticklake_home)
    with EmbeddedBroker(log_path=tmp_path / "b1.log") as b1:
        create_sink_topics(b1.bootstrap, topics, partitions=2)
        produce(b1.bootstrap, first[:500])
        s1 = _sink(b1.bootstrap, catalog, topics)
        stats = run_until(s1, records=500)
        s1._publish_lag()  # caught up: the lag gauge says nothing is left behind
        lag_topic = next(t for t in topics if ".trades." in t)
        assert REGISTRY.get_sample_value("ticklake_lake_consumer_lag", {"topic": lag_topic}) == 0.0
        s1.close()
        assert stats.rows == len(first[:500])
        state = latest_sink_state(catalog.load_table("market.trades"))
        # Offsets recorded are exactly the records per partition of the table's topic.
        trade_topic = next(t for t in topics if ".trades." in t)
        assert sum(state.offsets[trade_topic].values()) == sum(1 for e in first[:500] if e.HasField("trade"))
        produce(b1.bootstrap, first[500:])
        sink = _sink(b1.bootstrap, catalog, topics)
        start = sink.start()
        for p, off in state.offsets[trade_topic].items():
            assert start[(trade_topic, p)] == off  # resumes where the snapshot says, not from 0
        stats2 = run_until(sink, records=len(first) - 500)
        sink.close()
        assert stats2.rows == len(first) - 500 and stats2.duplicates == 0
    # A new broker: every topic is recreated (new topic ids, offsets restart at 0).
    more = SyntheticMarket(instruments=[_inst("SOL-USDT-PERP")], seed=4).events(200, spacing_us=2_000_000)
    with EmbeddedBroker(log_path=tmp_path / "b2.log") as b2:
        create_sink_topics(b2.bootstrap, topics, partitions=2)
        produce(b2.bootstrap, first[:300] + more)  # replayed old records and new ones
        sink3 = _sink(b2.bootstrap, catalog, topics)
        stats3 = run_until(sink3, records=300 + len(more))
        sink3.close()
        # Without topic ids (other brokers), a stored offset past the partition's end is the
        # reset signal: the fetch-reported high watermark exposes it.
        tp = (trade_topic, 0)
        assert sink3._offsets_beyond_end({tp: 10_000, (trade_topic, 1): 1}) == {tp}
    assert stats3.duplicates == 300 and stats3.rows == len(more)
    for name, n in unique_counts(first + more).items():
        rows = table_rows(catalog, name)
        assert rows.num_rows == n and duplicate_ids(rows) == []
    wms = read_watermarks(catalog)
    assert wms["trades"] is not None and wms["funding"] is None
    # The live gauge shows the same watermark the snapshot summary stores.
    gauge = REGISTRY.get_sample_value("ticklake_lake_watermark_seconds", {"table": "trades"})
    assert gauge == wms["trades"].timestamp()


def run_until(sink: LakeSink, rows: int | None = None, records: int | None = None, limit_s: float = 120):
    """Drive the sink batch by batch until it has committed `rows` rows / consumed `records`
    records (the limit only turns a hang into a failure); returns its stats."""
    if sink.consumer is None:
        sink.start()
    deadline = time.monotonic() + limit_s
    while (rows is not None and sink.stats.rows < rows) or (records is not None and sink.stats.records_in < records):
        assert time.monotonic() < deadline, f"sink stuck at {sink.stats}"
        sink.run_once()
    return sink.stats


def _inst(symbol: str) -> SynthInstrument:
    return SynthInstrument(symbol, exchange=Exchange.BYBIT, market=Market.PERP, mid=6_000_000)


def _sink(bootstrap: str, catalog, topics: list[str]) -> LakeSink:
    return LakeSink(
        kc.KafkaConnection(bootstrap_servers=bootstrap),
        catalog,
        SinkConfig(topics=topics, batch_max_records=250, batch_max_ms=200, allowed_lateness_us=5_000_000),
    )


def test_commit_races_a_seal_but_a_second_sink_is_fenced(broker, ticklake_home):
    """A seal committing under the sink makes the sink retry on the new metadata; a second
    sink (stale view of the sink bookkeeping) is refused instead of double-applying."""
    topics = sink_topics()
    create_sink_topics(broker.bootstrap, topics, partitions=1)
    events = market_events(1200, seed=9, spacing_us=3_000_000)  # ~1 h of event time
    produce(broker.bootstrap, events[:600])
    catalog = open_home_catalog(ticklake_home)
    a = _sink(broker.bootstrap, catalog, topics)
    a.start()
    run_until(a, rows=600)
    b = _sink(broker.bootstrap, catalog, topics)  # starts from a's committed offsets
    b.start()
    # A seal commits to book_deltas behind a's back: a's table object is now stale.
    deltas = catalog.load_table("market.book_deltas")
    seal_hour(deltas, events[0].exchange_ts - events[0].exchange_ts % HOUR_US)
    produce(broker.bootstrap, events[600:])
    run_until(a, rows=len(events))
    assert a.stats.commit_retries >= 1  # its book_deltas commit lost to the seal, then landed
    # b still believes the last sink snapshot is the one it loaded at start.
    with pytest.raises(SinkFencedError, match="only one lake sink may run"):
        run_until(b, rows=len(events))
    a.close()
    b.close()
    for name, n in unique_counts(events).items():
        rows = table_rows(catalog, name)
        assert rows.num_rows == n and duplicate_ids(rows) == []

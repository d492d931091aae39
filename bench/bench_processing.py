"""Stream processing benchmark: throughput per core and end-to-end latency at fixed rates.

Prints, from one run on this machine:
  * baseline: the bare consume -> produce rate of the embedded broker (the same
    transactional loop with an identity transform), so processor figures can be read
    against what Kafka plumbing alone costs here;
  * events/s per core of the normalizer and the feature processor, both in memory (pure
    logic) and through the broker (consume, transform, produce, commit);
  * end-to-end latency p50/p99 from each event's exchange_ts to the arrival of the feature
    row containing it (read_committed consumer), at fixed input rates, with the normalizer
    and feature processor running as separate processes as in production, beside the
    platform's latency target (99p ingest -> feature < 2 s; docs/decisions.md, Latency SLO);
  * the physical floor of that latency, run interleaved with it at each rate: the same
    generator -> raw.* -> hop -> hop -> read_committed reader through the same broker, the
    two hops bare transactional relays (RelayLoop, no feature logic): produce -> visible
    p50/p99, and the earliest each window's row could be visible (floor_run).

Input is the synthetic market of workloads/synthetic.py (three instruments, books and
trades), stamped with the current time when sent.

    python bench/bench_processing.py [--events 60000] [--rates 2000,5000,20000,50000] [--duration 8]
        [--latency-only] [--no-floor]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
from confluent_kafka import Consumer, Message, TopicPartition

from bench.figures import emit
from collectors.config import ShardConfig
from collectors.runner import Publisher, ShardStats
from features.inputs import events_from_envelopes
from features.records import decode_row
from features.spec import WINDOW_US
from runtime import kafka_config as kc
from runtime.child_process import dying_with_this_process
from runtime.service_loop import GC_THRESHOLDS
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import event_id_from, id_head, stamp_event_id
from schemas.model import Exchange, Market
from schemas.serde import CONTENT_TYPE, SCHEMA_HEADER, SCHEMA_VERSION, encode
from schemas.topics import feature_topic
from streaming.kafka.broker import EmbeddedBroker
from streaming.kafka.io import partitions_for, plain_consumer, watermarks
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import TopicSpec
from streaming.kafka.upstream import APPEND_MARGIN_S
from streaming.processors.feature_processor import Engine, FeatureProcessor
from streaming.processors.feature_processor import input_topics as feature_input_topics
from streaming.processors.normalizer import Normalizer, NormalizerService, input_topics_for
from streaming.processors.txn_loop import OutRecord, TransactionalLoop
from workloads.kafka import create_project_topics, produce_raw, raw_topic
from workloads.synthetic import SyntheticMarket, synthetic_catalog

SLO_P99_S = 2.0
#: the rate the latency target ("< 0.1 s at 20k ev/s") holds at
TARGET_RATE = 20_000
#: Allowed lateness the latency run gives the feature processor: a window cannot close
#: before its end plus this (the event-time policy, not a processing cost).
LATENESS_MS = 200
#: Most the median latency may rise from a latency run's first half to its second for the
#: rate to count as sustained (a growing backlog rises by about the run's length).
SUSTAINED_GROWTH_S = 0.25
PAIR = [(Market.SPOT, Exchange.BINANCE)]
#: --batch-max-ms the latency run gives both processors (and the floor's bare relays).
SERVICE_BATCH_MAX_MS = 50
#: Seconds the paced generator goes on after the measured events, unmeasured: the measured
#: windows then close by event time (a later record moves the frontier past them), as in a
#: stream that does not end. Without it the last ~1/duration of the measured events sat in
#: windows that only the idle timeout could close (docs/decisions.md, "Latency floor").
TAIL_S = 1.5


class CopyLoop(TransactionalLoop):
    """Identity transform: what the transactional consume -> produce plumbing costs."""

    name = "bench-copy"

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        return [OutRecord("bench.copy", m.value(), m.key(), m.headers()) for m in msgs]


BOOK_PAYLOADS = ("book_snapshot", "book_delta")
#: the schema and content-type headers every processed record carries (values as the normalizer's)
FLOOR_HEADERS = [(SCHEMA_HEADER, SCHEMA_VERSION.encode()), ("content-type", CONTENT_TYPE.encode())]


class NormalizerFloorLoop(TransactionalLoop):
    """The normalizer's floor: the work any normalizer of these records must do, done bare in
    the same loop. Parse each envelope, read the identity fields and every payload level, check
    the event id (hash of the payload bytes), add the enrichment fields, serialize, and produce
    with the normalizer's headers (to bench.copy, like CopyLoop). No sequence check, no dedup window, no instrument
    lookup (constants), no dead letters: a lower bound on the normalizer's per-record cost."""

    name = "bench-normalizer-floor"

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        out, heads, parse = [], self.heads, pb.Envelope.FromString
        for m in msgs:
            topic, env = m.topic(), parse(m.value())
            m.headers()
            eid, which, sym = env.event_id, env.WhichOneof("payload"), env.symbol
            xts, seq, ps, ss = env.exchange_ts, env.seq, env.price_scale, env.size_scale
            payload = getattr(env, which)
            for side in (payload.bids, payload.asks) if which in BOOK_PAYLOADS else ():
                for level in side:
                    if level.px <= 0 or level.qty < 0:  # the least a level check reads
                        raise AssertionError(f"bad level in {topic}: the floor expects valid input")
            key = (topic, sym)
            head = heads.get(key) or heads.setdefault(key, id_head(env.exchange, env.market, sym, env.event_type))
            if event_id_from(head, xts, seq, ps, ss, payload.SerializeToString()) != eid:
                raise AssertionError(f"event id mismatch in {topic}: the floor expects valid input")
            env.tick_size, env.lot_size, env.qty_unit = 1, 1, 1
            env.ingest_latency_us = env.ingest_ts - xts
            out.append(
                OutRecord(
                    "bench.copy",  # as CopyLoop: processed.* holds only the normalizer's output
                    env.SerializeToString(),
                    sym.encode(),
                    [*FLOOR_HEADERS, ("event-type", which.encode()), ("event-id", eid.encode())],
                    xts // 1000,
                )
            )
        return out

    def start(self):
        self.heads: dict[tuple[str, str], bytes] = {}
        return super().start()


class RelayLoop(TransactionalLoop):
    """One bare hop of the latency floor: the records of `input_topics` copied unchanged
    (value, key, headers, and the input's CreateTime, so the reader sees the generator's
    produce time) to `out_topic(input topic)`, in the same transactional consume -> produce
    loop, with the same client settings, as the normalizer and the feature processor."""

    name = "bench-relay"

    def __init__(self, conn, stage: int, **kw):
        if stage == 1:  # raw.* -> processed.*, as the normalizer (keyed, the partitioner decides)
            topics = input_topics_for(["binance"], ["spot"])
            self.out = {t: t.replace("raw.", "processed.", 1) for t in topics}
        else:  # processed.<feature inputs> -> the feature topic, as the feature processor
            topics = feature_input_topics(PAIR)
            self.out = dict.fromkeys(topics, feature_topic("spot", "binance"))
        super().__init__(
            conn,
            group_id=f"bench-relay-{stage}",
            transactional_id=f"bench-relay-{stage}",
            input_topics=topics,
            batch_max_ms=SERVICE_BATCH_MAX_MS,
            **kw,
        )

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        out = self.out
        return [OutRecord(out[m.topic()], m.value(), m.key(), m.headers(), m.timestamp()[1]) for m in msgs]


def relay_main(stage: int) -> int:
    """`--relay 1|2`: run one bare hop until SIGTERM (a subprocess of floor_run)."""
    conn = kc.connection_from_env()
    loop = RelayLoop(conn, stage)
    loop.install_signal_handlers()
    loop.start()
    print(f"bench-relay-{stage} started", flush=True)
    loop.run()
    loop.close()
    return 0


def cpu_seconds() -> float:
    return time.process_time()


TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process's descendants, summed per role:
    the broker (proxy + Tansu), the normalizer, the feature processor; "load generator" is
    this process itself (paced producer and feature reader threads)."""
    stats: dict[int, tuple[int, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = raw[raw.rfind(")") + 2 :].split()
        stats[int(entry)] = (int(f[1]), (int(f[11]) + int(f[12])) / TICK, cmd)
    out = {"load generator": time.process_time()}

    def role(pid: int) -> str | None:
        """The role of the outermost of our descendants on pid's ancestry (None: not ours;
        other sessions on this machine run normalizers and brokers of their own)."""
        found = None
        while pid in stats:
            if pid == os.getpid():
                return found
            ppid, _, cmd = stats[pid]
            for key, name in (
                ("normalizer", "normalizer"),
                ("feature_processor", "feature processor"),
                ("broker_proxy", "broker (proxy + Tansu)"),
            ):
                if key in cmd:
                    found = name
            pid = ppid
        return None

    for pid, (_, cpu, _) in stats.items():
        r = role(pid)
        if r is not None:
            out[r] = out.get(r, 0.0) + cpu
    return out


def bench_pure(envs) -> dict[str, float]:
    """CPU time of the logic alone, under the collector thresholds the service processes run
    with (streaming/processors/txn_loop.py)."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return _pure(envs)
    finally:
        gc.set_threshold(*before)


def _pure(envs) -> dict[str, float]:
    cat = synthetic_catalog()
    records = []
    for i, e in enumerate(envs):
        r = encode(e)
        records.append((raw_topic(e), i, r.value, r.headers))
    n = Normalizer(cat)
    t0 = cpu_seconds()
    outs = [n.process(t, 0, i, v, h) for t, i, v, h in records]
    norm = len(records) / (cpu_seconds() - t0)
    processed = [(encode(o.env), o.env) for o in outs if o.kind == "ok"]
    eng = Engine()
    events_from_envelopes([])  # pyarrow's first use imports pandas: the service pays it at start
    t0 = cpu_seconds()
    for i, (rec, env) in enumerate(processed):
        eng.offer(("p", 0), i, rec.value, rec.headers)
        if i % 2000 == 1999:
            eng.close(env.exchange_ts - 1_000_000)
    eng.close(1 << 62)
    feat = len(processed) / (cpu_seconds() - t0)
    return {"normalizer_pure": norm, "features_pure": feat}


@dataclass
class LoopRun:
    """One loop over a prepared backlog. `rate`: records / wall time from the first commit to
    the last, less the time spent waiting in empty polls after the last record was taken
    (nothing left to read: the feature processor then waits for its idle timeout before it
    closes the last windows, an event-time policy; the closing, the upstream probes and the
    commits after it count). `rate_with_wait`: the same without that deduction (the figure
    up to issue 13's third pass). `cpu_s`: this process's CPU time in the loop (the broker is
    a separate process)."""

    rate: float
    rate_with_wait: float
    records: int
    tail_wait_s: float
    cpu_s: float
    records_out: int = 0


class _FirstRecordClock:
    """The loop's consumer, noting when its first record was returned: the start of a run's
    work. (Counting from the first commit less batch_max_ms, as before, mis-stated a span of
    ~0.5 s by up to a batch interval: a 5,000-record first batch took less than the loop's
    200 ms, the feature processor's far more.)"""

    def __init__(self, consumer) -> None:
        self._consumer = consumer
        self.first: float | None = None

    def consume(self, *a, **kw):
        got = self._consumer.consume(*a, **kw)
        if got and self.first is None:
            self.first = time.monotonic()
        return got

    def __getattr__(self, name):
        return getattr(self._consumer, name)


def run_loop_timed(loop: TransactionalLoop) -> LoopRun:
    loop.start()
    clock = loop.consumer = _FirstRecordClock(loop.consumer)
    wait = [0.0]  # empty polls since the last record was taken
    poll = loop._poll_batch

    def timed_poll():
        t0 = time.monotonic()
        msgs = poll()
        if msgs:
            wait[0] = 0.0
        elif clock.first is not None:
            wait[0] += time.monotonic() - t0
        return msgs

    loop._poll_batch = timed_poll
    tail_wait = 0.0
    committed_once = False
    cpu0 = time.process_time()
    try:
        while True:
            committed = loop.run_once()
            if committed:
                committed_once = True
                tail_wait = wait[0]  # waited before this commit (after the last record)
            if not committed and committed_once and time.monotonic() - loop.stats.last_commit_monotonic > 2:
                break
    finally:
        cpu = time.process_time() - cpu0
        loop.close()
    span = loop.stats.last_commit_monotonic - clock.first
    n = loop.stats.records_in
    return LoopRun(n / (span - tail_wait), n / span, n, tail_wait, cpu, loop.stats.records_out)


def run_loop(loop: TransactionalLoop) -> tuple[float, int]:
    """Events/s of one loop over a prepared backlog (wall time from its first record to its last commit)."""
    r = run_loop_timed(loop)
    return r.rate_with_wait, r.records


class _FeaturesFrom(FeatureProcessor):
    """The feature processor started at given input offsets: each round's normalizer appends
    its own copy of the backlog to processed.*, and this round's processor reads that copy
    only. (The service refuses committed offsets without a state chain, so the bench moves
    a fresh group's start rather than committing one.)"""

    def __init__(self, *a, start_at: dict[tuple[str, int], int], **kw) -> None:
        super().__init__(*a, **kw)
        self.start_at = start_at

    def start(self) -> None:
        super().start()
        self.positions = {tp: self.start_at.get(tp, 0) for tp in self.assignment}
        self.consumer.assign([TopicPartition(t, p, off) for (t, p), off in self.positions.items()])


def end_offsets(conn, topics: list[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of `topics`: where the next appended copy starts."""
    c = plain_consumer(conn, "bench-watermarks")
    try:
        return {tp: watermarks(c, tp)[1] for tp in partitions_for(c, topics)}
    finally:
        c.close()


def bench_broker(envs, rounds: int = 3) -> dict[str, float]:
    """Each loop over the same backlog (its own consumer group), in `rounds` interleaved rounds;
    per loop the median round. The feature processor of a round reads what that round's
    normalizer appended to processed.* (one copy of the backlog), with that normalizer's group
    as the upstream its clearance reads. One round of ~1 s per loop swung the ratios by ±0.1
    on this shared machine, and one round of the feature processor against the baseline's
    median read 0.46 to 0.81 on one day: interleaving puts every loop under the same drift."""
    runs: dict[str, list[LoopRun]] = {}
    with EmbeddedBroker() as b:
        create_project_topics(b.bootstrap, partitions=3)
        create_topics(admin_client(b.bootstrap), {"bench.copy": TopicSpec(3, 3_600_000)}, 1)
        produce_raw(b.bootstrap, envs)
        conn = kc.connection_from_env(bootstrap_servers=b.bootstrap)
        topics = input_topics_for(["binance"], ["spot"])

        def norm_ids(r: int) -> dict[str, str]:
            return {"group_id": f"bench-normalizer-{r}", "transactional_id": f"bench-normalizer-{r}"}

        feature_inputs = feature_input_topics(PAIR)
        # per round: where its normalizer's copy of the backlog starts in processed.*
        copy_starts: dict[int, dict[tuple[str, int], int]] = {}
        loops = {
            "copy_loop": lambda r: CopyLoop(
                conn, group_id=f"bench-copy-{r}", transactional_id=f"bench-copy-{r}", input_topics=topics
            ),
            "normalizer_floor": lambda r: NormalizerFloorLoop(
                conn, group_id=f"bench-nfloor-{r}", transactional_id=f"bench-nfloor-{r}", input_topics=topics
            ),
            # the first round under the service's own group: the feature processor's upstream
            # clearance reads that group's progress
            "normalizer_broker": lambda r: NormalizerService(
                conn, Normalizer(synthetic_catalog()), topics, **({} if r == 0 else norm_ids(r))
            ),
            "features_broker": lambda r: _FeaturesFrom(
                conn,
                PAIR,
                processor_name=f"bench-{r}",
                idle_timeout_ms=1000,
                checkpoint_interval_s=10,
                start_at=copy_starts[r],
                **({} if r == 0 else {"upstream_group": norm_ids(r)["group_id"]}),
            ),
        }
        for r in range(rounds):
            for k, make in loops.items():
                if k == "normalizer_broker":
                    copy_starts[r] = end_offsets(conn, feature_inputs)
                runs.setdefault(k, []).append(run_loop_timed(make(r)))
    out = {}
    for k, rs in runs.items():
        mid = sorted(rs, key=lambda x: x.rate)[len(rs) // 2]
        # a loop that emitted nothing did not finish its work (e.g. no window closed): no figure
        out[k] = mid.rate if mid.records_out else float("nan")
        out[f"{k}_with_wait"] = sorted(x.rate_with_wait for x in rs)[len(rs) // 2]
        out[f"{k}_cpu_us"] = mid.cpu_s / mid.records * 1e6
        out[f"{k}_tail_wait_s"] = mid.tail_wait_s
        out[f"{k}_rounds"] = [round(x.rate) for x in rs]
        out[f"{k}_out"] = mid.records_out
    return out


def wait_started(log: Path, markers: tuple[str, ...], procs: list, timeout_s: float = 120.0) -> None:
    """Until every marker is in the processes' log (or one of them exited, or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if all(m in text for m in markers):
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a processor exited during start; see {log}")
        time.sleep(0.2)
    raise RuntimeError(f"processors not started after {timeout_s:.0f} s; see {log}")


def paced_events(conn, rate: int, seconds: float, template) -> tuple[list[tuple[str, int, float]], float]:
    """Produce `rate` events/s for `seconds` to raw.* (the synthetic template, stamped with the
    send time); returns (symbol|window, exchange_ts µs, send time) per event, and the rate achieved.

    Published as a collector shard publishes (collectors.runner.Publisher), which also waits for
    its producer id before the first event, as a shard waits before it connects: a producer sends
    nothing until the broker has given it one (~0.5 s here), and the first events, stamped with
    their send time, then reached the normalizer 0.77 s late in one lump, whose catch-up ran
    into the measured events (the runs' first 20 % are left out as start-up, 0.8 s in quick mode).
    Its producer has the collectors' own settings (kc.producer_config, linger 20 ms): with the 5 ms
    it had until 2026-12-06, it sent ~3x the produce requests of a collector at the same rate, and
    the broker's CPU per event at 20k was twice a collector's (docs/decisions.md, "The load
    generator publishes as a collector does")."""
    pub = Publisher(
        ShardConfig("bench-load", Exchange.BINANCE, Market.SPOT, tuple(sorted({e.symbol for e in template}))),
        kc.producer_config(conn),
        ShardStats(),
    )
    if not pub.wait_ready(30):
        raise RuntimeError("load generator: the producer got no producer id in 30 s")
    sent: list[tuple[str, int, float]] = []
    start = time.time()
    n_total = int(rate * seconds)
    i = 0
    while i < n_total:
        due = start + i / rate
        now = time.time()
        if now < due:
            time.sleep(min(due - now, 0.002))
            continue
        burst = min(n_total - i, max(1, int((now - due) * rate) + 1))
        for _ in range(burst):
            src = template[i % len(template)]
            e = type(src)()
            e.CopyFrom(src)
            ts = int(time.time() * 1_000_000)
            e.exchange_ts = ts
            e.ingest_ts = ts
            cycle = i // len(template)  # the template repeats: keep venue sequences increasing
            if cycle:
                e.seq += cycle * 100_000_000
                if e.HasField("book_delta"):
                    e.book_delta.first_seq += cycle * 100_000_000
                    e.book_delta.prev_seq += cycle * 100_000_000
            stamp_event_id(e)
            pub.publish(e)
            sent.append((f"{e.symbol}|{ts - ts % WINDOW_US}", ts, ts / 1e6))
            i += 1
    if left := pub.flush(30):
        raise RuntimeError(f"load generator: {left} events not delivered")
    return sent, n_total / (time.time() - start)


def _stop(procs: list) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pct(a, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def floor_run(rate: int, duration: float, template) -> dict[str, float]:
    """The physical floor of the latency run: the same pipeline shape with no feature logic.
    The same generator -> raw.* -> bare relay -> bare relay -> read_committed reader, the two
    relays subprocesses (RelayLoop: the services' transactional loop and client settings,
    batch_max_ms as given to the services, no batch_min_ms), the same broker. Per record:
    produce -> visible at the reader (its CreateTime is the generator's produce time, carried
    by both relays). Per 1 s window: the earliest a row could be visible, i.e. the first
    relayed record at or past the window's end + the allowed lateness the latency run gives the
    processor (no window closes before the processor took such a record: its frontier is the
    newest time seen less the lateness, and its row is produced in that record's transaction
    or a later one); the clearance's append margin and probes are not in it."""
    with EmbeddedBroker() as b, tempfile.TemporaryDirectory() as tmp:
        create_project_topics(b.bootstrap, partitions=3)
        env = {**os.environ, "PYTHONPATH": str(REPO), kc.KAFKA_BOOTSTRAP_ENV: b.bootstrap}
        logs = open(Path(tmp) / "procs.log", "ab")  # noqa: SIM115 - held by the child processes
        procs = [
            subprocess.Popen(
                dying_with_this_process([sys.executable, str(Path(__file__).resolve()), "--relay", str(stage)]),
                cwd=REPO,
                env=env,
                stdout=logs,
                stderr=subprocess.STDOUT,
            )
            for stage in (1, 2)
        ]
        conn = kc.connection_from_env(bootstrap_servers=b.bootstrap)
        got: list[tuple[int, float]] = []  # (CreateTime ms, arrival)
        stop = threading.Event()

        def read_relayed():
            c = Consumer(kc.consumer_config(conn, "bench-floor", read_committed=True, fetch_wait_max_ms=500))
            c.assign([TopicPartition(feature_topic("spot", "binance"), p, 0) for p in range(3)])
            while not stop.is_set():
                msgs = c.consume(1000, 0.05)
                now = time.time()
                got.extend((m.timestamp()[1], now) for m in msgs if m.error() is None)
            c.close()

        reader = threading.Thread(target=read_relayed, daemon=True)
        reader.start()
        try:
            wait_started(Path(tmp) / "procs.log", ("bench-relay-1 started", "bench-relay-2 started"), procs)
            time.sleep(0.5)
            sent, achieved = paced_events(conn, rate, duration + TAIL_S, template)
            time.sleep(2.0)
        finally:
            stop.set()
            reader.join(5)
            _stop(procs)
    return {"rate": rate, "achieved": achieved, **floor_stats(got, sent, int(rate * duration))}


def floor_stats(got: list[tuple[int, float]], sent: list[tuple[str, int, float]], n_measured: int) -> dict:
    """floor_run's figures from what the reader got ((CreateTime ms, arrival) per relayed
    record) and what was sent (the first `n_measured` events are the measured period, of which
    the first 20 % are left out, as in latency_run)."""
    measured = sent[int(n_measured * 0.2) : n_measured]
    skip, end = measured[0][2], measured[-1][2]
    ts = np.array([g[0] for g in got], dtype=np.int64) * 1000  # µs
    arr = np.array([g[1] for g in got])
    keep = (ts >= skip * 1e6) & (ts <= end * 1e6)
    lat = arr[keep] - ts[keep] / 1e6
    # first arrival among records at or after a time: suffix minimum over records sorted by time
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    first_after = np.minimum.accumulate(arr[order][::-1])[::-1]

    def earliest_close(ws_us: np.ndarray) -> np.ndarray:
        i = np.searchsorted(ts_sorted, ws_us + WINDOW_US + LATENESS_MS * 1000)
        return np.where(i < len(ts_sorted), first_after[np.minimum(i, len(ts_sorted) - 1)], np.nan)

    ev_ts = np.array([t for _, t, _ in measured], dtype=np.int64)
    ev_floor = earliest_close(ev_ts - ev_ts % WINDOW_US) - ev_ts / 1e6
    windows = np.unique(ev_ts - ev_ts % WINDOW_US)  # as latency_run: every window of a measured event
    win_floor = earliest_close(windows) - (windows + WINDOW_US) / 1e6
    win_floor, ev_floor = win_floor[~np.isnan(win_floor)], ev_floor[~np.isnan(ev_floor)]
    return {
        "records": len(got),
        "sent": len(sent),
        "p50": _pct(lat, 50),
        "p99": _pct(lat, 99),
        "close_p50": _pct(win_floor, 50),
        "close_p99": _pct(win_floor, 99),
        "slo_p50": _pct(ev_floor, 50),
        "slo_p99": _pct(ev_floor, 99),
    }


def latency_run(rate: int, duration: float, template) -> dict[str, float]:
    """Normalizer and feature processor as subprocesses; a paced producer; a feature reader.
    Events of the first 20 % of `duration` are not measured (start-up), nor those of the
    unmeasured TAIL_S after it (they close the measured windows by event time); the windows
    left open when the input ends close by idleness and are reported on their own."""
    with EmbeddedBroker() as b, tempfile.TemporaryDirectory() as tmp:
        create_project_topics(b.bootstrap, partitions=3)
        cache = Path(tmp) / "instruments.json"
        synthetic_catalog().save(cache)
        env = {**os.environ, "PYTHONPATH": str(REPO), kc.KAFKA_BOOTSTRAP_ENV: b.bootstrap}
        logs = open(Path(tmp) / "procs.log", "ab")  # noqa: SIM115 - held by the child processes
        procs = [
            subprocess.Popen(
                dying_with_this_process(
                    [
                        sys.executable,
                        "-m",
                        "streaming.processors.normalizer",
                        "--exchange",
                        "binance",
                        "--market",
                        "spot",
                        "--instruments-cache",
                        str(cache),
                        "--batch-max-ms",
                        str(SERVICE_BATCH_MAX_MS),
                    ]
                ),
                cwd=REPO,
                env=env,
                stdout=logs,
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                dying_with_this_process(
                    [
                        sys.executable,
                        "-m",
                        "streaming.processors.feature_processor",
                        "--pair",
                        "spot:binance",
                        "--batch-max-ms",
                        str(SERVICE_BATCH_MAX_MS),
                        "--allowed-lateness-ms",
                        str(LATENESS_MS),
                        "--idle-timeout-ms",
                        "1000",
                    ]
                ),
                cwd=REPO,
                env=env,
                stdout=logs,
                stderr=subprocess.STDOUT,
            ),
        ]
        conn = kc.connection_from_env(bootstrap_servers=b.bootstrap)
        arrivals: dict[str, float] = {}
        stop = threading.Event()

        def read_features():
            # A long fetch wait costs no latency: the broker proxy releases a held fetch when a
            # write completes (a 5 ms wait made this reader scan the broker 200 times a second).
            c = Consumer(kc.consumer_config(conn, "bench-latency", read_committed=True, fetch_wait_max_ms=500))
            c.assign([TopicPartition(feature_topic("spot", "binance"), p, 0) for p in range(3)])
            while not stop.is_set():
                for m in c.consume(1000, 0.05):
                    if m.error() is None:
                        now = time.time()
                        r = decode_row(m.value())
                        arrivals.setdefault(f"{r['symbol']}|{r['exchange_ts']}", now)
            c.close()

        reader = threading.Thread(target=read_features, daemon=True)
        reader.start()
        # Produce only once both processors have started (partitions assigned, state restored):
        # on a loaded machine their start took 7 s, and a fixed 3 s wait timed the start-up
        # backlog as latency (every row seconds late, or none before the reader stopped).
        wait_started(Path(tmp) / "procs.log", ("normalizer started", "feature-processor started"), procs)
        time.sleep(0.5)
        cpu0 = tree_cpu_s()
        sent, achieved = paced_events(conn, rate, duration + TAIL_S, template)
        time.sleep(6.0)  # last windows close by idleness
        # CPU up to here: work a starved process deferred past the producer's end counts too
        # (the tail's idle polling adds ~1 % of a core per process).
        cpu1 = tree_cpu_s()
        stop.set()
        reader.join(5)
        _stop(procs)
    n_total = len(sent)
    n_measured = int(rate * duration)
    measured = sent[int(n_measured * 0.2) : n_measured]
    end = measured[-1][2]
    lat = np.array([arrivals[k] - t for k, _, t in measured if k in arrivals])

    def after_end(lo: float, hi: float) -> np.ndarray:
        return np.array(
            [
                t - (int(k.rsplit("|", 1)[1]) + WINDOW_US) / 1e6
                for k, t in arrivals.items()
                if lo <= int(k.rsplit("|", 1)[1]) / 1e6 <= hi
            ]
        )

    # the windows of the measured events, the first one (begun before `skip`) too: the SLO row's
    # events are in these same windows (each event waits the rest of its window, then its row)
    first_ws = measured[0][1] - measured[0][1] % WINDOW_US
    closed = after_end(first_ws / 1e6, end)  # closed by event time (TAIL_S of later records)
    last_ws = max(int(k.rsplit("|", 1)[1]) for k, _, _ in sent[-1:]) / 1e6 if sent else 0.0
    at_end = after_end(last_ws, last_ws)  # the last window: only the idle timeout closes it
    missing = sum(1 for k, _, _ in measured if k not in arrivals)
    half = len(lat) // 2
    # A rate is sustained when the pipeline keeps up: the latency of the run's second half
    # is not above its first half's (a backlog that grows shows as a rising latency).
    growth = float(np.median(lat[half:]) - np.median(lat[:half])) if half else float("nan")
    wall = n_total / achieved + 6.0
    return {
        "rate": rate,
        "achieved": achieved,
        "p50": _pct(lat, 50),
        "p99": _pct(lat, 99),
        "events": len(measured),
        "close_p50": _pct(closed, 50),
        "close_p99": _pct(closed, 99),
        "end_close": float(at_end.max()) if len(at_end) else float("nan"),
        "events_without_row": missing,
        "growth": growth,
        "cpu_us_per_event": {k: (cpu1[k] - cpu0.get(k, 0.0)) / n_total * 1e6 for k in cpu1},
        "cores": {k: (cpu1[k] - cpu0.get(k, 0.0)) / wall for k in cpu1},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--rates", default="2000,5000,20000,50000")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (median taken)")
    ap.add_argument("--latency-only", action="store_true", help="only the latency runs (and their floor)")
    ap.add_argument("--no-floor", action="store_true", help="latency runs without the bare-relay floor runs")
    ap.add_argument("--relay", type=int, choices=(1, 2), help=argparse.SUPPRESS)  # floor_run's subprocesses
    a = ap.parse_args(argv)
    if a.relay:
        return relay_main(a.relay)
    print(f"# stream processing benchmark ({os.cpu_count()} cores, {a.events} synthetic events, 3 instruments)")
    pure = broker = None
    if not a.latency_only:
        envs = SyntheticMarket(seed=1).events(a.events, 200)
        pure = bench_pure(envs)
        broker = bench_broker(envs, a.rounds)
        print("\nthroughput (events/s; one process = one core)")
        print("  (through the broker: first record to last commit less the empty polls after the last record;")
        print("   with the wait, and this process's CPU per record, beside it; median of --rounds interleaved rounds)")
        for k, label in (
            ("copy_loop", "baseline: bare transactional consume->produce (identity)"),
            ("normalizer_floor", "floor: the normalizer's necessary work, bare"),
            ("normalizer_broker", "normalizer, through the broker"),
            ("features_broker", "feature processor, through the broker"),
        ):
            print(
                f"  {label:<58} {broker[k]:>10,.0f}  (with the wait {broker[k + '_with_wait']:,.0f}; "
                f"{broker[k + '_cpu_us']:.1f} µs CPU/record; tail wait {broker[k + '_tail_wait_s']:.2f} s; "
                f"rounds {broker[k + '_rounds']}; records out {broker[k + '_out']:,})"
            )
        print(f"  normalizer, pure logic (CPU time)                          {pure['normalizer_pure']:>10,.0f}")
        print(f"  feature processor, pure logic (CPU time)                   {pure['features_pure']:>10,.0f}")
    template = SyntheticMarket(seed=2).events(20_000, 100)
    print(
        f"\nend-to-end latency exchange_ts -> feature row (normalizer + feature processor processes, "
        f"lateness {LATENESS_MS} ms, 1 s windows); SLO: p99 ingest->feature < {SLO_P99_S:.0f} s"
    )
    print("  (p50/p99: per event, exchange_ts -> its feature row; after-close: row arrival - window end;")
    print(f"   events of the first 20 % and of a {TAIL_S} s unmeasured tail left out; floor: bare relays, same run)")
    print(
        f"  {'rate/s':>8} {'achieved/s':>11} {'p50 s':>8} {'p99 s':>8} {'SLO':>5}  {'after-close p50/p99 s':>22}"
        "  events  no-row  last window (idle close)"
    )
    results, floors = [], []
    for n, rate in enumerate(int(r) for r in a.rates.split(",")):
        # floor and product interleaved, alternating which goes first (shared, drifting machine)
        f = None
        if not a.no_floor and n % 2 == 0:
            f = floor_run(rate, a.duration, template)
        r = latency_run(rate, a.duration, template)
        if not a.no_floor and n % 2 == 1:
            f = floor_run(rate, a.duration, template)
        results.append(r)
        ok = "met" if r["p99"] < SLO_P99_S else "MISS"
        print(
            f"  {rate:>8,} {r['achieved']:>11,.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {ok:>5}  "
            f"{r['close_p50']:>10.3f} / {r['close_p99']:<9.3f}  {r['events']:>6} {r['events_without_row']:>7}"
            f"  {r['end_close']:.3f}"
        )
        if f is not None:
            floors.append(f)
            print(
                f"  {'floor':>8} {f['achieved']:>11,.0f} {f['slo_p50']:>8.3f} {f['slo_p99']:>8.3f} {'':>5}  "
                f"{f['close_p50']:>10.3f} / {f['close_p99']:<9.3f}  produce->visible p50/p99 "
                f"{f['p50']:.3f} / {f['p99']:.3f} s ({f['records']} of {f['sent']} relayed)"
            )
    print("\n  CPU per event, production start to the end of the 6 s tail (µs/event, cores), same runs:")
    for r in results:
        us, cores = r["cpu_us_per_event"], r["cores"]
        print(f"  {r['rate']:>8,}  " + "  ".join(f"{k} {us[k]:,.0f} ({cores[k]:.2f})" for k in sorted(us)))
    if broker is not None:
        emit_throughput(broker, pure)
    emit_latency(results, floors)
    return 0


def emit_throughput(broker: dict[str, float], pure: dict[str, float]) -> None:
    """The machine-readable lines (bench/figures.py) of the throughput table."""
    base = broker["copy_loop"]
    bare = "bare transactional consume->produce"
    floor_name = "floor: the normalizer's necessary work bare (parse, field + level reads, id check, enrich, serialize)"
    emit(floor_name, broker["normalizer_floor"], "events/s", bare, base, note="NormalizerFloorLoop")
    emit(
        "normalizer through the broker", broker["normalizer_broker"], "events/s", bare, base, "≥ 70 %", floor=floor_name
    )
    emit("feature processor through the broker", broker["features_broker"], "events/s", bare, base, "≥ 50 %")
    emit(
        "feature processor through the broker, with the idle-timeout wait before the last windows close",
        broker["features_broker_with_wait"],
        "events/s",
        bare,
        broker["copy_loop_with_wait"],
        note=f"{broker['features_broker_tail_wait_s']:.2f} s of empty polls after the last record (idle timeout 1 s)",
    )
    for k, name in (
        ("copy_loop", "bare loop"),
        ("normalizer_broker", "normalizer"),
        ("features_broker", "feature processor"),
    ):
        emit(f"{name} through the broker: CPU per record", broker[f"{k}_cpu_us"], "µs/record")
    emit("normalizer pure logic (CPU time)", pure["normalizer_pure"], "events/s", bare, base)
    emit("feature processor pure logic (CPU time)", pure["features_pure"], "events/s", bare, base)


def floor_names(rate: int) -> dict[str, str]:
    """The floor figures' names at one rate."""
    bare = f"floor: bare relays at {rate:,} ev/s (2 transactional hops, no logic)"
    return {
        "visible": f"{bare}: produce -> visible p99",
        "close": f"{bare}: window end -> first record past end + lateness visible, p99",
        "slo": f"{bare}: exchange_ts -> first record past its window's end + lateness visible, p99",
    }


def emit_latency(results: list[dict], floors: list[dict]) -> None:
    """The machine-readable lines of the latency tables: per rate the product's rows, the bare
    relays' floor rows, and the 20k row's floor (produce -> visible through the bare relays)."""
    by_rate = {f["rate"]: f for f in floors}
    for f in floors:
        names, note = floor_names(f["rate"]), f"achieved {f['achieved']:,.0f} ev/s"
        emit(names["visible"].replace(" p99", " p50"), f["p50"], "s", note=note)
        emit(names["visible"], f["p99"], "s", note=note)
        emit(names["close"], f["close_p99"], "s", note=f"{note}; includes the {LATENESS_MS} ms allowed lateness")
        emit(names["slo"], f["slo_p99"], "s", note=f"{note}; includes the 1 s window and the lateness")
    floor = (LATENESS_MS / 1000 + APPEND_MARGIN_S) * 1000
    ceiling = "streaming CPU ceiling on 2 cores (normalizer + feature processor + broker)"
    for r in results:
        names = floor_names(r["rate"]) if r["rate"] in by_rate else {}
        rate, note = r["rate"], f"achieved {r['achieved']:,.0f} ev/s; {r['events_without_row']} events without a row"
        emit(f"latency after window close p50 at {rate:,} ev/s", r["close_p50"], "s", note=note)
        # The target holds at 20k ev/s: the other rates' rows report p50/p99 per rate (the issue asks
        # for both per rate), with no target of their own. Its floor: a record's produce -> visible
        # time through the same two transactional hops, bare (a row cannot be visible sooner after
        # its window's end than the record that closed it, produced at or after that end).
        at_target = rate == TARGET_RATE
        emit(
            f"latency after window close p99 at {rate:,} ev/s",
            r["close_p99"],
            "s",
            target="< 0.1 s at 20k ev/s" if at_target else "",
            note=f"{note}; policy floor {floor:.0f} ms (allowed lateness + upstream append margin)",
            floor=names.get("visible") if at_target else None,
        )
        emit(
            f"latency after the input ends at {rate:,} ev/s: last window's row after its end",
            r["end_close"],
            "s",
            note="no later record closes it: the idle timeout (1 s) and the upstream clearance do",
        )
        slo = "met" if r["p99"] < SLO_P99_S else "MISS"
        # Rates past the target rate are run to find where the SLO breaks (the issue asks for that
        # rate): their rows state met or MISS in the note and carry no target.
        up_to_target = rate <= TARGET_RATE
        emit(
            f"latency exchange_ts -> feature row p99 at {rate:,} ev/s",
            r["p99"],
            "s",
            target="< 2 s (SLO)" if up_to_target else "",
            note=slo if up_to_target else f"{slo} (a rate past the target rate: where the SLO breaks)",
            # per event, the row cannot be visible before the bare relays deliver the first record
            # past its window's end + lateness: a lower bound event by event, so of the p99 too
            floor=names.get("slo"),
        )
    tried = max(r["rate"] for r in results)
    kept = [
        r
        for r in results
        if r["events_without_row"] == 0 and r["achieved"] >= 0.95 * r["rate"] and r["growth"] < SUSTAINED_GROWTH_S
    ]
    # What two cores can carry at the measured CPU cost per event of the three streaming
    # processes, at the highest rate sustained (largest batches: fixed polling costs amortized).
    low = max(kept, key=lambda r: r["rate"], default=None)
    if low is not None:
        us = low["cpu_us_per_event"]
        stream = sum(v for k, v in us.items() if k != "load generator")
        for k, v in sorted(us.items()):
            emit(f"CPU per event at {low['rate']:,} ev/s: {k}", v, "µs/event")
        emit(
            ceiling,
            2e6 / stream if stream else float("nan"),
            "events/s",
            "target rate",
            TARGET_RATE,
            note=f"{stream:.0f} µs CPU per event at {low['rate']:,} ev/s, load generator excluded",
        )
    emit(
        "highest rate sustained (every row arrived, latency not rising)",
        low["rate"] if low else float("nan"),
        "events/s",
        note=("the highest rate tried; " if low is not None and low["rate"] == tried else "")
        + "second-half minus first-half p50 latency per rate: "
        + ", ".join(f"{r['rate']:,}: {r['growth']:+.2f} s" for r in results),
    )
    broke = [r["rate"] for r in results if not r["p99"] < SLO_P99_S]
    emit(
        "lowest rate missing the 2 s SLO (p99 exchange_ts -> row)",
        min(broke, default=float("nan")),
        "events/s",
        note="" if broke else f"none of the rates tried (up to {tried:,} ev/s) missed it",
    )


if __name__ == "__main__":
    sys.exit(main())

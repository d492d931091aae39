"""CPU of the whole local stack idle, beside the same stack with data flowing.

Issue 11 ("idle costs nothing"): with `ticklake up` (services on) and no data flowing the
stack must use at most 10 % of one core in total. This starts the real stack twice through
the console script, each time in its own temporary TICKLAKE_HOME:

1. idle: `ticklake up` (services on, no replay), wait until the service runs are up and
   settled, then measure every process of the stack for --seconds;
2. busy (the baseline, same run): `ticklake up --replay <capture> --speed 1` (the genuine
   hftbacktest Binance spot capture by default, ~6 minutes of market data played at its
   recorded pace), measured for the same time while it plays. After that window a consumer
   with library defaults (new group, subscribe, earliest) reports how long it took to get
   its first record from pragma-prices-v1 and processed.spot.trades.binance (issue 11 item 4).

"Every process of the stack" = every process whose environment carries the stack's
TICKLAKE_STACK_ID (the broker, ClickHouse, the emulator, the Dagster webserver and daemon,
their code servers, every run worker and step process). CPU is read from /proc: each
process's own user+system time, plus what its reaped children used (cutime/cstime), minus
what was already counted for those children, so processes that start and end inside the
window count too. Groups: broker, clickhouse, replay emulator, dagster-webserver,
the Dagster code server, dagster-daemon, and one group per Dagster job for run workers
and their step processes (summed over the job's runs, e.g. every collector shard).

Run it under the shared stack lock (two cores shared by several people):

    flock /tmp/ticklake-stack.lock .venv/bin/python bench/bench_idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workloads.samples import BINANCE_SPOT_HFT  # noqa: E402 - after the sys.path line above

CAPTURE = BINANCE_SPOT_HFT
TICKLAKE = Path(sys.executable).with_name("ticklake")
STACK_ID_ENV = "TICKLAKE_STACK_ID"
TICK = os.sysconf("SC_CLK_TCK")
TARGET_IDLE_CORE_PCT = 10.0
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- /proc sampling


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot (identity together with pid)
    own: int  # utime + stime, ticks
    reaped: int  # cutime + cstime, ticks
    cmd: str


def _read(pid: int, stack_id: str) -> Proc | None:
    base = Path("/proc") / str(pid)
    try:
        if f"{STACK_ID_ENV}={stack_id}".encode() not in (base / "environ").read_bytes().split(b"\0"):
            return None
        raw = (base / "stat").read_text()
        cmd = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    f = raw[raw.rfind(")") + 2 :].split()
    if f[0] in ("Z", "X"):
        return None
    return Proc(pid, int(f[1]), int(f[19]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), cmd)


def snapshot(stack_id: str) -> dict[int, Proc]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            p = _read(int(entry), stack_id)
            if p is not None:
                out[p.pid] = p
    return out


def _boot_ticks_now() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * TICK)


@dataclass
class Window:
    """CPU ticks per process over a measurement window (see the module docstring)."""

    stack_id: str
    ticks: dict[int, int] = field(default_factory=dict)
    seen: dict[int, Proc] = field(default_factory=dict)
    t0: float = 0.0
    t1: float = 0.0

    def run(self, seconds: float, interval: float = 0.25) -> Window:
        start_ticks = _boot_ticks_now()
        self.t0 = time.monotonic()
        prev = snapshot(self.stack_id)
        self.seen = dict(prev)
        while time.monotonic() - self.t0 < seconds:
            time.sleep(interval)
            cur = snapshot(self.stack_id)
            for pid, p in cur.items():
                old = prev.get(pid)
                if old is None or old.start != p.start:
                    # born inside the window: everything it used counts
                    base_own, base_reaped = (0, 0) if p.start >= start_ticks else (p.own, p.reaped)
                    self.ticks[pid] = self.ticks.get(pid, 0) + (p.own - base_own) + (p.reaped - base_reaped)
                else:
                    self.ticks[pid] = self.ticks.get(pid, 0) + (p.own - old.own) + (p.reaped - old.reaped)
                self.seen[pid] = p
            for pid, old in prev.items():
                if pid in cur:
                    continue
                parent = cur.get(old.ppid)
                if parent is not None:
                    # the parent's cutime/cstime jump (counted above) holds the child's whole
                    # life; what this window already counted of it comes off again
                    self.ticks[old.ppid] = self.ticks.get(old.ppid, 0) - (old.own + old.reaped)
            prev = cur
        self.t1 = time.monotonic()
        return self

    def core_pct(self, pids: set[int]) -> float:
        return 100.0 * sum(self.ticks.get(p, 0) for p in pids) / TICK / (self.t1 - self.t0)


# --------------------------------------------------------------------------- grouping


def _gql(url: str, query: str) -> dict:
    req = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


def run_jobs(url: str) -> dict[str, str]:
    data = _gql(url, "{ runsOrError(limit: 500) { ... on Runs { results { runId jobName status } } } }")
    return {r["runId"]: r["jobName"] for r in data["runsOrError"]["results"]}


def groups(window: Window, state: dict, url: str) -> dict[str, set[int]]:
    """Process group name -> pids, by ancestry: the stack's service roots, and per Dagster
    job for run workers (a run worker's command line carries its run id)."""
    roots = {rec["pid"]: name for name, rec in state["services"].items()}
    jobs = run_jobs(url)
    procs = window.seen
    label: dict[int, str] = {}
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)

    def run_of(p: Proc) -> str | None:
        """A run worker or step process names its run in its command line, or its compute-log
        helpers (children tailing <storage>/<run_id>/compute_logs) do."""
        if "spawn_main" not in p.cmd and "execute_" not in p.cmd:
            return None
        near = list(children.get(p.pid, ()))
        near += [g for c in near for g in children.get(c, ()) if "spawn_main" not in procs[c].cmd]
        for text in [p.cmd, *(procs[c].cmd for c in near)]:
            for u in UUID_RE.findall(text):
                if u in jobs:
                    return u
        return None

    def name_of(pid: int, depth: int = 0) -> str:
        if pid in label:
            return label[pid]
        p = procs.get(pid)
        if p is None or depth > 50:
            return "other"
        run_id = run_of(p)
        if run_id is not None:
            out = f"run:{jobs[run_id]}"
        elif pid in roots:
            out = roots[pid]
        else:
            out = name_of(p.ppid, depth + 1)
        label[pid] = out
        return out

    out: dict[str, set[int]] = {}
    for pid in procs:
        out.setdefault(name_of(pid), set()).add(pid)
    return out


# --------------------------------------------------------------------------- stack control


def ticklake(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TICKLAKE_HOME": str(home)}
    return subprocess.run(
        [str(TICKLAKE), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def wait_services_settled(url: str, timeout: float, quiet_for: float = 20.0) -> list[str]:
    """Until service runs exist and no run has been queued/starting for `quiet_for` s."""
    deadline = time.monotonic() + timeout
    calm_since = None
    while time.monotonic() < deadline:
        data = _gql(url, "{ runsOrError(limit: 500) { ... on Runs { results { jobName status } } } }")
        runs = data["runsOrError"]["results"]
        started = [r["jobName"] for r in runs if r["status"] == "STARTED"]
        pending = [r for r in runs if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING")]
        if started and not pending:
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= quiet_for:
                return sorted(started)
        else:
            calm_since = None
        time.sleep(2)
    raise SystemExit(f"service runs did not settle within {timeout:.0f}s")


def default_consumer_seconds(bootstrap: str, topics: list[str], limit: float = 60.0) -> dict[str, float | None]:
    """Seconds until a consumer with library defaults (a new group, subscribe, earliest)
    receives its first record from each topic (issue 11 item 4); None if not within `limit`."""
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-plain-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    first: dict[str, float | None] = dict.fromkeys(topics)
    t0 = time.monotonic()
    consumer.subscribe(topics)
    try:
        while any(v is None for v in first.values()) and time.monotonic() - t0 < limit:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and first.get(msg.topic(), 0) is None:
                first[msg.topic()] = time.monotonic() - t0
    finally:
        consumer.close()
    return first


def measure_stack(
    label: str,
    up_args: list[str],
    seconds: float,
    settle: float,
    port: int,
    keep: bool,
    top: int = 0,
    plain_topics: list[str] | None = None,
) -> tuple[dict[str, float], list[str]]:
    home = Path(tempfile.mkdtemp(prefix=f"ticklake-bench-{label}-"))
    try:
        t = time.monotonic()
        res = ticklake(home, "up", "--port", str(port), *up_args)
        if res.returncode != 0:
            raise SystemExit(f"ticklake up ({label}) failed:\n{res.stdout}\n{res.stderr}")
        print(f"[{label}] up in {time.monotonic() - t:.0f}s", file=sys.stderr, flush=True)
        state = json.loads((home / "run" / "stack.json").read_text())
        url = state["dagster_url"]
        services = wait_services_settled(url, timeout=600)
        time.sleep(settle)
        print(
            f"[{label}] {len(services)} service runs: {', '.join(services)}; measuring {seconds:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        window = Window(state["stack_id"]).run(seconds)
        if plain_topics:
            for topic, secs in default_consumer_seconds(state["kafka_bootstrap"], plain_topics).items():
                got = f"first record after {secs:.1f}s" if secs is not None else "nothing within 60s"
                print(f"[{label}] default-config consumer, new group, {topic}: {got}", file=sys.stderr, flush=True)
        grouped = groups(window, state, url)
        by_group = {g: window.core_pct(pids) for g, pids in grouped.items()}
        if top:
            where = {pid: g for g, pids in grouped.items() for pid in pids}
            busiest = sorted(window.seen, key=lambda pid: -window.ticks.get(pid, 0))[:top]
            for pid in busiest:
                print(
                    f"[{label}] {window.core_pct({pid}):5.1f}% {where[pid]:<28} {pid:>7} {window.seen[pid].cmd[:110]}",
                    file=sys.stderr,
                )
        return by_group, services
    finally:
        down = ticklake(home, "down", timeout=300)
        if down.returncode != 0:
            print(f"[{label}] ticklake down: {down.stdout}{down.stderr}", file=sys.stderr)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window per stack")
    ap.add_argument("--settle", type=float, default=20.0, help="wait after the service runs are up")
    ap.add_argument("--capture", type=Path, default=CAPTURE, help="capture replayed for the busy baseline")
    ap.add_argument("--port", type=int, default=3917, help="Dagster UI port of the measured stacks")
    ap.add_argument("--no-busy", action="store_true", help="measure the idle stack only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary homes (logs)")
    ap.add_argument("--json", action="store_true", help="one JSON line per figure as well")
    ap.add_argument("--top", type=int, default=0, help="also list the N busiest processes (stderr)")
    a = ap.parse_args(argv)

    idle, _services = measure_stack("idle", [], a.seconds, a.settle, a.port, a.keep, a.top)
    busy: dict[str, float] = {}
    if not a.no_busy:
        busy, _ = measure_stack(
            "busy",
            ["--replay", str(a.capture), "--speed", "1"],
            a.seconds,
            a.settle,
            a.port,
            a.keep,
            a.top,
            plain_topics=["pragma-prices-v1", "processed.spot.trades.binance"],
        )

    names = sorted(set(idle) | set(busy), key=lambda g: -max(idle.get(g, 0.0), busy.get(g, 0.0)))
    print(f"\nCPU, % of one core, averaged over {a.seconds:.0f}s (busy = replay of {a.capture.name} at speed 1)")
    print(f"{'process group':<40} {'idle':>8} {'busy':>8} {'idle/busy':>10}")
    for g in names:
        i, b = idle.get(g, 0.0), busy.get(g, 0.0)
        ratio = f"{i / b:.2f}" if b > 0 else "-"
        print(f"{g:<40} {i:>7.1f}% {b:>7.1f}% {ratio:>10}")
    ti, tb = sum(idle.values()), sum(busy.values())
    print(f"{'TOTAL':<40} {ti:>7.1f}% {tb:>7.1f}% {(f'{ti / tb:.2f}' if tb else '-'):>10}")
    print(
        f"idle target: <= {TARGET_IDLE_CORE_PCT:.0f}% of one core -> "
        f"{'met' if ti <= TARGET_IDLE_CORE_PCT else 'NOT met'}"
    )
    if a.json:
        for g in names:
            print(
                json.dumps(
                    {
                        "name": f"idle_cpu/{g}",
                        "value": round(idle.get(g, 0.0), 2),
                        "unit": "%core",
                        "baseline": round(busy.get(g, 0.0), 2),
                        "baseline_name": "busy (replay speed 1)",
                    }
                )
            )
        print(
            json.dumps(
                {
                    "name": "idle_cpu/total",
                    "value": round(ti, 2),
                    "unit": "%core",
                    "baseline": round(tb, 2),
                    "baseline_name": "busy (replay speed 1)",
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

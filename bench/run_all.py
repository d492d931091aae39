"""Run every benchmark in a quick mode; one JSON line per figure plus a Markdown table.

Each benchmark runs as its own subprocess (its own peak RSS, its own crash) with short
arguments, and reports figures through ``bench/figures.py`` lines on its stdout; this
runner adds the run time and the commit measured, appends them to
``bench/results/<UTC date>.jsonl`` and writes ``bench/results/<UTC date>.md`` (the table the
README's benchmark section shows), with a status per figure that has a target: met, explained by
a named floor figure of the same run, or MISS (bench/targets.py). A script that prints no figure lines yet still runs,
and its printed table is kept in the Markdown file, so nothing is silently left out.

Figures are ratios against a baseline measured in the same run: on a shared machine the
absolute rates drift, the ratios much less. Benchmarks are for people, never for CI
timing: CI only runs ``--smoke`` (tiny inputs, checks the plumbing, asserts no speed).

    python -m bench                       # every quick benchmark (several minutes)
    python -m bench --only parse,book     # a subset
    python -m bench --smoke --out /tmp/x  # seconds: the runner and two tiny benchmarks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from figures import emit, parse  # noqa: E402
from targets import statuses  # noqa: E402


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    quick: tuple[str, ...]
    smoke: tuple[str, ...] | None = None  # None: not part of the smoke run
    in_quick: bool = True  # False: only with --only
    stack_lock: bool = False  # starts whole stacks: run under /tmp/ticklake-stack.lock


BENCHES = (
    Bench("parse", "bench_parse.py", ("--quick",), ("--smoke",)),
    Bench("book", "bench_book.py", ("--rounds", "2"), ("--smoke",)),
    Bench("bulk", "bench_bulk.py", ("--rows", "60000", "--rounds", "1")),
    Bench("publish", "bench_publish.py", ("--events", "30000", "--seconds", "4", "--symbols", "5")),
    # --sink-floor: the sink row's floor (the sink's steps done bare) measured in the same run
    Bench(
        "lake_sink",
        "bench_lake_sink.py",
        ("--rows", "200000", "--sink-events", "20000", "--repeat", "3", "--sink-floor"),
    ),
    Bench(
        "processing",
        "bench_processing.py",
        # 10 s per rate: a 4 s run measured ~3 windows and ended before a backlog showed (20k
        # read "sustained" at 4 s and fell behind at 10 s); 15k between 10k and 20k; 25k to 40k
        # past the target rate, so that the rates sustained and the SLO's break are found, not
        # capped by the last rate tried
        ("--events", "60000", "--rates", "1000,2000,5000,10000,15000,20000,25000,30000,40000", "--duration", "10"),
    ),
    Bench("analytics", "bench_analytics.py", ("--rows", "100000", "--events", "30000", "--rounds", "1")),
    Bench("ml", "bench_ml.py", ("--copies", "30", "--rounds", "1"), ("--smoke",)),
    # starts two whole stacks: run it alone, under /tmp/ticklake-stack.lock (see its docstring)
    # 60 s windows: issue 11's measure (a sensor evaluating every 60 s is caught once per window)
    Bench("idle", "bench_idle.py", ("--seconds", "60", "--settle", "20", "--json"), in_quick=False, stack_lock=True),
)


def commit_info() -> dict:
    """The commit measured, and whether the measured code differed from it (a dirty tree)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git(
        "status", "--porcelain", "--untracked-files=no", "--", "collectors", "schemas", "streaming", "features", "bench"
    )
    return {"commit": git("rev-parse", "HEAD")[:12] or "unknown", "dirty": bool(dirty)}


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _printed_analytics(out: str) -> list[dict]:
    """Figures of bench_analytics.py's printed table (until it emits figure lines itself)."""
    figs = []
    m = re.search(r"ClickHouse hour load \(trades\)\s+([\d,]+) rows/s\s+insert_arrow baseline\s+([\d,]+)", out)
    if m:
        figs.append(
            figure(
                "ClickHouse hour load (trades)",
                _num(m.group(1)),
                "rows/s",
                "plain insert_arrow, same server",
                _num(m.group(2)),
            )
        )
    m = re.search(
        r"insert_arrow via the local server \(HTTP\)\s+([\d,]+) rows/s\s+in-process chdb baseline\s+([\d,]+)", out
    )
    if m:
        figs.append(
            figure(
                "insert_arrow via the local ClickHouse server (HTTP)",
                _num(m.group(1)),
                "rows/s",
                "in-process chdb",
                _num(m.group(2)),
            )
        )
    loc = re.search(r"feature recompute, local batch \(in-process\)\s+([\d,]+) events/s", out)
    spk = re.search(r"feature recompute, Spark local\[2\]\s+([\d,]+) events/s", out)
    if spk:
        figs.append(
            figure(
                "feature recompute, Spark local[2]",
                _num(spk.group(1)),
                "events/s",
                "local batch in-process",
                _num(loc.group(1)) if loc else None,
            )
        )
    m = re.search(r"chart render per symbol-hour \(PNG\+SVG\+preview\)\s+([\d,]+) ms", out)
    if m:
        figs.append(figure("chart render per symbol-hour (PNG+SVG+preview)", _num(m.group(1)), "ms"))
    return figs


def _printed_idle(out: str) -> list[dict]:
    """bench_idle.py --json prints its own JSON lines (value = idle, baseline = busy)."""
    figs = []
    for line in out.splitlines():
        if line.startswith('{"name": "idle_cpu/'):
            d = json.loads(line)
            figs.append(
                figure(
                    d["name"],
                    d["value"],
                    d["unit"],
                    d.get("baseline_name"),
                    d.get("baseline"),
                    "total ≤ 10 % of one core" if d["name"] == "idle_cpu/total" else "",
                )
            )
    return figs


PRINTED = {
    "analytics": _printed_analytics,
    "idle": _printed_idle,
}


def run_one(b: Bench, smoke: bool, timeout: float) -> tuple[list[dict], str, float, int]:
    args = b.smoke if smoke else b.quick
    t0 = time.monotonic()
    try:
        lock = ["flock", "/tmp/ticklake-stack.lock"] if b.stack_lock else []
        p = subprocess.run(
            [*lock, sys.executable, str(HERE / b.script), *(args or ())],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out, rc = p.stdout + (("\n" + p.stderr[-3000:]) if p.returncode else ""), p.returncode
    except subprocess.TimeoutExpired as e:
        out = (
            e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        ) + f"\n(timeout after {timeout:.0f} s)"
        rc = -1
    figs = parse(out)
    if not figs and b.name in PRINTED:
        figs = [
            {**f, "note": (f["note"] + "; " if f["note"] else "") + "parsed from the printed table"}
            for f in PRINTED[b.name](out)
        ]
    return figs, out, time.monotonic() - t0, rc


def figure(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    target: str = "",
    note: str = "",
    floor: str | None = None,
) -> dict:
    """A figure dict as ``figures.emit`` makes it, without printing it."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return emit(name, value, unit, baseline, baseline_value, target, note, floor)


def with_status(figs: list[dict]) -> list[dict]:
    """Each figure with its ``status`` (bench/targets.py), judged among the figures of its own
    benchmark run (a floor is a figure of the same run). Rows written before statuses existed
    get theirs here too."""
    runs: dict[tuple, list[dict]] = {}
    for f in figs:
        runs.setdefault((f.get("bench"), f.get("time")), []).append(f)
    done = {}
    for group in runs.values():
        for f, s in zip(group, statuses(group), strict=True):
            done[id(f)] = f if "status" in f else {**f, "status": s}
    return [done[id(f)] for f in figs]


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def latest(jsonl: Path) -> list[dict]:
    """The day's figures, each benchmark from its latest run (a run of one benchmark replaces
    only that benchmark's rows in the day's table)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    last = {}
    for r in rows:
        last[r["bench"]] = max(last.get(r["bench"], ""), r["time"])
    order = [b.name for b in BENCHES]
    keep = [r for r in rows if r["time"] == last[r["bench"]]]
    return sorted(keep, key=lambda r: order.index(r["bench"]) if r["bench"] in order else len(order))


def markdown(figs: list[dict], meta: dict, raw: dict[str, tuple[str, int]]) -> str:
    runs = sorted(
        {(f["bench"], f["time"], f["commit"], f.get("dirty"), f.get("load")) for f in figs},
        key=lambda r: [b.name for b in BENCHES].index(r[0]) if r[0] in [b.name for b in BENCHES] else 99,
    )
    lines = [
        f"Benchmarks, {meta['mode']} mode, python {meta['python']}, {meta['cpus']} CPUs shared with other work"
        " (ratio = value / baseline, both measured in the same run). Runs: "
        + "; ".join(
            f"{b} {t} on `{c}`{' (dirty tree)' if d else ''}{f', load {ld}' if ld else ''}" for b, t, c, d, ld in runs
        )
        + ".",
        "",
        "| figure | value | unit | baseline (same run) | baseline value | ratio | target | status | note |",
        "|---|---:|---|---|---:|---:|---|---|---|",
    ]
    for f in with_status(figs):
        lines.append(
            f"| {f['name']} | {fmt(f['value'])} | {f['unit']} | {f.get('baseline') or ''} | "
            f"{fmt(f.get('baseline_value'))} | {fmt(f.get('ratio'))} | {f.get('target') or ''} | "
            f"{f.get('status') or ''} | {f.get('note') or ''} |"
        )
    for name, (out, rc) in raw.items():
        tail = "\n".join(out.strip().splitlines()[-25:])
        what = (
            "printed its table (figures above parsed from it)"
            if name in PRINTED and rc == 0
            else f"printed no machine-readable figures (exit {rc})"
        )
        lines += ["", f"`{name}` {what}; its output:", "", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated benchmark names: " + ",".join(b.name for b in BENCHES))
    ap.add_argument("--smoke", action="store_true", help="tiny inputs: checks the runner, not speed")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--timeout", type=float, default=1200.0, help="per benchmark, seconds")
    args = ap.parse_args(argv)
    if not args.smoke:
        try:
            os.nice(-5)  # others share the machine: ask for a little more than them
        except OSError:
            pass
    only = {n for n in args.only.split(",") if n}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    chosen = [b for b in BENCHES if (b.name in only if only else (b.smoke is not None if args.smoke else b.in_quick))]
    now = dt.datetime.now(dt.UTC)
    meta = {
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        **commit_info(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "mode": "smoke" if args.smoke else "quick",
    }
    figs: list[dict] = []
    raw: dict[str, tuple[str, int]] = {}
    for b in chosen:
        load0 = _load()
        got, out, secs, rc = run_one(b, args.smoke, args.timeout)
        # The machine is shared: the 1-minute load average before and after each benchmark says
        # how much the figures were disturbed (2 = both cores busy with something).
        load = f"{load0:.1f}-{_load():.1f}"
        print(
            f"[bench] {b.name}: {len(got)} figures in {secs:.0f} s (exit {rc}, load {load})",
            file=sys.stderr,
            flush=True,
        )
        for f, st in zip(got, statuses(got), strict=True):
            figs.append({**f, "status": st, "bench": b.name, **meta, "load": load})
        if not got or rc or b.name in PRINTED:  # a parsed table is kept as printed too
            raw[b.name] = (out, rc)
    args.out.mkdir(parents=True, exist_ok=True)
    day = now.strftime("%Y-%m-%d")
    with open(args.out / f"{day}.jsonl", "a") as fh:
        for f in figs:
            fh.write(json.dumps(f) + "\n")
    md = markdown(latest(args.out / f"{day}.jsonl"), meta, raw)
    (args.out / f"{day}.md").write_text(md)
    print(md)
    return 0 if figs and all(rc == 0 for _, rc in raw.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

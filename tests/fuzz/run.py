"""The long fuzz run: ``python -m tests.fuzz.run [--seed N] [--scale K]`` from the repository
root. Same targets and report as tests/test_fuzz_adapters.py with a bigger budget (scale 1:
240 capture streams, 2,000 exchange-info bodies, 300 capture files, 6,000 envelopes -- about
35,000 inputs, ~20 s on one core; --scale 10 for a long run); exit status 1 when anything
crashed, diverged, or catch-all refusals reached 0.5 % of a target's inputs."""

from __future__ import annotations

import argparse
import sys
import time

from tests.fuzz.engine import Budget, report, run_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--scale", type=float, default=1.0, help="budget multiplier")
    a = ap.parse_args(argv)
    k = a.scale
    budget = Budget(
        streams_per_venue=max(1, int(60 * k)),
        mutation_rate=0.15,
        exchange_info=int(2000 * k),
        captures=int(300 * k),
        envelopes=int(6000 * k),
    )
    t0 = time.monotonic()
    tallies = run_all(a.seed, budget)
    print(report(tallies))
    for name, t in tallies.items():
        top = ", ".join(f"{r} {n}" for r, n in t.reasons.most_common(6))
        print(f"{name}: top reasons: {top}")
    print(f"seed {a.seed}, scale {k}: {sum(t.tried for t in tallies.values())} inputs in {time.monotonic() - t0:.1f} s")
    bad = any(t.crashed or t.divergences or t.generic * 200 > t.tried for t in tallies.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

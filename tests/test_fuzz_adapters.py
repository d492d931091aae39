"""Seeded, bounded mutation fuzzing with genuine inputs (issue 12); the machinery and what
counts as a crash or a divergence are in tests/fuzz/engine.py, and ``python -m tests.fuzz.run``
runs the same targets for longer. Hypothesis draws the seeds and mutation rates with
``derandomize=True``, so CI runs the same cases every time (a few seconds in all).

Asserted per target: 0 crashes, 0 book divergences (collector book vs the book rebuilt from
its published stream), catch-all ("unexpected ...") refusals below 0.5 % of inputs.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import engine

_SETTINGS = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "phases": [Phase.explicit, Phase.generate],
    "suppress_health_check": list(HealthCheck),
}

TALLIES: dict[str, engine.Tally] = {}


def _check(name: str, tally: engine.Tally) -> None:
    total = TALLIES.setdefault(name, engine.Tally())
    total.merge(tally)
    assert tally.crashed == 0 and tally.divergences == 0, "\n".join(tally.failures)
    assert total.generic * 200 <= max(total.tried, 200), engine.report({name: total})


@settings(max_examples=48, **_SETTINGS)
@given(
    venue=st.sampled_from(sorted(engine.VENUES)), seed=st.integers(0, 2**32 - 1), p=st.sampled_from([0.03, 0.15, 0.4])
)
def test_mutated_genuine_frames_never_crash_or_diverge(venue, seed, p):
    tally = engine.Tally()
    engine.fuzz_venue(venue, random.Random(seed), streams=1, p=p, tally=tally)
    _check(venue, tally)


@settings(max_examples=30, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_exchange_info_bodies_are_refused_or_loaded(seed):
    tally = engine.Tally()
    engine.fuzz_exchange_info(random.Random(seed), n=15, tally=tally)
    _check("exchange-info", tally)


@settings(max_examples=25, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_capture_files_exit_cleanly_from_capture_verify(seed):
    tally = engine.Tally()
    engine.fuzz_capture_verify(random.Random(seed), n=1, tally=tally)
    _check("capture-verify", tally)


@settings(max_examples=20, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_raw_envelopes_never_crash_the_normalizer(seed):
    tally = engine.Tally()
    engine.fuzz_normalizer(random.Random(seed), n=150, tally=tally)
    _check("normalizer", tally)


def test_fuzz_report():
    """The per-target table (pytest -s shows it); the figures are asserted by the tests above."""
    if TALLIES:
        print("\n" + engine.report(TALLIES))
        assert all(t.tried for t in TALLIES.values())

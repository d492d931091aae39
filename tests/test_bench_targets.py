"""bench/targets.py: every target form the benchmarks use is read, and a figure's status is
met / floor-explained / MISS exactly as issue 13 defines it (pure functions, no timing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.run_all import markdown, with_status
from bench.targets import Target, parse_target, status, statuses

ROOT = Path(__file__).resolve().parents[1]


def fig(name="x", value=1.0, unit="frames/s", baseline=None, baseline_value=None, target="", floor=None):
    ratio = value / baseline_value if value is not None and baseline_value else None
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": target,
        "floor": floor,
    }


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("≥ 3× cryptofeed", Target("≥", "ratio", 3.0, baseline="cryptofeed")),
        ("≥ 1× C", Target("≥", "ratio", 1.0, baseline="C")),
        ("≥ 10× C", Target("≥", "ratio", 10.0, baseline="C")),
        ("≥ 50 %", Target("≥", "ratio", 0.5, pct=True)),
        ("≥ 80 %", Target("≥", "ratio", 0.8, pct=True)),
        ("≥ 70 %", Target("≥", "ratio", 0.7, pct=True)),
        ("≤ json parse", Target("≤", "baseline", 1.0, baseline="json parse")),
        ("< 0.1 s at 20k ev/s", Target("<", "value", 0.1, unit="s", at_rate=20_000.0)),
        ("< 2 s (SLO)", Target("<", "value", 2.0, unit="s")),
        ("total ≤ 10 % of one core", Target("≤", "value", 10.0, unit="%core")),
    ],
)
def test_every_form_in_use_is_read(text: str, want: Target) -> None:
    assert parse_target(text) == want


@pytest.mark.parametrize("text", ["", "fast", "about 3× cryptofeed", "= 3 s", "≥ 3 parsecs"])
def test_other_text_is_not_a_target(text: str) -> None:
    assert parse_target(text) is None


def test_every_target_the_benchmarks_write_is_machine_readable() -> None:
    """A target string added to a bench script in a form the grammar does not know would only
    ever be 'unchecked': catch it here."""
    found = set()
    for path in (ROOT / "bench").glob("bench_*.py"):
        found |= set(re.findall(r'"((?:total )?[≥≤<>] [^"]+)"', path.read_text()))
    found |= {"≥ 50 %", "≥ 80 %", "total ≤ 10 % of one core"}  # run_all's parsed tables
    assert {"≥ 3× cryptofeed", "≥ 10× C", "≤ json parse", "< 0.1 s at 20k ev/s", "< 2 s (SLO)"} <= found
    assert [t for t in found if parse_target(t) is None] == []


def test_met_and_miss_by_ratio_percent_value_and_baseline() -> None:
    cf = "cryptofeed (same frames)"
    assert status(fig(value=310, baseline=cf, baseline_value=100, target="≥ 3× cryptofeed"), {}) == "met"
    assert status(fig(value=290, baseline=cf, baseline_value=100, target="≥ 3× cryptofeed"), {}) == "MISS"
    assert status(fig(value=70, baseline="bare", baseline_value=100, target="≥ 70 %"), {}) == "met"
    assert status(fig(value=69, baseline="bare", baseline_value=100, target="≥ 70 %"), {}) == "MISS"
    assert status(fig(value=9.55, unit="%core", target="total ≤ 10 % of one core"), {}) == "met"
    assert status(fig(value=10.2, unit="%core", target="total ≤ 10 % of one core"), {}) == "MISS"
    assert status(fig(value=1.99, unit="s", target="< 2 s (SLO)"), {}) == "met"
    assert status(fig(value=2.0, unit="s", target="< 2 s (SLO)"), {}) == "MISS"  # strict
    js = "json parse (same frames)"
    assert status(fig(value=4.0, unit="µs/frame", baseline=js, baseline_value=5.0, target="≤ json parse"), {}) == "met"
    assert status(fig(value=6.0, unit="µs/frame", baseline=js, baseline_value=5.0, target="≤ json parse"), {}) == "MISS"


def test_unmeasured_and_unjudgeable_figures() -> None:
    assert status(fig(target=""), {}) == ""
    assert status(fig(target="as fast as possible"), {}) == "unchecked: target not machine-readable"
    # a value that could not be measured misses; a missing baseline cannot be judged
    assert status(fig(value=None, unit="s", target="< 2 s (SLO)"), {}) == "MISS"
    assert status(fig(value=5.0, baseline="C order-book", target="≥ 1× C"), {}) == "unchecked: no baseline value"
    # a target naming another baseline than the figure's, or another unit, is never judged
    assert status(fig(value=5, baseline="cryptofeed", baseline_value=1, target="≥ 1× C"), {}).startswith("unchecked")
    assert status(fig(value=0.05, unit="ms", target="< 2 s (SLO)"), {}).startswith("unchecked")


def test_a_floor_missing_the_target_explains_the_miss() -> None:
    cf = "cryptofeed (same frames)"
    row = fig("ours", 44, baseline=cf, baseline_value=100, target="≥ 3× cryptofeed", floor="floor: bare")
    floor = fig("floor: bare", 98, baseline=cf, baseline_value=100)
    assert statuses([row, floor]) == ["floor: bare 0.98× (target out of reach)", ""]


def test_a_floor_meeting_the_target_excuses_nothing() -> None:
    c = "C order-book (same updates)"
    row = fig("ours", 0.85, "updates/s", c, 1.0, "≥ 10× C", floor="store + no-ops")
    floor = fig("store + no-ops", 12.0, "updates/s", c, 1.0)
    (got, _) = statuses([row, floor])
    assert got.startswith("MISS") and "12.00×" in got and "meets the target" in got


def test_a_met_row_stays_met_whatever_its_floor() -> None:
    c = "C order-book (same updates)"
    row = fig("ours", 1.12, "updates/s", c, 1.0, "≥ 1× C", floor="missing")
    assert statuses([row]) == ["met"]


def test_a_floor_must_be_in_the_run_and_comparable() -> None:
    cf = "cryptofeed (same frames)"
    row = fig("ours", 1, baseline=cf, baseline_value=2, target="≥ 3× cryptofeed", floor="gone")
    assert statuses([row]) == ["MISS (floor 'gone' not measured in this run)"]
    row["floor"] = "other"
    other = fig("other", 1, baseline="something else", baseline_value=2)
    assert statuses([row, other])[0].startswith("MISS (floor 'other' not comparable")
    other = fig("other", 1, unit="µs/frame", baseline=cf, baseline_value=2)
    assert statuses([row, other])[0].startswith("MISS (floor 'other' not comparable")


def test_stage_row_against_json_parse_with_its_bare_floor() -> None:
    js = "json parse (same frames)"
    row = fig("stage: scaled ints", 16.2, "µs/frame", js, 3.2, "≤ json parse", floor="bare ints")
    bare = fig("bare ints", 9.6, "µs/frame", js, 3.2)
    got = statuses([row, bare])[0]
    assert got == "floor: bare ints 9.60 µs/frame vs 3.20 (3.00×) (target out of reach)"
    bare["value"], bare["ratio"] = 3.0, 3.0 / 3.2  # a bare method that fits under json parse
    assert statuses([row, bare])[0].startswith("MISS")


def test_latency_target_with_a_rate_floor() -> None:
    """'< 0.1 s at 20k ev/s': a CPU ceiling below 20k ev/s puts it out of reach; one at or
    above 20k does not excuse the latency."""
    ceiling = "streaming CPU ceiling"
    row = fig("p99 at 20,000", 6.84, "s", target="< 0.1 s at 20k ev/s", floor=ceiling)
    cap = fig(ceiling, 16_162, "events/s", "target rate", 20_000)
    assert statuses([row, cap])[0] == f"floor: {ceiling} 16,162 events/s < 20,000 (target out of reach)"
    cap["value"] = 24_000
    assert statuses([row, cap])[0].startswith("MISS")
    row["value"] = None  # no row arrived at all: still explained by a ceiling below the rate
    cap["value"] = 16_162
    assert statuses([row, cap])[0].startswith("floor: ")
    row["value"] = 0.08
    assert statuses([row, cap])[0] == "met"


def test_markdown_has_a_status_column_also_for_rows_written_before_it() -> None:
    c = "C order-book (same updates)"
    run = {"bench": "book", "time": "t1", "commit": "abc", "dirty": False, "load": "0.1-0.2"}
    rows = [
        {**fig("ours", 0.85, "updates/s", c, 1.0, "≥ 10× C", floor="fl"), **run},
        {**fig("fl", 2.78, "updates/s", c, 1.0), **run},
        {**fig("old", 3, "updates/s", c, 1.0, "≥ 1× C"), **run, "time": "t0"},  # no status key
    ]
    rows[0]["status"] = statuses(rows[:2])[0]
    assert [r["status"] for r in with_status(rows)] == [rows[0]["status"], "", "met"]
    md = markdown(rows, {"mode": "quick", "python": "3", "cpus": 2}, {})
    assert "| target | status | note |" in md
    assert "| ≥ 10× C | floor: fl 2.78× (target out of reach) |" in md

"""bench_lake_sink's sink figures: the row with the "≥ 80 %" target compares work (rates to the
last record / last commit) and names the bare floor measured in the same run, which explains a
miss only when it misses too; the old wall-clock figure stays as a row without a target. The
quick run measures the floor (pure functions and the runner's table, no timing)."""

from __future__ import annotations

from bench.bench_lake_sink import SINK, SINK_BASELINE, SINK_FLOOR, SINK_WALL, sink_figures
from bench.run_all import BENCHES
from bench.targets import statuses


def figs_and_statuses(sink: float, floor: float | None) -> dict[str, str]:
    figs = sink_figures(sink, 100_000.0, floor, old_sink_rate=130_000.0, old_consume_rate=100_000.0)
    return dict(zip([f["name"] for f in figs], statuses(figs), strict=True)), {f["name"]: f for f in figs}


def test_sink_row_compares_work_against_its_floor() -> None:
    st, figs = figs_and_statuses(sink=20_000.0, floor=25_000.0)
    assert figs[SINK]["target"] == "≥ 80 %" and figs[SINK]["floor"] == SINK_FLOOR
    assert figs[SINK]["baseline"] == figs[SINK_FLOOR]["baseline"] == SINK_BASELINE
    assert st[SINK].startswith("floor: ") and "25 %" in st[SINK]  # the bare floor misses 80 % too
    assert st[SINK_FLOOR] == "" and st[SINK_WALL] == ""  # reports, no target
    assert figs[SINK_WALL]["ratio"] == 1.3  # the old figure kept beside it


def test_floor_that_meets_the_target_explains_nothing() -> None:
    st, _ = figs_and_statuses(sink=20_000.0, floor=90_000.0)
    assert st[SINK].startswith("MISS (its floor")
    st, _ = figs_and_statuses(sink=85_000.0, floor=90_000.0)
    assert st[SINK] == "met"


def test_without_the_floor_the_miss_says_so() -> None:
    st, figs = figs_and_statuses(sink=20_000.0, floor=None)
    assert SINK_FLOOR not in figs
    assert st[SINK].startswith("MISS (floor") and "not measured in this run" in st[SINK]


def test_quick_run_measures_the_floor() -> None:
    (b,) = [b for b in BENCHES if b.name == "lake_sink"]
    assert "--sink-floor" in b.quick

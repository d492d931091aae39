"""bench/bench_processing.py's latency floor: the bare-relay figures computed from what a reader
got, and their wiring as the floor of the 20k ev/s after-close row and of the SLO rows
(statuses judged by bench/targets.py). No broker: the inputs are built here."""

from __future__ import annotations

import pytest

from bench import bench_processing as bp
from bench.figures import parse
from bench.targets import statuses

WINDOW_S = bp.WINDOW_US / 1e6


def _sent(rate: float, seconds: float, t0: float) -> list[tuple[str, int, float]]:
    out = []
    for i in range(int(rate * seconds)):
        t = t0 + i / rate
        ts = int(round(t * 1e6))
        out.append((f"X|{ts - ts % bp.WINDOW_US}", ts, ts / 1e6))
    return out


def test_floor_stats_of_a_pipeline_with_a_constant_hop():
    """Every record visible 50 ms after it was produced: produce -> visible is 50 ms; a window
    closes at the earliest when the first record past its end + the lateness is visible, i.e.
    lateness + 50 ms after its end; an event waits that plus the rest of its window."""
    t0 = 1_800_000_000.0  # a window start
    sent = _sent(100, 6 + bp.TAIL_S, t0)
    got = [(ts // 1000, ts / 1e6 + 0.05) for _, ts, _ in sent]
    f = bp.floor_stats(got, sent, n_measured=600)
    lateness = bp.LATENESS_MS / 1000
    assert f["records"] == f["sent"] == len(sent)
    assert f["p50"] == pytest.approx(0.05, abs=0.002) and f["p99"] == pytest.approx(0.05, abs=0.002)
    assert f["close_p50"] == pytest.approx(lateness + 0.05, abs=0.002)
    assert f["close_p99"] == pytest.approx(lateness + 0.05, abs=0.002)
    # events spread evenly over their windows: the median waits half a window more, p99 nearly one
    assert f["slo_p50"] == pytest.approx(WINDOW_S / 2 + lateness + 0.05, abs=0.02)
    assert f["slo_p99"] == pytest.approx(0.99 * WINDOW_S + lateness + 0.05, abs=0.02)


def test_a_window_without_a_later_record_has_no_floor():
    """The last windows of the input (no record past their end + lateness) cannot be bounded
    by a later record: they are left out, not counted as closing at once."""
    t0 = 1_800_000_000.0
    sent = _sent(100, 3.0, t0)  # no tail: the last window has no later record
    got = [(ts // 1000, ts / 1e6 + 0.05) for _, ts, _ in sent]
    f = bp.floor_stats(got, sent, n_measured=300)
    assert f["close_p99"] == pytest.approx(bp.LATENESS_MS / 1000 + 0.05, abs=0.002)


def _result(rate: int, close_p99: float, p99: float) -> dict:
    return {
        "rate": rate,
        "achieved": rate,
        "events_without_row": 0,
        "close_p50": close_p99,
        "close_p99": close_p99,
        "end_close": 1.0,
        "p50": p99,
        "p99": p99,
        "growth": 0.0,
        "cpu_us_per_event": {"normalizer": 20.0, "feature processor": 20.0, "load generator": 20.0},
    }


def _floor(rate: int, p99: float, slo_p99: float) -> dict:
    return {
        "rate": rate,
        "achieved": rate,
        "p50": p99 / 2,
        "p99": p99,
        "close_p50": 0.3,
        "close_p99": 0.4,
        "slo_p50": 0.8,
        "slo_p99": slo_p99,
        "records": 1,
        "sent": 1,
    }


def _statuses(capsys, results, floors) -> dict[str, dict]:
    bp.emit_latency(results, floors)
    figs = parse(capsys.readouterr().out)
    for f, s in zip(figs, statuses(figs), strict=True):
        f["status"] = s
    return {f["name"]: f for f in figs}


def test_the_20k_row_is_out_of_reach_only_when_the_bare_relays_miss_the_target(capsys):
    row = "latency after window close p99 at 20,000 ev/s"
    figs = _statuses(capsys, [_result(20_000, 1.8, 2.8)], [_floor(20_000, 0.30, 1.4)])
    assert figs[row]["floor"] == bp.floor_names(20_000)["visible"]
    assert figs[row]["status"].startswith("floor: ") and figs[row]["status"].endswith("(target out of reach)")
    figs = _statuses(capsys, [_result(20_000, 1.8, 2.8)], [_floor(20_000, 0.05, 1.4)])
    assert figs[row]["status"].startswith("MISS (its floor")
    # without a floor run (--no-floor) the row is a plain MISS
    figs = _statuses(capsys, [_result(20_000, 1.8, 2.8)], [])
    assert figs[row]["floor"] is None and figs[row]["status"] == "MISS"


def test_the_slo_rows_name_their_floor_and_a_floor_under_2_s_excuses_nothing(capsys):
    figs = _statuses(capsys, [_result(5_000, 1.1, 2.1), _result(1_000, 0.6, 1.6)], [_floor(5_000, 0.5, 1.6)])
    slo5 = figs["latency exchange_ts -> feature row p99 at 5,000 ev/s"]
    assert slo5["floor"] == bp.floor_names(5_000)["slo"]
    assert slo5["status"].startswith("MISS (its floor")
    assert figs["latency exchange_ts -> feature row p99 at 1,000 ev/s"]["status"] == "met"
    # the other rates' after-close rows keep no target
    assert figs["latency after window close p99 at 5,000 ev/s"]["status"] == ""

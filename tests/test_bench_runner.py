"""`python -m bench --smoke`: the benchmark runner works end to end on tiny inputs.

CI never times anything (the machine is shared and noisy); this only proves that the
runner starts each smoke benchmark, collects its figure lines and writes the JSON lines
and the Markdown table the README's benchmark section is taken from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.broker  # bench_ml's smoke run goes through an embedded broker
def test_bench_smoke_writes_figures(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (jl,) = tmp_path.glob("*.jsonl")
    figs = [json.loads(line) for line in jl.read_text().splitlines()]
    assert {f["bench"] for f in figs} == {"parse", "book", "ml"}
    for f in figs:
        assert {"name", "value", "unit", "baseline", "baseline_value", "ratio", "commit"} <= f.keys()
        assert f["value"] >= 0 and f["mode"] == "smoke"
        if f["baseline_value"]:
            # value and baseline are written rounded to 4 decimals (bench/figures.py), the ratio from
            # the unrounded pair: it lies between the ratios the rounding intervals allow (smoke
            # figures can be as small as 0.02, where rounding alone moves the ratio by 0.2 %).
            v, b, h = f["value"], f["baseline_value"], 5e-5
            assert (v - h) / (b + h) - h <= f["ratio"] <= (v + h) / (b - h) + h, f
    names = {f["name"] for f in figs}
    assert "parse+normalize binance depth" in names
    assert "depth frame stage: protobuf envelope" in names  # the stage breakdown stays
    assert any(n.startswith("L2 book ") for n in names)
    # the ML benchmark: every figure it promises, latency through the broker included
    assert {"ml_dataset_build_rows_per_s", "ml_inference_broker_rows_per_s", "ml_feature_to_prediction_p99_ms"} <= names
    assert {f"ml_train_{h}s_seconds" for h in (1, 10, 60)} <= names
    md = next(tmp_path.glob("*.md")).read_text()
    assert "| figure | value |" in md and "parse+normalize binance depth" in md

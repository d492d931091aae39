"""LightGBM per horizon with walk-forward validation against a naive baseline.

Walk-forward: the dataset's distinct seconds are cut into `folds + 1` consecutive
blocks; fold i trains on blocks 0..i and is scored on block i + 1, so a model is never
scored on a time before any row it learned from. Train rows whose label horizon reaches
into the test block are purged (their label was computed from test-period mids). The
baseline is the zero-return forecast (the martingale guess a mid-price model must beat);
`beats_baseline` compares pooled held-out squared error.

Training is deterministic (one thread, fixed seeds, `deterministic=True`), so the same
dataset gives the same booster text and the same predictions everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ml.dataset import label_column
from ml.inputs import INPUT_COLUMNS, input_matrix

if TYPE_CHECKING:  # imported by the fit (as ml/registry.py by the model load), not with the code location
    import lightgbm as lgb

PARAMS: dict = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 1.0,
    "bagging_fraction": 1.0,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "seed": 7,
    "verbose": -1,
}
NUM_ROUNDS = 80
DEFAULT_FOLDS = 4


@dataclass(slots=True)
class FoldMetrics:
    fold: int
    train_rows: int
    test_rows: int
    mse_model: float
    mse_baseline: float

    @property
    def skill(self) -> float:
        """1 - mse_model / mse_baseline (> 0: better than the zero-return guess)."""
        return 1.0 - self.mse_model / self.mse_baseline if self.mse_baseline > 0 else 0.0


@dataclass(slots=True)
class TrainResult:
    horizon_s: int
    booster: lgb.Booster | None
    folds: list[FoldMetrics] = field(default_factory=list)
    rows: int = 0

    @property
    def mse_model(self) -> float:
        n = sum(f.test_rows for f in self.folds)
        return sum(f.mse_model * f.test_rows for f in self.folds) / n if n else float("nan")

    @property
    def mse_baseline(self) -> float:
        n = sum(f.test_rows for f in self.folds)
        return sum(f.mse_baseline * f.test_rows for f in self.folds) / n if n else float("nan")

    @property
    def beats_baseline(self) -> bool:
        """Pooled held-out error strictly below the baseline's (no folds: not proven)."""
        return bool(self.folds) and self.mse_model < self.mse_baseline

    def metrics(self) -> dict[str, float]:
        out = {
            "mse_model": self.mse_model,
            "mse_baseline": self.mse_baseline,
            "skill": 1.0 - self.mse_model / self.mse_baseline if self.mse_baseline > 0 else 0.0,
            "rows": float(self.rows),
            "folds": float(len(self.folds)),
        }
        for f in self.folds:
            out |= {
                f"fold{f.fold}_mse_model": f.mse_model,
                f"fold{f.fold}_mse_baseline": f.mse_baseline,
                f"fold{f.fold}_test_rows": float(f.test_rows),
            }
        return out


def _fit(x: np.ndarray, y: np.ndarray) -> lgb.Booster:
    import lightgbm as lgb

    ds = lgb.Dataset(x, y, feature_name=list(INPUT_COLUMNS), free_raw_data=True, params={"verbose": -1})
    return lgb.train(PARAMS, ds, num_boost_round=NUM_ROUNDS)


def predict(booster: lgb.Booster, inputs: pa.Table) -> np.ndarray:
    """Scores of `inputs` (ml.inputs.model_inputs rows); the one scoring call offline and online."""
    x = input_matrix(inputs)
    return booster.predict(x, num_threads=1) if len(x) else np.empty(0)


def walk_forward_blocks(ts: np.ndarray, folds: int) -> list[tuple[int, int]]:
    """[start, end) µs of `folds + 1` consecutive blocks of the distinct times in `ts`."""
    uniq = np.unique(ts)
    if len(uniq) < folds + 1:
        return []
    edges = [uniq[round(i * len(uniq) / (folds + 1))] for i in range(folds + 1)] + [uniq[-1] + 1]
    return [(int(edges[i]), int(edges[i + 1])) for i in range(folds + 1)]


def train_horizon(rows: pa.Table, horizon_s: int, folds: int = DEFAULT_FOLDS) -> TrainResult:
    """Walk-forward metrics and the final booster (fit on every labelled row)."""
    y_all = rows[label_column(horizon_s)].to_numpy(zero_copy_only=False)
    keep = ~np.isnan(y_all)
    data = rows.filter(pa.array(keep))
    y = y_all[keep]
    ts = data["exchange_ts"].to_numpy()
    x = input_matrix(data)
    res = TrainResult(horizon_s, None, rows=len(y))
    if not len(y):
        return res
    blocks = walk_forward_blocks(ts, folds)
    h_us = horizon_s * 1_000_000
    for i in range(1, len(blocks)):
        test_lo, test_hi = blocks[i]
        train = ts + h_us < test_lo  # purged: label ends before the test block
        test = (ts >= test_lo) & (ts < test_hi)
        if train.sum() < 2 * PARAMS["min_data_in_leaf"] or not test.any():
            continue
        model = _fit(x[train], y[train])
        p = model.predict(x[test], num_threads=1)
        res.folds.append(
            FoldMetrics(
                i, int(train.sum()), int(test.sum()), float(np.mean((p - y[test]) ** 2)), float(np.mean(y[test] ** 2))
            )
        )
    res.booster = _fit(x, y)
    return res

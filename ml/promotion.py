"""Promotion of a shadow model version: compare it with the champion on sealed hours.

Both versions scored the same feature rows online (the shadow on its canary symbols,
under its own published name); the comparison joins their predictions by feature row,
takes the realized label of each row from the lake features (ml.dataset, the same label
definition as training) and compares squared errors, plus the prediction drift between
the two versions. The shadow is promoted (the `champion` alias moved to it) only when it
is at least as good as the champion on enough common rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml.dataset import build_rows, label_column


@dataclass(frozen=True, slots=True)
class Comparison:
    rows: int  # feature rows scored by both versions and labelled
    mse_champion: float
    mse_shadow: float
    drift_mean_abs: float  # mean |shadow - champion| prediction
    min_rows: int

    @property
    def passed(self) -> bool:
        return self.rows >= self.min_rows and self.mse_shadow <= self.mse_champion

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _by_feature(preds: pa.Table, model: str, version: str) -> dict[str, float]:
    mask = pc.and_(pc.equal(preds["model"], model), pc.equal(preds["model_version"], version))
    t = preds.filter(mask)
    return dict(zip(t["feature_event_id"].to_pylist(), t["prediction"].to_pylist()))


def compare_versions(
    features: pa.Table,
    until_us: int,
    preds: pa.Table,
    model: str,
    horizon_s: int,
    champion: str,
    shadow: str,
    min_rows: int = 100,
) -> Comparison:
    """Champion vs shadow version of `model` on the feature rows both scored (features_1s
    rows of the compared hours; labels need data before `until_us`)."""
    labels = build_rows(features, until_us)
    y = dict(zip(labels["event_id"].to_pylist(), labels[label_column(horizon_s)].to_pylist()))
    a, b = _by_feature(preds, model, champion), _by_feature(preds, model, shadow)
    common = [f for f in a.keys() & b.keys() if f in y and y[f] is not None and y[f] == y[f]]
    if not common:
        return Comparison(0, float("nan"), float("nan"), float("nan"), min_rows)
    yy = np.array([y[f] for f in common])
    pa_, pb = np.array([a[f] for f in common]), np.array([b[f] for f in common])
    return Comparison(
        len(common),
        float(np.mean((pa_ - yy) ** 2)),
        float(np.mean((pb - yy) ** 2)),
        float(np.mean(np.abs(pb - pa_))),
        min_rows,
    )

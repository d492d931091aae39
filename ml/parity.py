"""Offline/online parity of predictions: the published predictions of an hour against the
same model versions scored offline on the lake's features of that hour.

Both sides run ml.predictions.score_features (one code path: the same model inputs from
the same feature values, the same booster text, LightGBM's per-row prediction), and the
feature rows are bit-identical between the stream and the lake (the feature parity check
proves that), so the comparison is exact: same float64 bits, no tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from ml.predictions import score_features
from ml.registry import horizon_of


def compare_predictions(
    features: pa.Table, published: pa.Table, booster_for: Callable[[str, str], object]
) -> tuple[bool, dict]:
    """(passed, details). Fails on any value that differs from the offline score of the same
    (feature row, model, version) and on predictions of feature rows the lake hour lacks;
    reports per model how many lake rows no version scored (`unscored`)."""
    details: dict = {"models": {}, "mismatches": []}
    if not published.num_rows:
        return True, details
    lake_ids = set(features["event_id"].to_pylist())
    groups = sorted(set(zip(published["model"].to_pylist(), published["model_version"].to_pylist())))
    scored: dict[str, set[str]] = {}
    for model, version in groups:
        mask = pa.array(
            [
                m == model and v == version
                for m, v in zip(published["model"].to_pylist(), published["model_version"].to_pylist())
            ]
        )
        pub = published.filter(mask)
        offline = score_features(features, model, version, horizon_of(model), booster_for(model, version))
        want = dict(zip(offline["feature_event_id"].to_pylist(), offline["prediction"].to_pylist()))
        n_bad = 0
        for fid, got in zip(pub["feature_event_id"].to_pylist(), pub["prediction"].to_pylist()):
            scored.setdefault(model, set()).add(fid)
            if fid not in lake_ids:
                details["mismatches"].append(
                    {
                        "model": model,
                        "version": version,
                        "feature_event_id": fid,
                        "problem": "feature row not in the lake hour",
                    }
                )
                n_bad += 1
            elif want[fid] != got:
                details["mismatches"].append(
                    {
                        "model": model,
                        "version": version,
                        "feature_event_id": fid,
                        "published": repr(got),
                        "offline": repr(want[fid]),
                    }
                )
                n_bad += 1
        details["models"][f"{model}@{version}"] = {"published": pub.num_rows, "mismatches": n_bad}
    for model, ids in scored.items():
        details["models"][f"{model}:unscored"] = len(lake_ids - ids)
    details["mismatches"] = details["mismatches"][:10]
    return not any(v.get("mismatches", 0) for v in details["models"].values() if isinstance(v, dict)), details

"""The model's input vector, derived from a features_1s row: one definition for training,
offline scoring and the online service.

Raw feature columns are scaled integers at the instrument's scale (prices differ by
orders of magnitude between symbols and venues), so the model sees scale-free values:
prices relative to the mid, sizes in base units, counts as they are. Everything is
float64 computed by pyarrow compute kernels from the same columns, so a row scored online
(decoded from feature.*) and the same row read from the lake give the same bits.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from features.spec import SPEC_VERSION

#: Columns that identify a row (never model inputs).
KEY_COLUMNS = ("event_id", "exchange", "market", "symbol", "exchange_ts")

#: Model input names, in the order the booster is trained with.
INPUT_COLUMNS = (
    "spread_rel",
    "micro_rel",
    "vwap_rel",
    "close_rel",
    "imbalance_10",
    "trade_imbalance",
    "depth_bid_10bps",
    "depth_ask_10bps",
    "best_bid_qty",
    "best_ask_qty",
    "trade_count",
    "volume",
    "buy_volume",
    "sell_volume",
    "event_count",
    "book_event_count",
    "realized_vol_60s",
)

#: Model input spec version: part of every model's params, so a model is never fed rows of
#: another feature spec (the service dead-letters those).
INPUTS_VERSION = f"spec{SPEC_VERSION}.inputs1"


def _f(col) -> pa.ChunkedArray:
    return pc.cast(col, pa.float64())


def _scale(table: pa.Table, col: str, scale_col: str) -> pa.ChunkedArray:
    """Integer column at its row's scale -> float value (x / 10**scale)."""
    pow10 = pc.power(pa.scalar(10.0), _f(table[scale_col]))
    return pc.divide(_f(table[col]), pow10)


def _rel(table: pa.Table, col: str) -> pa.ChunkedArray:
    """price / mid - 1 for an integer price column at price_scale (mid_px is in price units)."""
    return pc.subtract(pc.divide(_scale(table, col, "price_scale"), table["mid_px"]), pa.scalar(1.0))


def model_inputs(features: pa.Table) -> pa.Table:
    """features_1s rows (FEATURE_SCHEMA columns) -> INPUT_COLUMNS as float64 (nulls = NaN
    for LightGBM, which handles missing values natively)."""
    t = features
    cols = {
        "spread_rel": pc.divide(_scale(t, "spread_px", "price_scale"), t["mid_px"]),
        "micro_rel": pc.subtract(pc.divide(t["microprice"], t["mid_px"]), pa.scalar(1.0)),
        "vwap_rel": pc.subtract(pc.divide(t["vwap"], t["mid_px"]), pa.scalar(1.0)),
        "close_rel": _rel(t, "close_px"),
        "imbalance_10": _f(t["imbalance_10"]),
        "trade_imbalance": _f(t["trade_imbalance"]),
        "depth_bid_10bps": _scale(t, "depth_bid_10bps", "size_scale"),
        "depth_ask_10bps": _scale(t, "depth_ask_10bps", "size_scale"),
        "best_bid_qty": _scale(t, "best_bid_qty", "size_scale"),
        "best_ask_qty": _scale(t, "best_ask_qty", "size_scale"),
        "trade_count": _f(t["trade_count"]),
        "volume": _scale(t, "volume", "size_scale"),
        "buy_volume": _scale(t, "buy_volume", "size_scale"),
        "sell_volume": _scale(t, "sell_volume", "size_scale"),
        "event_count": _f(t["event_count"]),
        "book_event_count": _f(t["book_event_count"]),
        "realized_vol_60s": _f(t["realized_vol_60s"]),
    }
    assert tuple(cols) == INPUT_COLUMNS
    return pa.table({k: pc.fill_null(v, float("nan")) if v.null_count else v for k, v in cols.items()})


def input_matrix(inputs: pa.Table):
    """(rows x INPUT_COLUMNS) float64 numpy matrix, C order, for LightGBM."""
    import numpy as np

    return (
        np.column_stack([inputs[c].to_numpy(zero_copy_only=False) for c in INPUT_COLUMNS]).astype(
            np.float64, copy=False
        )
        if inputs.num_rows
        else np.empty((0, len(INPUT_COLUMNS)))
    )

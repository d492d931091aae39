"""Training datasets: feature rows of a day with future mid-price returns as labels.

One row per (exchange, market, symbol, second) of lake/features_1s: the key, the model
inputs (ml/inputs.py) and one label per horizon h:

    label_h(t) = ln(mid(t + h) / mid(t))

where mid(t) is the row's `mid_px` (the book mid at the end of window t) and mid(t + h)
is the mid of the newest row of the same instrument whose window starts at or before
t + h. A window without events has no row but an unchanged book, so the as-of row gives
the exact mid. Labels use rows at or after t only (never before), and only rows the data
covers: a label whose horizon reaches `until_us` (end of the data read, e.g. the end of
the day) is null rather than guessed. `leakage_violations` proves the first property by
recomputing labels with the future cut off; the dataset manifest records the Iceberg
snapshot id of every table read so `build_dataset` can rebuild it bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.table import Table

from features.spec import FEATURE_SCHEMA, FEATURES_TABLE, SPEC_VERSION
from ml.inputs import INPUT_COLUMNS, INPUTS_VERSION, model_inputs
from schemas.iceberg import ts_range
from schemas.tables import INSTRUMENT_FIELDS

HORIZONS_S: tuple[int, ...] = (1, 10, 60)
DAY_US = 86_400_000_000
INSTRUMENT = ("exchange", "market", "symbol")
SORT = [(c, "ascending") for c in (*INSTRUMENT, "exchange_ts")]


def label_column(horizon_s: int) -> str:
    return f"label_{horizon_s}s"


DATASET_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), False),
        *INSTRUMENT_FIELDS,
        pa.field("exchange_ts", pa.int64(), False),
        pa.field("mid_px", pa.float64()),
    ]
    + [pa.field(c, pa.float64()) for c in INPUT_COLUMNS]
    + [pa.field(label_column(h), pa.float64()) for h in HORIZONS_S]
)


def _ts_int(col) -> np.ndarray:
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def future_returns(features: pa.Table, horizons_s: Sequence[int], until_us: int) -> dict[int, np.ndarray]:
    """Per row of `features` (sorted by instrument then time), the log mid return over each
    horizon, NaN where the mid is missing or the horizon reaches `until_us`. Reads, for row
    t, only rows of the same instrument with times in [t, t + h]."""
    n = features.num_rows
    out = {h: np.full(n, np.nan) for h in horizons_s}
    if not n:
        return out
    ts = _ts_int(features["exchange_ts"])
    mid = pc.fill_null(pc.cast(features["mid_px"], pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    inst = pc.binary_join_element_wise(features["exchange"], features["market"], features["symbol"], "|")
    inst = inst.to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(inst[1:] != inst[:-1]) + 1
    starts, ends = np.concatenate(([0], bounds)), np.concatenate((bounds, [n]))
    for a, b in zip(starts, ends):
        t, m = ts[a:b], mid[a:b]
        if np.any(np.diff(t) <= 0):
            raise ValueError("rows must be sorted by instrument then exchange_ts, one row per window")
        for h in horizons_s:
            target = t + h * 1_000_000
            j = np.searchsorted(t, target, side="right") - 1  # newest row at or before t + h
            fut = m[j]
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.log(fut / m)
            r[(target >= until_us) | ~(m > 0) | ~(fut > 0)] = np.nan
            out[h][a:b] = r
    return out


def build_rows(features: pa.Table, until_us: int, horizons_s: Sequence[int] = HORIZONS_S) -> pa.Table:
    """Dataset rows (DATASET_SCHEMA) from features_1s rows whose data is complete before `until_us`."""
    f = features.select(FEATURE_SCHEMA.names).cast(FEATURE_SCHEMA).sort_by(SORT).combine_chunks()
    labels = future_returns(f, horizons_s, until_us)
    inputs = model_inputs(f)
    cols = {
        "event_id": f["event_id"],
        "exchange": f["exchange"],
        "market": f["market"],
        "symbol": f["symbol"],
        "exchange_ts": pc.cast(f["exchange_ts"], pa.int64()),
        "mid_px": f["mid_px"],
    }
    cols |= {c: inputs[c] for c in INPUT_COLUMNS}
    cols |= {label_column(h): pa.array(labels[h], pa.float64(), from_pandas=True) for h in horizons_s}
    return pa.table(cols).cast(DATASET_SCHEMA).combine_chunks()


def checksum(rows: pa.Table) -> str:
    """sha256 over every column's validity and values (floats by their bits, NaN included):
    equal iff the datasets are equal bit for bit, whatever the chunking or file format
    they went through (Arrow IPC bytes are not: a Parquet round trip adds validity bitmaps)."""
    h = hashlib.sha256()
    t = rows.cast(DATASET_SCHEMA)
    for name in DATASET_SCHEMA.names:
        col = t[name].combine_chunks() if t.num_rows else pa.array([], DATASET_SCHEMA.field(name).type)
        h.update(name.encode() + b"\0")
        h.update(pc.is_valid(col).to_numpy(zero_copy_only=False).tobytes())
        if pa.types.is_string(col.type):
            h.update("\0".join(v or "" for v in col.to_pylist()).encode())
        else:
            zero = 0.0 if pa.types.is_floating(col.type) else 0
            h.update(pc.fill_null(col, zero).to_numpy(zero_copy_only=False).tobytes())
    return h.hexdigest()


def leakage_violations(
    rows: pa.Table, features: pa.Table, until_us: int, cuts: int = 12, horizons_s: Sequence[int] = HORIZONS_S
) -> list[dict]:
    """Recompute labels with the future cut off at `cuts` points c: from the feature rows with
    time < c only, every label whose horizon ends before c must equal the stored label bit
    for bit, and every label reaching c must be null in the recomputation (so a stored label
    there could only have come from the future it is meant to predict, which is fine, or
    from shifted rows, which the first comparison catches). Returns the differing rows."""
    if not rows.num_rows:
        return []
    f = features.select(FEATURE_SCHEMA.names).cast(FEATURE_SCHEMA).sort_by(SORT).combine_chunks()
    ts = _ts_int(f["exchange_ts"])
    stored_ts = rows["exchange_ts"].to_numpy()
    lo, hi = int(stored_ts.min()), int(min(stored_ts.max(), until_us))
    bad: list[dict] = []
    stored = {h: rows[label_column(h)].to_numpy(zero_copy_only=False) for h in horizons_s}
    for c in np.unique(np.linspace(lo + 1, hi + 1, cuts).astype(np.int64)):
        cut = f.filter(pa.array(ts < c))
        relabeled = future_returns(cut, horizons_s, int(c))
        idx = pc.fill_null(pc.index_in(cut["event_id"], value_set=rows["event_id"]), -1).to_numpy(zero_copy_only=False)
        for h in horizons_s:
            have = (idx >= 0) & ~np.isnan(relabeled[h])  # horizon covered before the cut
            a = relabeled[h][have]
            b = stored[h][idx[have]]
            diff = np.flatnonzero(a.view(np.int64) != b.view(np.int64))
            ids = cut["event_id"].filter(pa.array(have)).to_pylist() if len(diff) else []
            for k in diff[: 20 - len(bad)]:
                bad.append(
                    {
                        "cut_us": int(c),
                        "horizon_s": h,
                        "event_id": ids[k],
                        "stored": repr(float(b[k])),
                        "recomputed": repr(float(a[k])),
                    }
                )
            if len(bad) >= 20:
                return bad
    return bad


# -- the dataset of a day, as of recorded snapshots ------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a dataset was built from: enough to rebuild it bit for bit (time travel)."""

    day: str
    start_us: int
    end_us: int
    snapshots: dict[str, int | None]  # table identifier -> snapshot id read (None: empty table)
    rows: int
    checksum: str
    horizons_s: list[int] = field(default_factory=lambda: list(HORIZONS_S))
    feature_spec_version: int = SPEC_VERSION
    inputs_version: str = INPUTS_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        return cls(**json.loads(data))


def read_features_as_of(table: Table, start_us: int, end_us: int, snapshot_id: int | None) -> pa.Table:
    """features_1s rows with window start in [start, end) as of one snapshot."""
    if snapshot_id is None:
        return FEATURE_SCHEMA.empty_table()
    return table.scan(row_filter=ts_range(start_us, end_us), snapshot_id=snapshot_id).to_arrow()


def current_snapshots(tables: Mapping[str, Table]) -> dict[str, int | None]:
    return {name: (t.current_snapshot().snapshot_id if t.current_snapshot() else None) for name, t in tables.items()}


def build_dataset(
    features_table: Table, day: str, start_us: int, snapshots: Mapping[str, int | None]
) -> tuple[pa.Table, Manifest]:
    """The day's dataset from features_1s as of `snapshots[features table]`; `snapshots`
    also lists the other tables the caller read (sealed-hour checks), recorded as they are."""
    end = start_us + DAY_US
    sid = snapshots[FEATURES_TABLE.identifier]
    rows = build_rows(read_features_as_of(features_table, start_us, end, sid), end)
    return rows, Manifest(day, start_us, end, dict(snapshots), rows.num_rows, checksum(rows))


def to_parquet(rows: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(rows, buf, compression="zstd")
    return buf.getvalue()


def from_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data)).cast(DATASET_SCHEMA).combine_chunks()

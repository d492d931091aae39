"""The prediction record: its wire form on prediction.<market>.<model>, its identity and
its lake table (market.predictions).

One record per (feature row, model version). `event_id` hashes the feature row's event_id
with the model name and version, so a prediction recomputed after a crash (same row, same
model version) has the id of the first copy and consumers dedup on it, while a new model
version's predictions never collide with the old one's. JSON like the feature records
(features/records.py): the float repr round-trips exactly, so a prediction decoded from
the topic has the bits the booster produced.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from schemas.tables import INSTRUMENT_FIELDS, TS, TableSpec, column

PREDICTION_VERSION = 1
CONTENT_TYPE = f"application/json; schema=ticklake.prediction.v{PREDICTION_VERSION}"


PREDICTION_SCHEMA = pa.schema(
    [
        column("event_id", pa.string()),
        column("feature_event_id", pa.string()),
        *INSTRUMENT_FIELDS,
        column("exchange_ts", TS),  # the feature row's window start (the lake partitions on it)
        column("model", pa.string()),
        column("model_version", pa.string()),
        column("horizon_s", pa.int32()),
        column("prediction", pa.float64()),  # forecast log mid return over horizon_s
        column("feature_spec_version", pa.int32()),
    ]
)

PREDICTIONS_TABLE = TableSpec("predictions", PREDICTION_SCHEMA)
_WIRE = [f.name for f in PREDICTION_SCHEMA]


def prediction_event_id(feature_event_id: str, model: str, version: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"prediction|v{PREDICTION_VERSION}|{feature_event_id}|{model}|{version}".encode())
    return h.hexdigest()


def encode_prediction(row: dict) -> bytes:
    """`row` with exchange_ts as integer µs; columns in schema order."""
    return json.dumps([row[n] for n in _WIRE], separators=(",", ":"), allow_nan=False).encode()


def decode_prediction(value: bytes) -> dict:
    vals = json.loads(value)
    if not isinstance(vals, list) or len(vals) != len(_WIRE):
        raise ValueError("not a prediction record")
    return dict(zip(_WIRE, vals))


def predictions_table(rows: list[dict]) -> pa.Table:
    """Decoded records (exchange_ts in µs) -> PREDICTION_SCHEMA."""
    ints = pa.schema(
        [pa.field("exchange_ts", pa.int64(), False) if f.name == "exchange_ts" else f for f in PREDICTION_SCHEMA]
    )
    return pa.Table.from_pylist(rows, schema=ints).cast(PREDICTION_SCHEMA)


def score_features(features: pa.Table, model: str, version: str, horizon_s: int, booster) -> pa.Table:
    """Predictions (PREDICTION_SCHEMA, input order) of features_1s rows by one model version:
    the one scoring path of the online service and of the offline parity check."""
    import pyarrow.compute as pc

    from ml.inputs import model_inputs
    from ml.train import predict

    n = features.num_rows
    if not n:
        return PREDICTION_SCHEMA.empty_table()
    preds = predict(booster, model_inputs(features))
    fids = features["event_id"].to_pylist()
    return pa.table(
        {
            "event_id": [prediction_event_id(f, model, version) for f in fids],
            "feature_event_id": features["event_id"],
            "exchange": features["exchange"],
            "market": features["market"],
            "symbol": features["symbol"],
            "exchange_ts": pc.cast(features["exchange_ts"], TS),
            "model": [model] * n,
            "model_version": [version] * n,
            "horizon_s": pa.array([horizon_s] * n, pa.int32()),
            "prediction": pa.array(preds, pa.float64()),
            "feature_spec_version": pc.cast(features["spec_version"], pa.int32()),
        }
    ).cast(PREDICTION_SCHEMA)

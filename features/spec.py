"""The 1-second feature record: its Arrow schema, its lake table and its identity.

Defined once here; the streaming processor, the local batch asset, Spark (`applyInArrow`)
and the lake sink all import it, so "which columns does a feature row have" has one
answer. Prices in the integer columns use the row's `price_scale`, sizes its `size_scale`;
every size (best bid/ask qty, depth, volumes) is in the BASE ASSET whatever the venue's
unit (contracts are converted on input, features/inputs.py, schemas/units.py), so rows of
different venues compare directly; ratio-like values (mid,
microprice, VWAP, imbalances, volatility) are float64 computed from exact integers by one
code path, so every runtime produces bit-identical rows.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from schemas.tables import HOUR_US, INSTRUMENT_FIELDS, TS, TableSpec, column

#: Bump when a formula changes: the version is part of every feature event_id, so rows of
#: two spec versions never dedup against each other.
SPEC_VERSION = 2  # 2: sizes in the base asset (contract units converted)

WINDOW_US = 1_000_000  # tumbling window; divides an hour, so windows align to hours
VOL_WINDOW_US = 60_000_000  # rolling realized volatility horizon
TOP_LEVELS = 10  # order-book imbalance depth
DEPTH_BPS = 10  # depth within +-10 bps of mid

assert HOUR_US % WINDOW_US == 0, "windows must tile hours (downstream partitions are hourly)"


FEATURE_SCHEMA = pa.schema(
    [
        column("event_id", pa.string()),
        *INSTRUMENT_FIELDS,
        column("exchange_ts", TS),  # window start (event time); the lake partitions on it
        column("window_end", TS),
        column("last_event_ts", TS),  # newest exchange_ts that went into the row
        column("price_scale", pa.int32()),
        column("size_scale", pa.int32()),
        column("event_count", pa.int64()),
        column("book_event_count", pa.int64()),
        # book state at window end (null until the symbol's first snapshot)
        column("book_seq", pa.int64(), True),
        column("best_bid_px", pa.int64(), True),
        column("best_bid_qty", pa.int64(), True),
        column("best_ask_px", pa.int64(), True),
        column("best_ask_qty", pa.int64(), True),
        column("spread_px", pa.int64(), True),
        column("mid_px", pa.float64(), True),
        column("microprice", pa.float64(), True),
        column("imbalance_10", pa.float64(), True),
        column("depth_bid_10bps", pa.int64(), True),
        column("depth_ask_10bps", pa.int64(), True),
        # trades inside the window
        column("trade_count", pa.int64()),
        column("volume", pa.int64()),
        column("buy_volume", pa.int64()),
        column("sell_volume", pa.int64()),
        column("vwap", pa.float64(), True),
        column("open_px", pa.int64(), True),
        column("high_px", pa.int64(), True),
        column("low_px", pa.int64(), True),
        column("close_px", pa.int64(), True),
        column("trade_imbalance", pa.float64(), True),
        # rolling over the last 60 s of rows
        column("realized_vol_60s", pa.float64(), True),
        column("spec_version", pa.int32()),
    ]
)


FEATURES_TABLE = TableSpec("features_1s", FEATURE_SCHEMA)


def window_start(ts_us: int) -> int:
    return ts_us - ts_us % WINDOW_US


def feature_event_id(exchange: str, market: str, symbol: str, window_start_us: int) -> str:
    """One id per (instrument, window, spec version): a recomputed row (after a crash or a
    replay) has the same id as the first one, so consumers dedup on it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"features_1s|v{SPEC_VERSION}|{exchange}|{market}|{symbol}|{window_start_us}".encode())
    return h.hexdigest()

"""The hour-check rules on hand-built rows: each rule passes on good data and fails on the
defect it exists for (the Dagster wiring is covered in test_lake_hours.py)."""

from __future__ import annotations

import pyarrow as pa

from schemas.arrow_convert import envelopes_to_table
from schemas.model import EventType
from schemas.tables import TABLES
from streaming.lake.checks import (
    duplicate_check,
    row_count_check,
    schema_check,
    sequence_gaps,
    small_file_check,
)
from streaming.lake.state import HourCount
from tests.support.envelopes import envelope


def deltas(rows: list[tuple[str, int, int, int]]) -> pa.Table:
    """(symbol, seq, first_seq, prev_seq) rows as book_deltas lake rows."""
    return pa.table(
        {
            "exchange": ["binance"] * len(rows),
            "market": ["perp"] * len(rows),
            "symbol": [r[0] for r in rows],
            "seq": [r[1] for r in rows],
            "first_seq": [r[2] for r in rows],
            "prev_seq": [r[3] for r in rows],
        }
    )


def snapshots(rows: list[tuple[str, int]]) -> pa.Table:
    return pa.table(
        {
            "exchange": ["binance"] * len(rows),
            "market": ["perp"] * len(rows),
            "symbol": [r[0] for r in rows],
            "seq": [r[1] for r in rows],
        }
    )


def test_sequence_rules_prev_seq_first_seq_and_snapshot_bridge():
    # USD-M style (pu = previous u) and spot style (U = previous u + 1, no pu).
    ok = deltas(
        [
            ("BTC-USDT-PERP", 10, 8, 5),
            ("BTC-USDT-PERP", 14, 11, 10),
            ("ETH-USDT-PERP", 3, 3, -1),
            ("ETH-USDT-PERP", 4, 4, -1),
            ("ETH-USDT-PERP", 7, 5, -1),
        ]
    )
    assert sequence_gaps(ok).passed
    bad = deltas(
        [
            ("BTC-USDT-PERP", 10, 8, 5),
            ("BTC-USDT-PERP", 14, 12, 11),
            ("ETH-USDT-PERP", 3, 3, -1),
            ("ETH-USDT-PERP", 9, 6, -1),
        ]
    )
    out = sequence_gaps(bad)
    assert not out.passed
    assert out.details["symbols"] == {"binance/perp/BTC-USDT-PERP": 1, "binance/perp/ETH-USDT-PERP": 1}
    assert {g["after_seq"] for g in out.details["examples"]} == {10, 3}
    # A resync snapshot between the two deltas bridges the ETH gap (the collector resynced).
    bridged = sequence_gaps(bad, snapshots([("ETH-USDT-PERP", 5)]))
    assert bridged.details["symbols"] == {"binance/perp/BTC-USDT-PERP": 1}


def test_duplicates_schema_row_count_and_small_files():
    rows = envelopes_to_table(EventType.TRADE, [envelope(EventType.TRADE, i) for i in range(4)])
    assert duplicate_check(rows).passed and schema_check(TABLES[EventType.TRADE], rows).passed
    doubled = pa.concat_tables([rows, rows.slice(1, 2)])
    dup = duplicate_check(doubled)
    assert not dup.passed and dup.details["duplicates"] == 2
    broken = rows.set_column(
        rows.schema.get_field_index("px"), rows.schema.field("px"), pa.array([-1, 1, 2, 3], pa.int64())
    )
    assert not schema_check(TABLES[EventType.TRADE], broken).passed

    assert row_count_check(10, HourCount(records=12, rows=10)).passed
    miss = row_count_check(9, HourCount(records=12, rows=10))
    assert not miss.passed and miss.details["source_rows_after_dedup"] == 10
    assert row_count_check(0, None).passed

    assert small_file_check({"p1": [100 << 20, 3 << 20], "p2": [1 << 20]}, small_bytes=8 << 20).passed
    many = small_file_check({"p1": [1 << 20, 2 << 20, 3 << 20]}, small_bytes=8 << 20)
    assert not many.passed and many.details["excess_small_files"] == {"p1": 2}

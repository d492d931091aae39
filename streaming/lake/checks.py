"""Data-quality rules for one hour of a lake table: pure functions over Arrow rows.

The Dagster asset checks (assets/lake_hours.py) only load the hour and report what these
return, so the rules are testable without Dagster and reusable by the backfill runbook.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import TableSpec
from streaming.lake.state import HourCount


@dataclass(slots=True)
class CheckOutcome:
    passed: bool
    summary: str
    details: dict = field(default_factory=dict)


def schema_check(spec: TableSpec, rows: pa.Table) -> CheckOutcome:
    # pandera comes in with schemas.validation, imported by the check that uses it: every process
    # that loads the code location imports this module, and pandera's import (which pulls in
    # pyspark.pandas) took ~0.8 s of it.
    from schemas.validation import schema_violations

    found = schema_violations(spec, rows)
    if found is None:
        return CheckOutcome(True, f"{rows.num_rows} rows match the {spec.name} schema", {})
    return CheckOutcome(False, found.summary, {"failure_cases": found.failure_cases} if found.failure_cases else {})


def duplicate_check(rows: pa.Table, limit: int = 20) -> CheckOutcome:
    ids = rows.column("event_id")
    distinct = pc.count_distinct(ids).as_py() if rows.num_rows else 0
    dups = rows.num_rows - distinct
    if not dups:
        return CheckOutcome(True, f"{rows.num_rows} rows, all event_ids distinct", {"duplicates": 0})
    counts = Counter(ids.to_pylist())
    worst = [{"event_id": k, "copies": n} for k, n in counts.most_common(limit) if n > 1]
    return CheckOutcome(False, f"{dups} duplicate rows", {"duplicates": dups, "examples": worst})


def row_count_check(rows: int, ledger: HourCount | None) -> CheckOutcome:
    """Rows in the hour against the sink's ledger of committed offsets for that hour."""
    if ledger is None:
        # Hours the sink never wrote (bulk history, rebuilt hours) or older than the ledger
        # window have nothing to compare against: say so rather than fail every such hour.
        return CheckOutcome(
            True,
            "no committed source records for this hour"
            if rows == 0
            else f"{rows} rows, not written by the lake sink within its ledger window "
            "(bulk load or older hour): no source count to compare",
            {"rows": rows, "source_records": None},
        )
    details = {
        "rows": rows,
        "source_records": ledger.records,
        "source_rows_after_dedup": ledger.rows,
        "duplicates_dropped_by_sink": ledger.records - ledger.rows,
    }
    if rows == ledger.rows:
        return CheckOutcome(
            True,
            f"{rows} rows = {ledger.records} committed records - {ledger.records - ledger.rows} duplicates",
            details,
        )
    return CheckOutcome(False, f"{rows} rows in the lake, the committed offsets account for {ledger.rows}", details)


def sequence_gaps(deltas: pa.Table, snapshots: pa.Table | None = None, limit: int = 50) -> CheckOutcome:
    """Venue sequence continuity of book deltas, per (exchange, market, symbol).

    Consecutive deltas a, b (ordered by seq) are continuous when b.prev_seq == a.seq (venues
    that send the previous id: Binance USD-M pu, OKX prevSeqId) or, without prev_seq,
    b.first_seq == a.seq + 1 (Binance spot U, Bybit). A break that a book snapshot of the
    same symbol bridges (a.seq <= snapshot.seq < b.seq: the collector resynced) is not a gap.
    The first delta of the hour is not compared with the previous hour."""
    if deltas.num_rows == 0:
        return CheckOutcome(True, "no book deltas in this hour", {"gaps": 0})
    cols = ["exchange", "market", "symbol", "seq", "first_seq", "prev_seq"]
    t = deltas.select(cols).sort_by(
        [("exchange", "ascending"), ("market", "ascending"), ("symbol", "ascending"), ("seq", "ascending")]
    )
    snaps: dict[tuple[str, str, str], list[int]] = {}
    if snapshots is not None and snapshots.num_rows:
        for ex, mk, sym, seq in zip(
            *(snapshots.column(c).to_pylist() for c in ("exchange", "market", "symbol", "seq")), strict=True
        ):
            snaps.setdefault((ex, mk, sym), []).append(seq)
    gaps: list[dict] = []
    per_symbol: Counter = Counter()
    prev_key = None
    prev_seq = None
    data = [t.column(c).to_pylist() for c in cols]
    for ex, mk, sym, seq, first, prev in zip(*data, strict=True):
        key = (ex, mk, sym)
        if key == prev_key and prev_seq is not None:
            ok = (prev == prev_seq) if prev is not None and prev >= 0 else (first == prev_seq + 1)
            if not ok and seq != prev_seq:  # an exact repeat is a duplicate, not a gap
                bridged = any(prev_seq <= s < seq for s in snaps.get(key, ()))
                if not bridged:
                    per_symbol["/".join(key)] += 1
                    if len(gaps) < limit:
                        gaps.append(
                            {
                                "symbol": sym,
                                "exchange": ex,
                                "market": mk,
                                "after_seq": prev_seq,
                                "next_seq": seq,
                                "next_first_seq": first,
                                "next_prev_seq": prev,
                            }
                        )
        prev_key, prev_seq = key, seq
    total = sum(per_symbol.values())
    if total:
        return CheckOutcome(
            False,
            f"{total} sequence gaps in {len(per_symbol)} symbols: " + ", ".join(sorted(per_symbol)),
            {"gaps": total, "symbols": dict(per_symbol), "examples": gaps},
        )
    return CheckOutcome(True, f"{deltas.num_rows} deltas continuous", {"gaps": 0})


def small_file_check(per_partition: dict[str, list[int]], small_bytes: int) -> CheckOutcome:
    """Healthy: at most one file below `small_bytes` per partition (the tail of a split)."""
    excess = {p: sum(1 for s in sizes if s < small_bytes) - 1 for p, sizes in per_partition.items()}
    bad = {p: n for p, n in excess.items() if n > 0}
    files = sum(len(s) for s in per_partition.values())
    details = {
        "files": files,
        "partitions": len(per_partition),
        "small_file_bytes": small_bytes,
        "excess_small_files": bad,
    }
    if bad:
        return CheckOutcome(
            False, f"{sum(bad.values())} excess small files in {len(bad)} partitions (hour not compacted?)", details
        )
    return CheckOutcome(True, f"{files} files in {len(per_partition)} partitions", details)

"""Bulk history rows/s: a Binance trades archive from zip to committed lake rows, beside
pyarrow.csv reading the same CSV in the same run (the floor any CSV loader starts from).

The archive is generated in the genuine spot trades shape (7 columns, no header, µs
times as since 2025), zipped, and loaded with the asset's own functions against a fresh
SQLite Iceberg catalog: unzip -> parse (header detection, units, id order) -> envelopes at
the instrument's scales with stream-identical event_ids -> Arrow rows -> sorted zstd
Parquet + one Iceberg commit (the delete-and-append replace of the day). Stages are
timed separately so the cost of exact decimals and event_id hashing is visible.

    python bench/bench_bulk.py [--rows 300000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.csv as pacsv  # noqa: E402
from pyiceberg.catalog import load_catalog  # noqa: E402

from assets.bulk_history import day_bounds_us, write_day  # noqa: E402
from collectors.bulk import binance_vision as bv  # noqa: E402
from collectors.bulk.common import Target  # noqa: E402
from schemas.iceberg import ensure_all_tables  # noqa: E402
from schemas.model import EventType, Exchange, Market  # noqa: E402
from schemas.tables import TABLES  # noqa: E402

DAY = "2025-01-01"


def make_csv(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    start_us = day_bounds_us(DAY)[0]
    px = 9_400_000
    out = []
    for i in range(n):
        px += rng.randint(-3, 3)
        t = start_us + i * (86_400_000_000 // n) + rng.randint(0, 999)
        out.append(
            f"{4_000_000 + i},{px // 100}.{px % 100:02d}000000,0.{rng.randint(1, 99999):08d},1.00000000,"
            f"{t},{rng.choice(('True', 'False'))},True"
        )
    return ("\n".join(out) + "\n").encode()


def zipped(csv: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"BTCUSDT-trades-{DAY}.csv", csv)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    csv = make_csv(a.rows)
    tmp = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    zpath = tmp / f"BTCUSDT-trades-{DAY}.zip"
    zpath.write_bytes(zipped(csv))
    catalog = load_catalog(
        "bench",
        type="sql",
        uri=f"sqlite:///{tmp / 'catalog.db'}",
        warehouse=(tmp / "wh").as_uri(),
        init_catalog_tables="true",
    )
    table = ensure_all_tables(catalog)[TABLES[EventType.TRADE].name]
    t = Target(Exchange.BINANCE, Market.SPOT, "BTCUSDT", "BTC-USDT", 2, 8, 1, 1000, "bulk:bench")
    lo, hi = day_bounds_us(DAY)

    base, full = [], []
    stages: dict[str, list[float]] = {"unzip": [], "parse": [], "rows+ids": [], "arrow": [], "lake": []}
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        tb = pacsv.read_csv(io.BytesIO(csv), read_options=pacsv.ReadOptions(autogenerate_column_names=True))
        base.append(time.perf_counter() - t0)
        assert tb.num_rows == a.rows

        t0 = time.perf_counter()
        data = bv.read_zip_csv(zpath)
        t1 = time.perf_counter()
        parsed = bv.parse(data, "trades")
        t2 = time.perf_counter()
        conv = bv.to_rows(parsed, t)
        t3 = time.perf_counter()
        rows = conv.table(EventType.TRADE)
        t4 = time.perf_counter()
        table, ws = write_day(table, TABLES[EventType.TRADE], rows, t, lo, hi, {"ticklake.writer": "bench"})
        t5 = time.perf_counter()
        assert ws.rows == a.rows and not conv.rejects
        full.append(t5 - t0)
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            stages[k].append(v)

    n = a.rows
    med = statistics.median
    print(
        f"rows per run: {n}  (zip {zpath.stat().st_size / 1e6:.1f} MB, csv {len(csv) / 1e6:.1f} MB), "
        f"median of {a.rounds}"
    )
    print(f"  baseline pyarrow.csv.read_csv (same CSV, in memory) : {n / med(base):>12,.0f} rows/s")
    print(
        f"  ticklake zip -> committed lake rows                  : {n / med(full):>12,.0f} rows/s"
        f"  ({med(full) / med(base):.0f}x the baseline's time)"
    )
    for k, v in stages.items():
        print(f"    {k:<10} {med(v) * 1e3:>9.1f} ms  ({n / med(v):>12,.0f} rows/s)")
    committed = table.scan(selected_fields=("event_id",)).to_arrow().num_rows
    print(f"  rows in the lake after {a.rounds} re-runs of the day: {committed} (replace, not append)")
    from figures import emit

    emit("bulk zip -> committed lake rows", n / med(full), "rows/s", "pyarrow.csv.read_csv (same CSV)", n / med(base))
    return 0


if __name__ == "__main__":
    sys.exit(main())

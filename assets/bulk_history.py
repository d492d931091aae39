"""Daily bulk-history assets: venue archive files -> the stream's lake tables.

Partitions: the shared DAILY definition x a static dimension of bulk sources
(``binance.spot.BTCUSDT.trades``, ``bybit.linear.XRPUSDT.ob500``, ...), so a user backfills
a date range for some sources from the asset's partition page. One materialization:
fetch (resume, retries, rate limit; Binance CHECKSUM verified) -> parse -> the same
envelopes and event_ids the stream writes -> one atomic Iceberg commit per table that
deletes this source's earlier rows of that day (rows are marked ``shard = "bulk:<source>"``)
and appends the new ones minus those another source (the stream) already holds. So a
re-run replaces exactly that day from that source, and a day covered by the stream too is
not doubled. A 404 is recorded as ``status: missing`` (nothing written or deleted); a bad
checksum or a corrupt archive fails that partition only, with the reason.

Checks run on the rows as committed (read back): row count equals the file's, venue ids
have no gaps the file does not have, pandera schema of the table spec.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
)
from pyiceberg.table import Table

from assets.partitions import DAILY
from collectors.bulk import binance_vision as bv
from collectors.bulk import bybit_history as bh
from collectors.bulk.common import BulkFileError, Converted, Rejected, Target, id_gaps
from collectors.bulk.download import Downloader, DownloadError
from collectors.bulk.sources import BulkSource, SourceError
from resources.bulk import BulkHistoryResource
from resources.lake import LakeResource
from schemas.model import EventType
from schemas.tables import TABLES, TableSpec
from streaming.lake.writer import LakeFileWriter, commit_files

GROUP = "bulk"
DAY_US = 86_400_000_000
SOURCES_ENV = "TICKLAKE_BULK_SOURCES"
DEFAULT_SOURCES = (
    "binance.spot.BTCUSDT.trades",
    "binance.um.BTCUSDT.aggTrades",
    "binance.um.BTCUSDT.bookTicker",
    "bybit.linear.BTCUSDT.ob500",
    "bybit.linear.BTCUSDT.trades",
)
WRITER = "bulk-history"
CHECK_ROW_COUNT = "row_count_matches_file"
CHECK_ID_GAPS = "no_new_id_gaps"
CHECK_SCHEMA = "schema"
COMMIT_RETRIES = 5
#: Dagster concurrency pool of the bulk runs: its limit bounds how many archive days are
#: fetched at once across a backfill (each run's downloader bounds its own connections).
POOL = "bulk_download"


# -- plain functions (no Dagster): fetch, convert, write, verify ---------------------------------


@dataclass(slots=True)
class FileOutcome:
    status: str  # ok | missing
    url: str
    conv: Converted | None = None
    meta: dict = field(default_factory=dict)


def day_bounds_us(day: str) -> tuple[int, int]:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    s = int(start.timestamp()) * 1_000_000
    return s, s + DAY_US


def fetch_and_convert(
    source: BulkSource, day: str, target: Target, bulk: BulkHistoryResource, downloader: Downloader
) -> FileOutcome:
    """Fetch the source's file of `day` and turn it into lake envelopes (raises BulkFileError)."""
    cache = bulk.cache_dir()
    if source.venue == "binance":
        vf = bv.VisionFile(source.market, source.data_type, source.symbol, day)
        got = bv.fetch_verified(vf, bulk.binance_base_url, downloader, cache)
        if got.status == "missing":
            return FileOutcome("missing", got.url)
        parsed = bv.parse(bv.read_zip_csv(got.path), source.data_type)
        conv = bv.to_rows(parsed, target)
        return FileOutcome(
            "ok",
            got.url,
            conv,
            {"sha256": got.sha256, "reused_file": got.reused, "resumed_from_bytes": got.resumed_from},
        )
    if source.data_type == "ob500":
        path = bh.book_path(source.market, source.symbol, day)
        url = f"{bulk.bybit_book_base_url.rstrip('/')}/{path}"
    else:
        path = bh.trades_path(source.symbol, day)
        url = f"{bulk.bybit_trades_base_url.rstrip('/')}/{path}"
    res = downloader.fetch(url, cache / "bybit" / path)
    if res.status == "missing":
        return FileOutcome("missing", url)
    if source.data_type == "ob500":
        replay = bh.replay_book(bh.book_lines(res.path), target, source.market)
        conv = replay.conv
        conv.notes["stale"] = replay.stale
        conv.notes["crossed_after_apply"] = replay.crossed_after_apply
    else:
        conv = bh.trades_to_envelopes(bh.read_trades_csv(res.path.read_bytes()), target)
    return FileOutcome("ok", url, conv, {"resumed_from_bytes": res.resumed_from})


def keep_day(conv: Converted, lo_us: int, hi_us: int) -> int:
    """Reject rows whose time lies outside the partition's day: a re-run replaces exactly
    that day, so a row of another day would be deleted by that day's re-run."""
    dropped = conv.restrict(lo_us, hi_us)
    conv.rejects += [Rejected(-1, f"exchange_ts {ts} outside the file's day (seq {seq})") for ts, seq in dropped]
    return len(dropped)


def day_filter(target: Target, lo_us: int, hi_us: int) -> BooleanExpression:
    return And(
        And(GreaterThanOrEqual("exchange_ts", lo_us), LessThan("exchange_ts", hi_us)),
        And(
            EqualTo("exchange", target.exchange.value),
            And(EqualTo("market", target.market.value), EqualTo("symbol", target.symbol)),
        ),
    )


@dataclass(slots=True)
class WriteStats:
    table: str
    rows: int = 0  # rows of this source now in the lake for the day
    held_by_other_source: int = 0  # rows skipped because the stream (or another source) has them
    files: int = 0
    expected_ids: list[str] = field(default_factory=list)


def write_day(
    table: Table, spec: TableSpec, rows: pa.Table, target: Target, lo_us: int, hi_us: int, summary: dict[str, str]
) -> tuple[Table, WriteStats]:
    """Replace this source's rows of [lo, hi) with `rows`, minus event_ids other sources
    already hold; one atomic commit (retried on a concurrent commit)."""
    stats = WriteStats(spec.name, expected_ids=rows.column("event_id").to_pylist())
    where = day_filter(target, lo_us, hi_us)
    mine = And(where, EqualTo("shard", target.shard))
    for attempt in range(COMMIT_RETRIES + 1):
        kept = rows
        if table.current_snapshot() is not None and rows.num_rows:
            have = table.scan(row_filter=where, selected_fields=("event_id", "shard")).to_arrow()
            other = have.filter(pc.invert(pc.fill_null(pc.equal(have.column("shard"), target.shard), False)))
            if other.num_rows:
                kept = rows.filter(pc.invert(pc.is_in(rows.column("event_id"), value_set=other.column("event_id"))))
        files = LakeFileWriter(table).write(kept, prefix="bulk") if kept.num_rows else []
        try:
            with warnings.catch_warnings():
                # a first load has nothing of its own to replace; that is not worth a warning
                warnings.filterwarnings("ignore", message="Delete operation did not match any records")
                table = commit_files(table, files, summary, delete_filter=mine)
        except CommitFailedException:
            if attempt == COMMIT_RETRIES:
                raise
            table = table.refresh()
            continue
        stats.rows = kept.num_rows
        stats.held_by_other_source = rows.num_rows - kept.num_rows
        stats.files = len(files)
        return table, stats
    raise AssertionError("unreachable")


@dataclass(slots=True)
class CheckOutcome:
    name: str
    passed: bool
    meta: dict


def verify_day(
    table: Table,
    spec: TableSpec,
    target: Target,
    lo_us: int,
    hi_us: int,
    expected_ids: Sequence[str],
    conv: Converted,
    source: BulkSource,
) -> list[CheckOutcome]:
    """The checks of one table of one source-day, over the rows as committed."""
    got = (
        table.scan(row_filter=day_filter(target, lo_us, hi_us)).to_arrow()
        if table.current_snapshot() is not None
        else spec.schema.empty_table()
    )
    got = got.filter(pc.is_in(got.column("event_id"), value_set=pa.array(list(expected_ids), pa.string())))
    present = len(set(got.column("event_id").to_pylist()))
    out = []
    # every file row is a lake row, a rejected row, an in-file duplicate, or (book files) a
    # delta the venue's sync rules dropped: stale, or the one that revealed a gap
    accounted = (
        conv.rows
        + len(conv.rejects)
        + conv.in_file_duplicates
        + int(conv.notes.get("stale", 0))
        + int(conv.notes.get("gaps", 0))
    )
    out.append(
        CheckOutcome(
            CHECK_ROW_COUNT,
            present == len(expected_ids) and got.num_rows == present,
            {"table": spec.name, "expected_rows": len(expected_ids), "rows_in_lake": got.num_rows},
        )
    )
    out.append(
        CheckOutcome(
            "accounting",
            accounted == conv.file_rows and not conv.rejects,
            {
                "file_rows": conv.file_rows,
                "converted_rows": conv.rows,
                "rejected_rows": len(conv.rejects),
                "in_file_duplicates": conv.in_file_duplicates,
                "first_rejects": "; ".join(f"row {r.row}: {r.reason}" for r in conv.rejects[:5]),
            },
        )
    )
    if source.has_integer_ids and spec.event_type in (EventType.TRADE, EventType.BOOK_DELTA):
        lake_gaps = id_gaps(got.column("seq").to_pylist())
        file_gaps = id_gaps(conv.ids)
        out.append(
            CheckOutcome(
                CHECK_ID_GAPS,
                lake_gaps <= file_gaps,
                {"table": spec.name, "gaps_in_file": file_gaps, "gaps_in_lake": lake_gaps},
            )
        )
    from schemas.validation import schema_violations  # pandera on first use, as streaming.lake.checks.schema_check

    found = schema_violations(spec, got)
    if found is None:
        out.append(CheckOutcome(CHECK_SCHEMA, True, {"table": spec.name, "rows_validated": got.num_rows}))
    else:
        out.append(CheckOutcome(CHECK_SCHEMA, False, {"table": spec.name, "error": found.error[:2000]}))
    return out


def load_source_day(
    source: BulkSource, day: str, lake: LakeResource, bulk: BulkHistoryResource, log: Callable[[str], None] = print
) -> dict:
    """Fetch, convert, write and verify one (source, day); the whole pipeline without Dagster.

    Returns {"status", "url", "meta", "tables": {name: WriteStats}, "checks": [CheckOutcome]}."""
    t0 = time.monotonic()
    target = bulk.target(source)
    last = {"t": 0.0}

    def progress(url: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last["t"] >= 2.0 or (total is not None and done == total):
            last["t"] = now
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            log(f"{source.key} {day}: {done / 1e6:.1f} MB{pct} of {url}")

    dl = bulk.downloader(progress)
    outcome = fetch_and_convert(source, day, target, bulk, dl)
    if outcome.status == "missing":
        log(f"{source.key} {day}: no file at {outcome.url} (404): recorded as missing")
        return {"status": "missing", "url": outcome.url, "meta": {}, "tables": {}, "checks": []}
    conv = outcome.conv
    log(
        f"{source.key} {day}: parsed {conv.file_rows} rows ({conv.rows} events, {len(conv.rejects)} rejected)"
        f" in {time.monotonic() - t0:.1f}s"
    )
    lo, hi = day_bounds_us(day)
    outside = keep_day(conv, lo, hi)
    if outside:
        log(f"{source.key} {day}: {outside} rows lie outside the file's day and are rejected")
    lake.ensure_tables()
    summary = {
        "ticklake.writer": WRITER,
        "ticklake.bulk-source": source.key,
        "ticklake.bulk-day": day,
        "ticklake.bulk-url": outcome.url,
    }
    tables: dict[str, WriteStats] = {}
    checks: list[CheckOutcome] = []
    for et in source.event_types:
        spec = TABLES[et]
        rows = conv.table(et)
        table = lake.load_table(spec.identifier)
        table, ws = write_day(
            table, spec, rows, target, lo, hi, dict(summary, **{"ticklake.bulk-rows": str(rows.num_rows)})
        )
        tables[spec.name] = ws
        log(
            f"{source.key} {day}: {spec.name}: {ws.rows} rows committed, {ws.held_by_other_source} already in "
            f"the lake from another source"
        )
        checks += verify_day(table, spec, target, lo, hi, ws.expected_ids, conv, source)
    meta = dict(outcome.meta)
    meta.update({k: v for k, v in conv.notes.items() if isinstance(v, (int, str, bool, float))})
    meta["was_sorted"] = conv.was_sorted
    meta["seconds"] = round(time.monotonic() - t0, 3)
    return {
        "status": "ok",
        "url": outcome.url,
        "meta": meta,
        "tables": tables,
        "checks": checks,
        "file_rows": conv.file_rows,
    }


# -- Dagster ----------------------------------------------------------------------------------


def sources_from_env() -> tuple[str, ...]:
    raw = os.environ.get(SOURCES_ENV, "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    return keys or DEFAULT_SOURCES


def _merge_checks(checks: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    """One result per check name across the tables a source writes (all must pass)."""
    out: dict[str, CheckOutcome] = {}
    for c in checks:
        name = CHECK_ROW_COUNT if c.name == "accounting" else c.name
        prev = out.get(name)
        meta = {f"{c.meta.get('table', 'file')}.{k}" if k != "table" else k: v for k, v in c.meta.items()}
        if prev is None:
            out[name] = CheckOutcome(name, c.passed, meta)
        else:
            prev.passed = prev.passed and c.passed
            prev.meta.update(meta)
    return out


def build_bulk_history_asset(sources: Sequence[str] | None = None, *, name: str = "history") -> dg.AssetsDefinition:
    """The bulk-history asset over `sources` (validated now, so a bad key fails at load)."""
    keys = list(sources or sources_from_env())
    for k in keys:
        BulkSource.parse(k)
    partitions = dg.MultiPartitionsDefinition({"date": DAILY, "source": dg.StaticPartitionsDefinition(keys)})
    key = dg.AssetKey([GROUP, name])
    check_specs = [
        dg.AssetCheckSpec(
            CHECK_ROW_COUNT, asset=key, description="rows in the lake equal the file's rows; nothing rejected"
        ),
        dg.AssetCheckSpec(
            CHECK_ID_GAPS, asset=key, description="venue ids (trade ids, book update ids) have no gaps the file lacks"
        ),
        dg.AssetCheckSpec(CHECK_SCHEMA, asset=key, description="pandera schema of the lake table spec"),
    ]

    @dg.asset(
        key=key,
        partitions_def=partitions,
        group_name=GROUP,
        check_specs=check_specs,
        description=__doc__.split("\n\n")[0],
        kinds={"iceberg", "python"},
        pool=POOL,
    )
    def _bulk(context: dg.AssetExecutionContext, lake: LakeResource, bulk: BulkHistoryResource) -> dg.MaterializeResult:
        dims = context.partition_key.keys_by_dimension
        day, source_key = dims["date"], dims["source"]
        try:
            source = BulkSource.parse(source_key)
            result = load_source_day(source, day, lake, bulk, log=context.log.info)
        except (BulkFileError, DownloadError, SourceError, LookupError) as exc:
            raise dg.Failure(
                description=f"{source_key} {day}: {exc}",
                metadata={"source": source_key, "date": day, "error": str(exc)},
            ) from None
        meta: dict = {"source": source_key, "date": day, "status": result["status"], "url": result["url"]}
        if result["status"] == "missing":
            context.log.warning(f"{source_key} {day}: the venue has no file for this day (404)")
            checks = [
                dg.AssetCheckResult(check_name=c.name, passed=True, metadata={"status": "missing: nothing loaded"})
                for c in check_specs
            ]
            return dg.MaterializeResult(metadata=meta, check_results=checks)
        meta.update(result["meta"])
        meta["file_rows"] = result["file_rows"]
        for tname, ws in result["tables"].items():
            meta[f"{tname}.rows"] = ws.rows
            meta[f"{tname}.held_by_other_source"] = ws.held_by_other_source
            meta[f"{tname}.files"] = ws.files
        merged = _merge_checks(result["checks"])
        results = []
        for spec in check_specs:
            c = merged.get(spec.name)
            if c is None:
                results.append(
                    dg.AssetCheckResult(
                        check_name=spec.name, passed=True, metadata={"applicable": "no (source has no contiguous ids)"}
                    )
                )
            else:
                results.append(
                    dg.AssetCheckResult(
                        check_name=spec.name,
                        passed=bool(c.passed),
                        severity=dg.AssetCheckSeverity.ERROR,
                        metadata=c.meta,
                    )
                )
        return dg.MaterializeResult(metadata=meta, check_results=results)

    return _bulk


bulk_history = build_bulk_history_asset()

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`;
#: checks are the asset's own check_specs).
defs = dg.Definitions(assets=[bulk_history])

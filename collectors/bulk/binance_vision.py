"""Binance public data (data.binance.vision): layout, checksums, CSV parsing, envelopes.

Layout: ``data/{spot|futures/um|futures/cm}/{daily|monthly}/{type}/{SYMBOL}/[interval/]
{SYMBOL}-{type|interval}-{date}.zip`` (klines files are named by their interval,
``BTCUSDT-1h-2023-10-27.zip``), each with ``<file>.zip.CHECKSUM`` holding
``"<sha256>  <file name>"``.

The files are not uniform, and the parsers do not assume what a given date "should" be:
- headers: USD-M files gained a header row in 2022, spot files have none; a first line
  whose first cell starts with a letter is a header (no data cell does: ids and times are
  digits, bookDepth's first cell is a date);
- time unit: spot files switched from ms to µs on 2025-01-01; every timestamp is classified
  by magnitude (>= 1e14 is µs: 1e14 ms would be the year 5138), so a file that mixes units
  or a venue that moves the switch date still parses;
- order: some archives are out of id order (aggTrades 2023-05, interleaved bookTicker):
  rows are sorted by their id before use;
- is_buyer_maker is kept as published (true: the buyer was the maker, so the taker sold).

Mapping to the lake, identical to what the stream's adapter + normalizer produce for the
same venue event (so a day covered by both deduplicates by event_id):
- trades -> TRADE: seq = trade id, trade_id = str(id), taker side from is_buyer_maker;
- aggTrades -> TRADE: seq = aggregate id, trade_id = str(aggregate id), first/last ids;
- bookTicker -> TICKER: seq = update id, exchange_ts = transaction time, best bid/ask;
- exchange_ts is floored to the millisecond, the resolution of the websocket streams the
  collectors read (a µs file value would otherwise never match its stream twin);
- klines and bookDepth are parsed and verified but have no event table (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from collectors.bulk.common import (
    BulkFileError,
    ChecksumMismatch,
    Converted,
    Rejected,
    Target,
    dedup_in_file,
    finish,
    new_envelope,
    on_grid,
    read_single_member,
    unit_columns,
)
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id
from schemas.model import EventType
from schemas.scaled import ScaleError
from schemas.symbols import validate_native
from schemas.tables import PAYLOAD_FIELDS, TABLES

DEFAULT_BASE_URL = "https://data.binance.vision"
MARKET_PATHS = {"spot": "spot", "um": "futures/um", "cm": "futures/cm"}
PERIODS = ("daily", "monthly")
DATA_TYPES = ("trades", "aggTrades", "klines", "bookTicker", "bookDepth")
#: Types that become lake events; the others are parsed and verified only.
EVENT_TYPES: dict[str, EventType] = {
    "trades": EventType.TRADE,
    "aggTrades": EventType.TRADE,
    "bookTicker": EventType.TICKER,
}
KLINE_INTERVALS = frozenset(
    {"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1mo"}
)
#: Spot files carry µs from this day on (informational: parsing classifies by magnitude).
SPOT_MICROS_FROM = date(2025, 1, 1)
MICROS_THRESHOLD = 10**14
#: Resolution of the websocket trade/bookTicker times the collectors receive.
STREAM_TIME_RESOLUTION_US = 1000

#: Columns by position (header names differ between eras; positions do not).
COLUMNS: dict[str, tuple[str, ...]] = {
    "trades": ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"),
    "aggTrades": (
        "agg_trade_id",
        "price",
        "quantity",
        "first_trade_id",
        "last_trade_id",
        "transact_time",
        "is_buyer_maker",
        "is_best_match",
    ),
    "bookTicker": (
        "update_id",
        "best_bid_price",
        "best_bid_qty",
        "best_ask_price",
        "best_ask_qty",
        "transaction_time",
        "event_time",
    ),
    "klines": (
        "open_time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "close_time",
        "quote_volume",
        "count",
        "taker_buy_volume",
        "taker_buy_quote_volume",
        "ignore",
    ),
    "bookDepth": ("timestamp", "percentage", "depth", "notional"),
}
MIN_COLUMNS = {"trades": 6, "aggTrades": 7, "bookTicker": 7, "klines": 12, "bookDepth": 4}
INT_COLUMNS = frozenset(
    {
        "id",
        "agg_trade_id",
        "first_trade_id",
        "last_trade_id",
        "update_id",
        "time",
        "transact_time",
        "transaction_time",
        "event_time",
        "open_time",
        "close_time",
        "count",
        "percentage",
    }
)
TIME_COLUMNS = {"trades": "time", "aggTrades": "transact_time", "bookTicker": "transaction_time", "klines": "open_time"}
ID_COLUMNS = {"trades": "id", "aggTrades": "agg_trade_id", "bookTicker": "update_id", "klines": "open_time"}

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_SHA = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


@dataclass(frozen=True, slots=True)
class VisionFile:
    """One archive of data.binance.vision."""

    market: str  # spot | um | cm
    data_type: str  # trades | aggTrades | klines | bookTicker | bookDepth
    symbol: str  # venue symbol, e.g. BTCUSDT
    day: str  # YYYY-MM-DD (daily) or YYYY-MM (monthly)
    period: str = "daily"
    interval: str = ""  # klines only

    def __post_init__(self) -> None:
        if self.market not in MARKET_PATHS:
            raise ValueError(f"market must be one of {tuple(MARKET_PATHS)}, got {self.market!r}")
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"data type must be one of {DATA_TYPES}, got {self.data_type!r}")
        if self.period not in PERIODS:
            raise ValueError(f"period must be one of {PERIODS}, got {self.period!r}")
        if not (_DAY if self.period == "daily" else _MONTH).fullmatch(self.day):
            raise ValueError(
                f"{self.period} file needs a {'YYYY-MM-DD' if self.period == 'daily' else 'YYYY-MM'} "
                f"date, got {self.day!r}"
            )
        validate_native(self.symbol)
        if self.symbol != self.symbol.upper():
            raise ValueError(f"Binance file symbols are upper case: {self.symbol!r}")
        if (self.data_type == "klines") != bool(self.interval):
            raise ValueError("klines need an interval (and only klines have one)")
        if self.interval and self.interval not in KLINE_INTERVALS:
            raise ValueError(f"unknown kline interval {self.interval!r}")

    @property
    def file_name(self) -> str:
        kind = self.interval if self.data_type == "klines" else self.data_type
        return f"{self.symbol}-{kind}-{self.day}.zip"

    @property
    def path(self) -> str:
        sub = f"{self.interval}/" if self.interval else ""
        return f"data/{MARKET_PATHS[self.market]}/{self.period}/{self.data_type}/{self.symbol}/{sub}{self.file_name}"

    @property
    def checksum_path(self) -> str:
        return self.path + ".CHECKSUM"

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"

    def checksum_url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.checksum_path}"


# -- checksums and archives -----------------------------------------------------------------


def parse_checksum(text: bytes | str) -> tuple[str, str]:
    """``"<sha256>  <file name>"`` -> (lower-case hex digest, file name)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    m = _SHA.match(text.strip())
    if not m:
        raise BulkFileError(f"CHECKSUM file is not '<sha256>  <name>': {text.strip()[:120]!r}")
    return m.group(1).lower(), m.group(2)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, checksum_text: bytes | str, expected_name: str | None = None) -> str:
    """Raise ChecksumMismatch unless the file hashes to the published digest; return it."""
    digest, name = parse_checksum(checksum_text)
    if expected_name is not None and name != expected_name:
        raise ChecksumMismatch(f"CHECKSUM names {name!r}, expected {expected_name!r}")
    actual = sha256_file(path)
    if actual != digest:
        raise ChecksumMismatch(f"SHA-256 mismatch for {Path(path).name}: published {digest}, file has {actual}")
    return actual


def read_zip_csv(path: str | Path) -> bytes:
    """The one CSV inside a Binance archive; a corrupt or oversized archive raises BulkFileError."""
    return read_single_member(path, "CSV")


# -- CSV ------------------------------------------------------------------------------------


def _first_line(data: bytes) -> bytes:
    for line in data.splitlines():
        if line.strip():
            return line.strip()
    return b""


def has_header(data: bytes) -> bool:
    """True when the first non-empty line is a header (its first cell starts with a letter)."""
    first = _first_line(data)
    return bool(first) and first[:1].isalpha()


def read_csv(data: bytes, data_type: str) -> pa.Table:
    """Parse one Binance CSV (with or without header) into typed columns named by position.

    Prices and sizes stay strings (converted exactly later); ids and times are int64."""
    if data_type not in COLUMNS:
        raise ValueError(f"unknown data type {data_type!r}")
    header = has_header(data)
    lines = [ln for ln in data.splitlines() if ln.strip()]
    body = lines[1:] if header else lines
    names = COLUMNS[data_type]
    if not body:
        return pa.table(
            {n: pa.array([], pa.int64() if n in INT_COLUMNS else pa.string()) for n in names[: MIN_COLUMNS[data_type]]}
        )
    ncols = body[0].count(b",") + 1
    if ncols < MIN_COLUMNS[data_type] or ncols > len(names):
        raise BulkFileError(
            f"{data_type} CSV has {ncols} columns, expected {MIN_COLUMNS[data_type]}..{len(names)}: {body[0][:120]!r}"
        )
    cols = names[:ncols]
    types = {n: (pa.int64() if n in INT_COLUMNS else pa.string()) for n in cols}
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(cols), skip_rows=1 if header else 0, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BulkFileError(f"{data_type} CSV does not parse: {exc}") from None


def to_micros(ts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Venue times in ms or µs (classified per value by magnitude) -> µs."""
    return pc.if_else(pc.greater_equal(ts, MICROS_THRESHOLD), ts, pc.multiply(ts, 1000))


def time_unit(ts: pa.ChunkedArray | pa.Array) -> str:
    if len(ts) == 0:
        return "none"
    n_us = pc.sum(pc.greater_equal(ts, MICROS_THRESHOLD).cast(pa.int64())).as_py() or 0
    return "us" if n_us == len(ts) else "ms" if n_us == 0 else "mixed"


def sort_by_id(table: pa.Table, id_col: str) -> tuple[pa.Table, bool]:
    """Rows in ascending id order (stable); True when the file was out of order."""
    if table.num_rows < 2:
        return table, False
    ids = table.column(id_col).to_numpy()
    if bool(np.all(ids[1:] >= ids[:-1])):
        return table, False
    return table.take(pc.sort_indices(table, sort_keys=[(id_col, "ascending")])), True


@dataclass(slots=True)
class ParsedFile:
    """A CSV after header detection, unit normalisation (``time_us``) and id ordering."""

    data_type: str
    table: pa.Table
    header: bool
    time_unit: str
    was_sorted: bool

    @property
    def rows(self) -> int:
        return self.table.num_rows


def parse(data: bytes, data_type: str) -> ParsedFile:
    table = read_csv(data, data_type)
    unit = "none"
    if data_type in TIME_COLUMNS:
        col = TIME_COLUMNS[data_type]
        unit = time_unit(table.column(col))
        table = table.append_column("time_us", to_micros(table.column(col)))
    was_sorted = False
    if data_type in ID_COLUMNS:
        table, was_sorted = sort_by_id(table, ID_COLUMNS[data_type])
    return ParsedFile(data_type, table, has_header(data), unit, was_sorted)


# -- envelopes ------------------------------------------------------------------------------


def _flag(text: str) -> bool:
    low = text.strip().lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise ScaleError(f"is_buyer_maker is not a boolean: {text!r}")


def _stream_ts(us: int) -> int:
    return us - us % STREAM_TIME_RESOLUTION_US


def to_envelopes(parsed: ParsedFile, t: Target) -> Converted:
    """Lake envelopes of a trades, aggTrades or bookTicker file (others raise ValueError)."""
    conv = _start(parsed)
    et = EVENT_TYPES[parsed.data_type]
    for env in _stamped(parsed, t, conv.rejects):
        conv.add(et, finish(env, t))
    dedup_in_file(conv)
    return conv


def to_rows(parsed: ParsedFile, t: Target) -> Converted:
    """The same rows as ``envelopes_to_table(to_envelopes(...))``, built column-wise.

    Fast path for days of millions of rows: one reused envelope per file is stamped with
    the shared `compute_event_id` row by row (the id definition stays in schemas/ids.py),
    and the columns are filled straight from the parsed values instead of reading every
    field back from a protobuf. tests/test_bulk_binance.py checks both paths agree."""
    conv = _start(parsed)
    et = EVENT_TYPES[parsed.data_type]
    spec = TABLES[et]
    cols: dict[str, list] = {f.name: [] for f in PAYLOAD_FIELDS[et]}
    ids, tss, seqs = [], [], []
    appenders = [(cols[f.name].append, f.name) for f in PAYLOAD_FIELDS[et]]
    first = True
    payload = None
    id_append, ts_append, seq_append = ids.append, tss.append, seqs.append
    for env in _stamped(parsed, t, conv.rejects, reuse=True):
        if first:  # the envelope is reused: constant fields are set once
            env.shard = t.shard
            env.tick_size, env.lot_size = t.tick, t.lot
            payload = getattr(env, et.payload_field)
            first = False
        id_append(compute_event_id(env))
        ts_append(env.exchange_ts)
        seq_append(env.seq)
        for append, name in appenders:
            append(getattr(payload, name))
    n = len(ids)
    if et is EventType.TRADE:
        cols["taker_side"] = [_SIDE_NAMES[v] for v in cols["taker_side"]]
    data = {
        "event_id": ids,
        "exchange": [t.exchange.value] * n,
        "market": [t.market.value] * n,
        "symbol": [t.symbol] * n,
        "native_symbol": [t.native] * n,
        "exchange_ts": tss,
        "ingest_ts": tss,
        "seq": seqs,
        "price_scale": [t.price_scale] * n,
        "size_scale": [t.size_scale] * n,
        "ingest_latency_us": [0] * n,
        "tick_size": [t.tick] * n,
        "lot_size": [t.lot] * n,
        "shard": [t.shard] * n,
        **cols,
    }
    data.update(unit_columns(t, et, cols.get("px", [0] * n), cols.get("qty", cols.get("bid_qty", [0] * n))))
    table = pa.Table.from_pydict(data, schema=spec.schema)
    if len(pc.unique(table.column("event_id"))) != n:  # identical rows: keep the first of each
        seen: set[str] = set()
        keep = [not (eid in seen or seen.add(eid)) for eid in ids]
        conv.in_file_duplicates += n - len(seen)
        table = table.filter(pa.array(keep))
    conv.tables[et] = table
    return conv


_SIDE_NAMES = {pb.SIDE_BUY: "buy", pb.SIDE_SELL: "sell", pb.SIDE_UNSPECIFIED: ""}


def _start(parsed: ParsedFile) -> Converted:
    if parsed.data_type not in EVENT_TYPES:
        raise ValueError(f"{parsed.data_type} rows have no lake event table (see docs/decisions.md)")
    conv = Converted(file_rows=parsed.rows, was_sorted=parsed.was_sorted)
    conv.notes.update({"header": parsed.header, "time_unit": parsed.time_unit})
    id_col = ID_COLUMNS[parsed.data_type]
    conv.ids = parsed.table.column(id_col).to_pylist()
    return conv


def _stamped(parsed: ParsedFile, t: Target, rejects: list[Rejected], *, reuse: bool = False) -> Iterator[pb.Envelope]:
    """Validated envelopes (not yet finished) of each convertible row, in file order."""
    if parsed.data_type == "bookTicker":
        yield from _book_ticker(parsed, t, rejects, reuse)
    else:
        yield from _trades(parsed, t, rejects, reuse, agg=parsed.data_type == "aggTrades")


def _trades(parsed: ParsedFile, t: Target, rejects: list[Rejected], reuse: bool, *, agg: bool) -> Iterator[pb.Envelope]:
    tb = parsed.table
    ids = tb.column("agg_trade_id" if agg else "id").to_pylist()
    pxs = tb.column("price").to_pylist()
    qtys = tb.column("quantity" if agg else "qty").to_pylist()
    tss = tb.column("time_us").to_pylist()
    makers = tb.column("is_buyer_maker").to_pylist()
    firsts = tb.column("first_trade_id").to_pylist() if agg else None
    lasts = tb.column("last_trade_id").to_pylist() if agg else None
    pt, qt = t.trackers()
    tick = t.tick
    et = EventType.TRADE
    env = None
    for i in range(len(ids)):
        try:
            px = on_grid(pt.conv(pxs[i]), tick, "price")
            qty = qt.conv(qtys[i])
            maker = _flag(makers[i])
        except ScaleError as exc:
            rejects.append(Rejected(i, str(exc)))
            continue
        if px <= 0 or qty <= 0:
            rejects.append(Rejected(i, f"range: trade px={px} qty={qty} must be positive"))
            continue
        env = _stamp(env, reuse, t, et, _stream_ts(tss[i]), ids[i])
        tr = env.trade
        tr.trade_id = str(ids[i])
        tr.px = px
        tr.qty = qty
        tr.taker_side = pb.SIDE_SELL if maker else pb.SIDE_BUY
        if agg:
            tr.first_trade_id = firsts[i]
            tr.last_trade_id = lasts[i]
        yield env


def _stamp(env: pb.Envelope | None, reuse: bool, t: Target, et: EventType, ts: int, seq: int) -> pb.Envelope:
    """The envelope of the next row: a new one, or with `reuse` (the caller consumes each
    envelope before asking for the next) the previous one with its time and sequence replaced,
    which saves building a message per row."""
    if env is None or not reuse:
        return new_envelope(t, et, ts, seq)
    env.exchange_ts = env.ingest_ts = ts
    env.seq = seq
    return env


def _book_ticker(parsed: ParsedFile, t: Target, rejects: list[Rejected], reuse: bool) -> Iterator[pb.Envelope]:
    tb = parsed.table
    ids = tb.column("update_id").to_pylist()
    cols = [tb.column(c).to_pylist() for c in ("best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty")]
    tss = tb.column("time_us").to_pylist()
    pt, qt = t.trackers()
    et = EventType.TICKER
    env = None
    for i in range(len(ids)):
        try:
            bp, bq = pt.conv(cols[0][i]), qt.conv(cols[1][i])
            ap, aq = pt.conv(cols[2][i]), qt.conv(cols[3][i])
        except ScaleError as exc:
            rejects.append(Rejected(i, str(exc)))
            continue
        if bp and ap and bp > ap:
            rejects.append(Rejected(i, f"book: ticker bid {bp} > ask {ap}"))
            continue
        env = _stamp(env, reuse, t, et, _stream_ts(tss[i]), ids[i])
        tk = env.ticker
        tk.bid_px, tk.bid_qty, tk.ask_px, tk.ask_qty = bp, bq, ap, aq
        yield env


# -- fetching with verification -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetched:
    status: str  # "ok" | "missing"
    url: str
    path: Path | None = None
    sha256: str = ""
    reused: bool = False  # a verified copy was already on disk
    resumed_from: int = 0


def fetch_verified(vf: VisionFile, base_url: str, downloader, cache_dir: str | Path) -> Fetched:
    """Download one archive and its CHECKSUM and verify them; nothing unverified survives.

    A 404 (archive or checksum absent) is ``missing``. A digest mismatch deletes the file;
    if the bad file was a resumed one the whole file is fetched once more first (the
    mirror may have replaced the archive between the two parts), then ChecksumMismatch."""
    url = vf.url(base_url)
    dest = Path(cache_dir) / vf.path
    published = downloader.fetch_bytes(vf.checksum_url(base_url))
    if published is None:
        probe = downloader.fetch(url, dest)
        if probe.status == "missing":
            return Fetched("missing", url)
        dest.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{vf.file_name}: the archive exists but {vf.file_name}.CHECKSUM does not; "
            "refusing a file that cannot be verified (deleted)"
        )
    digest, name = parse_checksum(published)
    if name != vf.file_name:
        raise ChecksumMismatch(f"{vf.file_name}.CHECKSUM names {name!r}")
    if dest.exists() and sha256_file(dest) == digest:
        return Fetched("ok", url, dest, digest, reused=True)
    dest.unlink(missing_ok=True)
    for fresh_retry in (False, True):
        result = downloader.fetch(url, dest)
        if result.status == "missing":
            return Fetched("missing", url)
        try:
            verify_checksum(dest, published, vf.file_name)
            break
        except ChecksumMismatch as exc:
            dest.unlink(missing_ok=True)
            # A resumed download that fails the checksum gets one fresh, whole-file attempt.
            if fresh_retry or not result.resumed_from:
                raise ChecksumMismatch(f"{exc}; the downloaded file was deleted") from None
    return Fetched("ok", url, dest, digest, resumed_from=result.resumed_from)

"""Bybit history files: order-book archives (``*_ob500.data.zip``) and trade archives.

Order book: one v5 websocket message per line, a ``snapshot`` then ``delta``s (``u`` +1
each, size "0" deletes). The lines are replayed through the collector's own Bybit adapter
(collectors/exchanges/bybit.py and orderbook/book.py), so the history obeys exactly the
sync rules the live stream does (gap -> the book is dropped until the next snapshot, a
crossed book is refused) and yields the same BOOK_SNAPSHOT / BOOK_DELTA envelopes. The
adapter is given the instrument's scales, so its output is already at the lake's scales
(the normalizer would rescale by 10^0). The message ``ts`` stands in for receipt time.

Trades (``public.bybit.com/trading/{SYMBOL}/{SYMBOL}{YYYY-MM-DD}.csv.gz``): header
``timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue,homeNotional,
foreignNotional[,RPI]``; timestamp is Unix seconds with up to 4 decimals (converted exactly
to µs), side is the taker's, trdMatchID the trade id. The file has no cross sequence
(``seq`` of the websocket trade), so these rows cannot share event_ids with streamed
trades: Bybit trade history is for days the stream did not cover (docs/decisions.md).
Bybit publishes no checksums; integrity rests on the gzip/zip CRCs.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from collectors.bulk.common import (
    BulkFileError,
    Converted,
    Rejected,
    Target,
    dedup_in_file,
    finish,
    gunzip_capped,
    new_envelope,
    on_grid,
    read_single_member,
)
from collectors.exchanges.bybit import BybitAdapter
from collectors.exchanges.common import BookStats
from orderbook import L2Book
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import EventType, event_type_from_pb
from schemas.scaled import ScaleError, to_scaled
from schemas.symbols import validate_native

BOOK_BASE_URL = "https://quote-saver.bycsi.com"
TRADES_BASE_URL = "https://public.bybit.com"
CATEGORIES = ("linear", "inverse", "spot")
TRADE_COLUMNS = ("timestamp", "symbol", "side", "size", "price", "tickDirection", "trdMatchID")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TS = re.compile(rb'"ts"\s*:\s*(\d+)')
_U = re.compile(rb'"u"\s*:\s*(\d+)')


def book_path(category: str, symbol: str, day: str, depth: int = 500) -> str:
    _check(category, symbol, day)
    return f"orderbook/{category}/{symbol}/{day}_{symbol}_ob{depth}.data.zip"


def trades_path(symbol: str, day: str) -> str:
    _check("linear", symbol, day)
    return f"trading/{symbol}/{symbol}{day}.csv.gz"


def _check(category: str, symbol: str, day: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"Bybit category must be one of {CATEGORIES}, got {category!r}")
    validate_native(symbol)
    if not _DAY.fullmatch(day):
        raise ValueError(f"day must be YYYY-MM-DD, got {day!r}")


# -- order book -------------------------------------------------------------------------------


def book_lines(path: str | Path) -> Iterator[bytes]:
    """Non-empty lines of an ob file (the zip's single member, or a bare .data file)."""
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            data = read_single_member(p)
        else:
            data = p.read_bytes()
            if data[:2] == b"PK":
                raise BulkFileError(f"{p.name}: corrupt zip archive")
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BulkFileError(f"{p.name}: corrupt zip archive: {exc}") from None
    for line in data.splitlines():
        line = line.strip()
        if line:
            yield line


@dataclass(slots=True)
class BookReplay:
    conv: Converted
    stats: BookStats
    resyncs: list[str] = field(default_factory=list)
    stale: int = 0
    #: independent check over the emitted envelopes: times a rebuilt book was crossed
    crossed_after_apply: int = 0
    final_book: L2Book | None = None


def replay_book(lines: Iterable[bytes], t: Target, category: str = "linear") -> BookReplay:
    """Replay ob history lines through the Bybit adapter into lake envelopes."""
    adapter = BybitAdapter(category=category, shard=t.shard, instruments={t.native: t.reference()})
    conv = Converted()
    resyncs: list[str] = []
    n = 0
    for n, line in enumerate(lines, 1):
        u = _U.search(line)
        if u is not None:
            conv.ids.append(int(u.group(1)))  # the file's update ids, for the gap check
        m = _TS.search(line)
        if m is None:
            conv.rejects.append(Rejected(n - 1, "line without ts"))
            continue
        res = adapter.on_frame(line, int(m.group(1)) * 1000)
        for dl in res.dead_letters:
            conv.rejects.append(Rejected(n - 1, dl.reason))
        resyncs += [r.reason for r in res.resyncs]
        for env in res.events:
            if env.native_symbol != t.native:
                conv.rejects.append(Rejected(n - 1, f"symbol {env.native_symbol} in a {t.native} file"))
                continue
            if env.market != t.market.pb:
                raise BulkFileError(f"{t.native}: adapter market {env.market} differs from {t.market}")
            try:
                _grid(env, t)
            except ScaleError as exc:
                conv.rejects.append(Rejected(n - 1, str(exc)))
                continue
            env.symbol = t.symbol
            conv.add(event_type_from_pb(env.event_type), finish(env, t))
    conv.file_rows = n
    stats = adapter.book_stats().get(t.native, BookStats())
    conv.notes.update(
        {
            "snapshots": stats.snapshots,
            "deltas_applied": stats.deltas_applied,
            "gaps": stats.gaps,
            "crossed": stats.crossed,
            "resyncs": stats.resyncs,
        }
    )
    dedup_in_file(conv)
    rebuilt, crossed = rebuild(conv)
    return BookReplay(conv, stats, resyncs, stats.deltas_stale, crossed, rebuilt)


def _grid(env: pb.Envelope, t: Target) -> None:
    p = env.book_snapshot if env.WhichOneof("payload") == "book_snapshot" else env.book_delta
    for side in (p.bids, p.asks):
        for lvl in side:
            on_grid(lvl.px, t.tick, "level price")


def rebuild(conv: Converted) -> tuple[L2Book, int]:
    """Apply the emitted snapshots and deltas in sequence order to a fresh book (what a lake
    reader does); returns the book and how many times it was crossed after a message."""
    book = L2Book()
    crossed = 0
    msgs = [(e.seq, 0, e) for e in conv.envelopes.get(EventType.BOOK_SNAPSHOT, [])]
    msgs += [(e.seq, 1, e) for e in conv.envelopes.get(EventType.BOOK_DELTA, [])]
    for _, kind, e in sorted(msgs, key=lambda x: (x[2].exchange_ts, x[0], x[1])):
        if kind == 0:
            s = e.book_snapshot
            book.apply_snapshot([(lv.px, lv.qty) for lv in s.bids], [(lv.px, lv.qty) for lv in s.asks], e.seq)
        else:
            d = e.book_delta
            book.apply([(lv.px, lv.qty) for lv in d.bids], [(lv.px, lv.qty) for lv in d.asks])
            book.seq = e.seq
        if book.crossed():
            crossed += 1
    return book, crossed


def first_message(path: str | Path) -> dict:
    for line in book_lines(path):
        return json.loads(line)
    raise BulkFileError(f"{Path(path).name}: empty order-book history file")


# -- trades -----------------------------------------------------------------------------------


def read_trades_csv(data: bytes) -> pa.Table:
    """A trading/*.csv.gz body (gzip bytes or plain CSV) as string columns."""
    if data[:2] == b"\x1f\x8b":
        data = gunzip_capped(data, "gzip trade file")
    first = data.split(b"\n", 1)[0].strip()
    if not first[:1].isalpha():
        raise BulkFileError(f"Bybit trade file without header: {first[:120]!r}")
    header = first.decode().split(",")
    missing = [c for c in TRADE_COLUMNS if c not in header]
    if missing:
        raise BulkFileError(f"Bybit trade file lacks columns {missing}: header {header}")
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                include_columns=list(TRADE_COLUMNS),
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BulkFileError(f"Bybit trade CSV does not parse: {exc}") from None


def trades_to_envelopes(table: pa.Table, t: Target) -> Converted:
    ts_text = table.column("timestamp").to_pylist()
    conv = Converted()
    conv.file_rows = table.num_rows
    ts_us: list[int | None] = []
    for i, s in enumerate(ts_text):
        try:
            ts_us.append(to_scaled(s, 6))
        except ScaleError as exc:
            ts_us.append(None)
            conv.rejects.append(Rejected(i, f"timestamp: {exc}"))
    order = list(range(len(ts_us)))
    keyed = [(v if v is not None else -1) for v in ts_us]
    if any(b < a for a, b in itertools.pairwise(keyed)):
        order.sort(key=keyed.__getitem__)
        conv.was_sorted = True
    syms = table.column("symbol").to_pylist()
    sides = table.column("side").to_pylist()
    sizes = table.column("size").to_pylist()
    prices = table.column("price").to_pylist()
    ids = table.column("trdMatchID").to_pylist()
    pt, qt = t.trackers()
    et = EventType.TRADE
    for i in order:
        ts = ts_us[i]
        if ts is None:
            continue
        if syms[i] != t.native:
            conv.rejects.append(Rejected(i, f"symbol {syms[i]!r} in a {t.native} file"))
            continue
        if sides[i] not in ("Buy", "Sell"):
            conv.rejects.append(Rejected(i, f"side {sides[i]!r}"))
            continue
        try:
            px = on_grid(pt.conv(prices[i]), t.tick, "price")
            qty = qt.conv(sizes[i])
        except ScaleError as exc:
            conv.rejects.append(Rejected(i, str(exc)))
            continue
        if px <= 0 or qty <= 0:
            conv.rejects.append(Rejected(i, f"range: trade px={px} qty={qty} must be positive"))
            continue
        env = new_envelope(t, et, ts, 0)
        tr = env.trade
        tr.trade_id = ids[i]
        tr.px = px
        tr.qty = qty
        tr.taker_side = pb.SIDE_BUY if sides[i] == "Buy" else pb.SIDE_SELL
        conv.add(et, finish(env, t))
    dedup_in_file(conv)
    return conv


__all__ = [
    "BOOK_BASE_URL",
    "TRADES_BASE_URL",
    "BookReplay",
    "book_lines",
    "book_path",
    "read_trades_csv",
    "rebuild",
    "replay_book",
    "trades_path",
    "trades_to_envelopes",
]

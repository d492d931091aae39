"""What every bulk source shares: errors, the instrument a file is stamped with, and the
last step that makes a bulk envelope identical to the stream's processed one.

The lake's event_id is computed by the normalizer over the instrument's scales, the
canonical symbol and the payload; so a bulk row converts its decimal strings straight at
the instrument's scales (exactly, refusing anything off the tick grid, as the normalizer
does) and is stamped with the same `schemas.ids.stamp_event_id`. What the stream adds from
its own side and does not hash (ingest time, shard, latency) is set here to bulk values:
ingest_ts = exchange_ts (a file has no receipt time; a made-up one would pollute latency
statistics), shard = "bulk:<source>" (the marker that lets a re-run replace exactly the
rows it wrote earlier).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from collectors.exchanges.common import ScaleTracker
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.instruments import InstrumentRef
from schemas.model import EventType, Exchange, Market
from schemas.scaled import ScaleError, from_scaled
from schemas.units import ContractUnit

SHARD_PREFIX = "bulk:"


class BulkFileError(ValueError):
    """A downloaded file that cannot be used (corrupt archive, unknown CSV shape)."""


class ChecksumMismatch(BulkFileError):
    """The file's SHA-256 differs from the one the venue published next to it."""


# -- archives --------------------------------------------------------------------------------------
# Files are read into memory whole, and Bybit history has no checksum to refuse a crafted one:
# a 408 KB zip once expanded to 400 MB (+800 MB RSS). Genuine CSV / JSON-lines archives
# compress 5-20x, so a member may expand to 200x its compressed size (and at least 64 MiB,
# at most 2 GiB); an archive holds a handful of members at most.
MAX_EXPANSION_RATIO = 200
MIN_EXPANDED_CAP = 64 * 1024 * 1024
MAX_EXPANDED_BYTES = 2 * 1024**3
MAX_ARCHIVE_MEMBERS = 16


def expanded_cap(compressed_bytes: int) -> int:
    return min(MAX_EXPANDED_BYTES, max(MIN_EXPANDED_CAP, MAX_EXPANSION_RATIO * compressed_bytes))


def read_single_member(path: str | Path, what: str = "file") -> bytes:
    """The one file inside a zip archive, refused (BulkFileError) when the archive has other
    members, too many entries, or expands past ``expanded_cap`` -- checked on the declared
    size and again while reading, since a crafted header can lie."""
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_ARCHIVE_MEMBERS:
                raise BulkFileError(f"{name}: archive with {len(infos)} entries (at most {MAX_ARCHIVE_MEMBERS})")
            files = [i for i in infos if not i.is_dir()]
            if len(files) != 1:
                raise BulkFileError(f"{name}: expected one {what} in the archive, found {[i.filename for i in files]}")
            info = files[0]
            cap = expanded_cap(max(info.compress_size, Path(path).stat().st_size))
            if info.file_size > cap:
                raise BulkFileError(f"{name}: member expands to {info.file_size} bytes (cap {cap})")
            with z.open(info) as f:  # the CRC-32 is verified at the end of the member
                data = f.read(cap + 1)
                if len(data) > cap:
                    raise BulkFileError(f"{name}: member expands past {cap} bytes")
                return data
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise BulkFileError(f"{name}: corrupt zip archive: {exc}") from None


def gunzip_capped(data: bytes, what: str = "gzip file") -> bytes:
    """gzip.decompress with the same expansion cap (every member of a multi-member stream)."""
    cap = expanded_cap(len(data))
    out: list[bytes] = []
    size = 0
    try:
        while data:
            d = zlib.decompressobj(wbits=31)
            chunk = d.decompress(data, cap + 1 - size)
            size += len(chunk)
            out.append(chunk)
            if size > cap or d.unconsumed_tail:
                raise BulkFileError(f"corrupt {what}: expands past {cap} bytes")
            if not d.eof:
                raise BulkFileError(f"corrupt {what}: truncated")
            data = d.unused_data
    except zlib.error as exc:
        raise BulkFileError(f"corrupt {what}: {exc}") from None
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Target:
    """The instrument a file's rows belong to, with the scales of the lake rows."""

    exchange: Exchange
    market: Market
    native: str
    symbol: str  # canonical
    price_scale: int
    size_scale: int
    tick: int  # tick size in price-scale units
    lot: int  # lot size in size-scale units
    shard: str  # "bulk:<source key>"
    #: unit of the file's sizes (schemas/units.py; Bybit inverse: 1-USD contracts); None: not stated
    unit: ContractUnit | None = None

    def trackers(self) -> tuple[ScaleTracker, ScaleTracker]:
        """Locked converters at the lake scales (cached: venues repeat price strings a lot)."""
        return ScaleTracker(self.price_scale), ScaleTracker(self.size_scale)

    def reference(self) -> InstrumentRef:
        """The target as the shared instrument reference row, for replaying files through a
        live adapter: its scales come out exactly as the lake's (size_decimals carries a size
        scale wider than the lot, as the catalog's rule allows)."""
        parts = self.symbol.split("-")
        expiry = parts[2] if len(parts) > 2 and parts[2].isdigit() else ""
        return InstrumentRef(
            self.exchange.value,
            self.market.value,
            self.native,
            self.symbol,
            parts[0],
            parts[1] if len(parts) > 1 else "",
            from_scaled(self.tick, self.price_scale),
            from_scaled(self.lot, self.size_scale),
            expiry=expiry,
            size_decimals=self.size_scale,
        )


@dataclass(slots=True)
class Rejected:
    row: int  # 0-based data row in the file (after sorting)
    reason: str


@dataclass(slots=True)
class Converted:
    """A file's rows as lake envelopes, plus what could not be converted and why."""

    envelopes: dict[EventType, list[pb.Envelope]] = field(default_factory=dict)
    #: rows already built column-wise (fast path), instead of envelopes
    tables: dict[EventType, pa.Table] = field(default_factory=dict)
    rejects: list[Rejected] = field(default_factory=list)
    file_rows: int = 0
    in_file_duplicates: int = 0
    #: integer venue ids of the rows in file order after sorting (trade ids), for gap checks
    ids: list[int] = field(default_factory=list)
    was_sorted: bool = False
    notes: dict[str, object] = field(default_factory=dict)

    def add(self, et: EventType, env: pb.Envelope) -> None:
        self.envelopes.setdefault(et, []).append(env)

    @property
    def rows(self) -> int:
        return sum(len(v) for v in self.envelopes.values()) + sum(t.num_rows for t in self.tables.values())

    def table(self, et: EventType) -> pa.Table:
        """Lake rows of one event type, whichever way they were built."""
        if et in self.tables:
            return self.tables[et]
        return envelopes_to_table(et, self.envelopes.get(et, []))

    def restrict(self, lo_us: int, hi_us: int) -> list[tuple[int, int]]:
        """Keep rows with lo <= exchange_ts < hi; returns (exchange_ts, seq) of those dropped."""
        dropped: list[tuple[int, int]] = []
        for et, envs in self.envelopes.items():
            dropped += [(e.exchange_ts, e.seq) for e in envs if not lo_us <= e.exchange_ts < hi_us]
            self.envelopes[et] = [e for e in envs if lo_us <= e.exchange_ts < hi_us]
        for et, tb in self.tables.items():
            ts = tb.column("exchange_ts").cast(pa.int64())
            inside = pc.and_(pc.greater_equal(ts, lo_us), pc.less(ts, hi_us))
            out = tb.filter(pc.invert(inside))
            dropped += list(
                zip(out.column("exchange_ts").cast(pa.int64()).to_pylist(), out.column("seq").to_pylist(), strict=True)
            )
            self.tables[et] = tb.filter(inside)
        return dropped


def new_envelope(t: Target, event_type: EventType, exchange_ts: int, seq: int) -> pb.Envelope:
    env = pb.Envelope()
    env.exchange = t.exchange.pb
    env.market = t.market.pb
    env.event_type = event_type.pb
    env.symbol = t.symbol
    env.native_symbol = t.native
    env.exchange_ts = exchange_ts
    env.ingest_ts = exchange_ts
    env.seq = seq
    env.price_scale = t.price_scale
    env.size_scale = t.size_scale
    return env


def finish(env: pb.Envelope, t: Target) -> pb.Envelope:
    """Enrich like the normalizer (tick, lot, latency) and stamp the event_id."""
    env.tick_size = t.tick
    env.lot_size = t.lot
    env.ingest_latency_us = env.ingest_ts - env.exchange_ts
    env.shard = t.shard
    if t.unit is not None:  # enrichment like tick/lot: not part of the event id
        env.qty_unit, env.contract_value, env.contract_value_ccy = (t.unit.unit.pb, t.unit.contract_value, t.unit.ccy)
    return stamp_event_id(env)


def unit_columns(t: Target, et: EventType, px: list[int], qty: list[int]) -> dict[str, list]:
    """The lake's unit columns (and a trade's base_qty) for n rows of one target, exactly as
    envelopes_to_table builds them from finished envelopes (column-wise fast paths)."""
    n = len(qty)
    u = t.unit
    cols: dict[str, list] = {
        "qty_unit": [u.unit.value if u else None] * n,
        "contract_value": [u.contract_value if u else None] * n,
        "contract_value_ccy": [u.ccy if u else None] * n,
    }
    if et is EventType.TRADE:
        if u is None or u.is_base:
            cols["base_qty"], cols["base_size_scale"] = list(qty), [t.size_scale] * n
        else:
            cols["base_qty"] = [u.to_base(q, t.size_scale, p, t.price_scale) for p, q in zip(px, qty, strict=True)]
            cols["base_size_scale"] = [u.base_scale(t.size_scale)] * n
    return cols


def on_grid(value: int, grid: int, what: str) -> int:
    if grid > 1 and value % grid:
        raise ScaleError(f"off_grid: {what} {value} is not a multiple of the tick {grid}")
    return value


def dedup_in_file(conv: Converted) -> None:
    """Identical rows in one file hash to one event_id: keep the first, count the rest."""
    for et, envs in conv.envelopes.items():
        seen: set[str] = set()
        kept = []
        for e in envs:
            if e.event_id in seen:
                conv.in_file_duplicates += 1
                continue
            seen.add(e.event_id)
            kept.append(e)
        conv.envelopes[et] = kept


def id_gaps(ids: Iterable[int]) -> int:
    """Ids missing between consecutive sorted ids (0 for a contiguous run)."""
    prev = None
    gaps = 0
    for i in sorted(set(ids)):
        if prev is not None and i > prev + 1:
            gaps += i - prev - 1
        prev = i
    return gaps

"""raw.* -> processed.*: validate, enrich with instrument data, canonicalize, dedup.

Per record, in order (the first failure sends it to dlq.normalize with a reason):
1. decode the Envelope (schema header, protobuf, event_id matches content);
2. the record must belong to its topic (exchange, market, event type, payload kind);
3. duplicates by event_id within the partition's offset window are dropped (counted);
4. the venue symbol must be in the instrument catalog; the canonical symbol comes from it;
5. timestamps in range (exchange time not after collector receipt + allowed skew);
6. payload ranges: positive prices, non-negative sizes, sorted and uncrossed snapshots;
7. prices and sizes of trades and books are re-expressed at the instrument's scales
   (exact: a price off the tick grid is refused, never rounded); other types keep the finer
   of their own and the instrument's scales;
8. venue sequence ids must not go backwards per (partition, symbol, type); book deltas must
   strictly increase, except after a snapshot reset (Bybit u=1);
9. enrich tick_size, lot_size, the quantity unit (qty_unit, contract_value,
   contract_value_ccy: schemas/units.py) and ingest_latency_us, and re-stamp event_id over
   the result.

Every decision depends only on the record and on state rebuilt from the preceding
`dedup_span` offsets of the same partition, so a restarted normalizer re-reads that span
(warm-up) and then produces byte-identical output for the records after the commit point.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Consumer, Message
from pydantic import Field

from runtime import kafka_config as kc
from runtime.dlq import DlqCounters, dead_letter, record_source
from runtime.service_cli import LoopSettings, service_main
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id, event_id_from, id_head
from schemas.instruments import InstrumentRef
from schemas.model import (
    EventType,
    Exchange,
    Market,
    event_type_from_pb,
    exchange_from_pb,
    market_from_pb,
)
from schemas.scaled import INT64_MAX, MAX_ABS_FUNDING_RATE
from schemas.serde import (
    CONTENT_TYPE,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    SCHEMA_VERSION_NUMBER,
    VERSION_FIELD,
    SerdeError,
    decode,
    encode,
    envelope_bytes,
)
from schemas.topics import (
    DlqStage,
    Stage,
    all_event_topics,
    event_topic,
    parse_event_topic,
)
from schemas.units import ContractUnit, UnitError, unit_of
from streaming.kafka.io import TP, read_range, watermarks
from streaming.kafka.upstream import RAW_BEFORE_HEADER, raw_before_value
from streaming.processors import metrics
from streaming.processors.dedup import OffsetWindowDedup
from streaming.processors.instruments import InstrumentCatalog, fetch_instruments
from streaming.processors.txn_loop import OutRecord, TransactionalLoop

log = logging.getLogger(__name__)

MIN_TS_US = 1_262_304_000_000_000  # 2010-01-01: nothing older is crypto market data
#: Offsets per input partition the dedup window spans. Duplicates come from collector
#: overlaps (reconnects, failover) lasting seconds; a restart re-reads this many offsets
#: per partition, so the span is also the restart cost.
DEFAULT_DEDUP_SPAN = 50_000
GRID_TYPES = (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)
#: The headers schemas.serde.encode gives every record, built once (ok_record builds them per record).
_SCHEMA_ITEM = (SCHEMA_HEADER, SCHEMA_VERSION.encode())
_CONTENT_TYPE_ITEM = ("content-type", CONTENT_TYPE.encode())
_SCHEMA_VERSION_B = SCHEMA_VERSION.encode()
_SNAPSHOT, _DELTA = EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA
_from_bytes = pb.Envelope.FromString  # new + ParseFromString in one call


class Reject(Exception):
    """A record the normalizer refuses; the message is the DLQ reason."""


@dataclass(slots=True)
class Outcome:
    kind: str  # "ok" | "duplicate" | "dlq"
    env: pb.Envelope | None = None
    topic: str = ""
    reason: str = ""


def _rescale(value: int, src: int, dst: int, what: str, grid: int = 1) -> int:
    if dst >= src:
        out = value * 10 ** (dst - src)
    else:
        q, r = divmod(value, 10 ** (src - dst))
        if r:
            raise Reject(f"off_grid: {what} {value}e-{src} is finer than the instrument's scale {dst}")
        out = q
    if grid > 1 and out % grid:
        raise Reject(f"off_grid: {what} {out}e-{dst} is not a multiple of {grid}e-{dst}")
    if out > INT64_MAX or out < -INT64_MAX - 1:
        raise Reject(f"range: {what} overflows int64 at scale {dst}")
    return out


def _levels_ok(levels, what: str, *, snapshot: bool) -> None:
    for lvl in levels:
        if lvl.px <= 0:
            raise Reject(f"range: {what} level price {lvl.px} <= 0")
        if lvl.qty < 0 or (snapshot and lvl.qty == 0):
            raise Reject(f"range: {what} level qty {lvl.qty} invalid")


def _validate_payload(env: pb.Envelope, et: EventType) -> None:
    if et is EventType.TRADE:
        t = env.trade
        if t.px <= 0 or t.qty <= 0:
            raise Reject(f"range: trade px={t.px} qty={t.qty} must be positive")
    elif et is EventType.BOOK_SNAPSHOT:
        s = env.book_snapshot
        _levels_ok(s.bids, "bid", snapshot=True)
        _levels_ok(s.asks, "ask", snapshot=True)
        if any(a.px <= b.px for a, b in zip(s.bids, s.bids[1:])):
            raise Reject("book: snapshot bids not strictly descending")
        if any(b.px <= a.px for a, b in zip(s.asks, s.asks[1:])):
            raise Reject("book: snapshot asks not strictly ascending")
        if s.bids and s.asks and s.bids[0].px >= s.asks[0].px:
            raise Reject(f"book: crossed snapshot bid {s.bids[0].px} >= ask {s.asks[0].px}")
    elif et is EventType.BOOK_DELTA:
        d = env.book_delta
        _levels_ok(d.bids, "bid", snapshot=False)
        _levels_ok(d.asks, "ask", snapshot=False)
        if d.first_seq < 0 or d.prev_seq < -1:  # prev_seq -1 = "the venue sends none"
            raise Reject(f"range: delta first_seq {d.first_seq} / prev_seq {d.prev_seq} negative")
    elif et is EventType.MARK_PRICE:
        m = env.mark_price
        if m.mark_px <= 0 or m.index_px < 0 or m.estimated_settle_px < 0:
            raise Reject("range: mark price must be positive, index and settle prices not negative")
    elif et is EventType.FUNDING:
        f = env.funding
        if abs(f.rate) > MAX_ABS_FUNDING_RATE or abs(f.predicted_rate) > MAX_ABS_FUNDING_RATE:
            raise Reject(
                f"range: funding rate {f.rate}e-12 (predicted {f.predicted_rate}e-12) beyond "
                f"±{MAX_ABS_FUNDING_RATE}e-12"
            )
        if f.mark_px < 0 or f.next_funding_ts < 0:
            raise Reject("range: funding mark price or next funding time negative")
    elif et is EventType.LIQUIDATION:
        liq = env.liquidation
        if liq.px <= 0 or liq.qty <= 0:
            raise Reject("range: liquidation px and qty must be positive")
    elif et is EventType.TICKER:
        tk = env.ticker
        if min(tk.bid_px, tk.ask_px, tk.last_px, tk.bid_qty, tk.ask_qty, tk.volume_24h, tk.open_interest) < 0:
            raise Reject("range: negative ticker price or quantity")
        if tk.bid_px and tk.ask_px and tk.bid_px > tk.ask_px:
            raise Reject(f"book: ticker bid {tk.bid_px} > ask {tk.ask_px}")


def _rescale_payload(env: pb.Envelope, et: EventType, ps: int, ss: int, tick: int) -> None:
    """Re-express the payload at (ps, ss). Grid types must land on the tick grid."""
    sps, sss = env.price_scale, env.size_scale
    g = tick if et in GRID_TYPES else 1
    if et is EventType.TRADE:
        t = env.trade
        t.px = _rescale(t.px, sps, ps, "trade price", g)
        t.qty = _rescale(t.qty, sss, ss, "trade size")
    elif et in (EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA):
        p = env.book_snapshot if et is EventType.BOOK_SNAPSHOT else env.book_delta
        for side in (p.bids, p.asks):
            for lvl in side:
                lvl.px = _rescale(lvl.px, sps, ps, "level price", g)
                lvl.qty = _rescale(lvl.qty, sss, ss, "level size")
    elif et is EventType.FUNDING:
        env.funding.mark_px = _rescale(env.funding.mark_px, sps, ps, "mark price")
    elif et is EventType.MARK_PRICE:
        m = env.mark_price
        m.mark_px = _rescale(m.mark_px, sps, ps, "mark price")
        m.index_px = _rescale(m.index_px, sps, ps, "index price")
        m.estimated_settle_px = _rescale(m.estimated_settle_px, sps, ps, "settle price")
    elif et is EventType.LIQUIDATION:
        liq = env.liquidation
        liq.px = _rescale(liq.px, sps, ps, "liquidation price")
        liq.qty = _rescale(liq.qty, sss, ss, "liquidation size")
    elif et is EventType.TICKER:
        tk = env.ticker
        for f in ("bid_px", "ask_px", "last_px"):
            setattr(tk, f, _rescale(getattr(tk, f), sps, ps, f))
        for f in ("bid_qty", "ask_qty", "volume_24h", "open_interest"):
            setattr(tk, f, _rescale(getattr(tk, f), sss, ss, f))
    env.price_scale, env.size_scale = ps, ss


# The fast path's payload checks (Normalizer._fast): True when _validate_payload and
# _rescale_payload at the record's own scales would pass the payload unchanged (positive
# prices, valid sizes, prices on the `tick` grid, a sorted uncrossed snapshot); False sends
# the record to the full path, which then names the reason.


def _fast_trade_ok(t, tick: int) -> bool:
    px = t.px
    return px > 0 and t.qty > 0 and not (tick > 1 and px % tick)


def _fast_delta_ok(d, tick: int) -> bool:
    if d.first_seq < 0 or d.prev_seq < -1:
        return False
    for side in (d.bids, d.asks):
        for lvl in side:
            px = lvl.px
            if px <= 0 or lvl.qty < 0 or (tick > 1 and px % tick):
                return False
    return True


def _fast_snapshot_ok(s, tick: int) -> bool:
    bids, asks = s.bids, s.asks
    prev = None
    for lvl in bids:  # strictly descending
        px = lvl.px
        if px <= 0 or lvl.qty <= 0 or (prev is not None and px >= prev) or (tick > 1 and px % tick):
            return False
        prev = px
    prev = None
    for lvl in asks:  # strictly ascending
        px = lvl.px
        if px <= 0 or lvl.qty <= 0 or (prev is not None and px <= prev) or (tick > 1 and px % tick):
            return False
        prev = px
    return not (bids and asks and bids[0].px >= asks[0].px)


def _has_map(desc, seen=frozenset()) -> bool:
    """Whether a message type (or one it contains) has a map field."""
    for f in desc.fields:
        if f.message_type is not None and f.message_type not in seen:
            if f.message_type.GetOptions().map_entry or _has_map(f.message_type, seen | {desc}):
                return True
    return False


_PAYLOADS_HAVE_NO_MAPS = not any(
    _has_map(pb.Envelope.DESCRIPTOR.fields_by_name[et.payload_field].message_type) for et in EventType
)
assert _PAYLOADS_HAVE_NO_MAPS, "a payload with a map needs SerializeToString(deterministic=True) in Normalizer._fast"


def _fast_ticker_ok(tk, _tick: int) -> bool:
    bid, ask = tk.bid_px, tk.ask_px
    if min(bid, ask, tk.last_px, tk.bid_qty, tk.ask_qty, tk.volume_24h, tk.open_interest) < 0:
        return False
    return not (bid and ask and bid > ask)


_FAST_CHECKS = {
    EventType.TRADE: _fast_trade_ok,
    EventType.BOOK_DELTA: _fast_delta_ok,
    EventType.BOOK_SNAPSHOT: _fast_snapshot_ok,
    EventType.TICKER: _fast_ticker_ok,
}


class Normalizer:
    """The pure per-record logic plus its per-partition state (no Kafka in here)."""

    def __init__(
        self,
        catalog: InstrumentCatalog,
        *,
        dedup_span: int = DEFAULT_DEDUP_SPAN,
        max_future_skew_us: int = 5_000_000,
        refresh: Callable[[Exchange, Market], int] | None = None,
    ):
        self.catalog = catalog
        self.dedup_span = dedup_span
        self.max_future_skew_us = max_future_skew_us
        self.refresh = refresh  # reload reference data on an unknown symbol (once per venue)
        self._refreshed: set[tuple[Exchange, Market]] = set()
        self.dedup: dict[TP, OffsetWindowDedup] = {}
        self.last_seq: dict[tuple, int] = {}
        self.counters = DlqCounters(DlqStage.NORMALIZE.value)
        self._topics: dict[str, tuple] = {}
        self._unit_cache: dict[tuple, tuple[int, int]] = {}
        self._scale_cache: dict[InstrumentRef, tuple[int, int]] = {}
        self._qty_units: dict[InstrumentRef, ContractUnit] = {}
        # The fast path's per raw topic facts and, per venue symbol, what the catalog gives it
        # (rebuilt whenever the catalog changes or is replaced: InstrumentCatalog.revision).
        self._fast_topics: dict[str, tuple | bool] = {}
        self._fast_revision = -1
        self._fast_catalog: InstrumentCatalog | None = None
        self.duplicates = 0
        self.ok = 0

    def _instrument(self, ex: Exchange, mk: Market, native: str) -> InstrumentRef:
        ref = self.catalog.get(ex, mk, native)
        if ref is None and self.refresh is not None and (ex, mk) not in self._refreshed:
            self._refreshed.add((ex, mk))
            try:
                self.refresh(ex, mk)
            except Exception as exc:  # noqa: BLE001 - a failed refresh must not stop the stream
                log.warning("instrument refresh for %s %s failed: %s", ex, mk, exc)
            ref = self.catalog.get(ex, mk, native)
        if ref is None:
            raise Reject(f"unknown_instrument: no reference data for {ex} {mk} {native!r}")
        return ref

    def _check_seq(self, tp: TP, env: pb.Envelope, et: EventType) -> None:
        if env.seq < 0:
            raise Reject(f"range: seq {env.seq} negative (0 = the venue sends none)")
        if env.seq == 0:
            return
        key = (tp, env.symbol, et)
        if et is EventType.BOOK_SNAPSHOT:
            # A snapshot is authoritative and may restart the venue's numbering (Bybit u=1):
            # deltas after it are checked against it.
            self.last_seq[key] = env.seq
            self.last_seq[(tp, env.symbol, EventType.BOOK_DELTA)] = env.seq
            return
        last = self.last_seq.get(key)
        if last is not None:
            if et is EventType.BOOK_DELTA and env.seq <= last:
                raise Reject(f"seq_regression: book delta seq {env.seq} <= previous {last}")
            if env.seq < last:
                raise Reject(f"seq_regression: {et} seq {env.seq} < previous {last}")
        self.last_seq[key] = env.seq

    def process(
        self, topic: str, partition: int, offset: int, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> Outcome:
        o = self._fast(topic, partition, offset, value, headers)
        return o if o is not None else self.process_full(topic, partition, offset, value, headers)

    def process_full(
        self, topic: str, partition: int, offset: int, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> Outcome:
        """`process` without its fast path (for a record `_fast` declined)."""
        try:
            return self._process(topic, partition, offset, value, headers)
        except Reject as exc:
            self.counters.count(str(exc))
            return Outcome("dlq", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a record we did not foresee is a dead letter, not
            # a crash: the service would re-read the same record on restart and crash again.
            reason = f"unexpected: {type(exc).__name__}: {exc}"[:500]
            log.warning("normalizer refused %s[%d]@%d: %s", topic, partition, offset, reason)
            self.counters.count(reason)
            return Outcome("dlq", reason=reason)

    def _fast(self, topic, partition, offset, value, headers, stamps=None) -> Outcome | OutRecord | None:
        """The common record in one pass, deciding exactly as _process does: a trade or book
        record the collector already wrote at the instrument's scales under its canonical
        symbol (so nothing is re-scaled and the event id stays the raw one), passing every
        check. For any other record it returns None having changed no state, and _process
        decides it from the start (tests/test_normalizer_fast.py compares the two paths).
        Per event it reads only the fields the checks need, looks the instrument up once per
        venue symbol and builds no intermediate objects: given `stamps` (the service's batch),
        an accepted record comes back as its OutRecord (ok_record's), its exchange_ts appended
        to stamps[processed topic]."""
        try:
            catalog = self.catalog
            if self._fast_revision != catalog.revision or self._fast_catalog is not catalog:
                self._fast_topics.clear()
                self._fast_revision, self._fast_catalog = catalog.revision, catalog
            tc = self._fast_topics.get(topic)
            if tc is None:
                tc = self._fast_topics[topic] = self._fast_topic(topic)
            if not tc or value is None:
                return None
            for k, v in headers or ():
                if k == SCHEMA_HEADER:
                    if v != _SCHEMA_VERSION_B:
                        return None
                    break
            out_topic, ex, mk, etn, field, et, payload_ok, symbols, et_item = tc
            env = _from_bytes(value)
            eid = env.event_id
            stated = env.schema_version  # 0: the header decided (above); another: _process refuses
            if (
                (stated and stated != SCHEMA_VERSION_NUMBER)
                or not eid
                or env.WhichOneof("payload") != field
                or env.exchange != ex
                or env.market != mk
                or env.event_type != etn
            ):
                return None
            native = env.native_symbol
            ent = symbols.get(native)
            if ent is None:
                ent = symbols[native] = self._fast_symbol(topic, native)
            if not ent:
                return None
            canonical, head, ps, ss, tick, lot, qty_unit, cv, ccy, finer, ref, rec_key = ent
            xts, its, seq, eps, ess = env.exchange_ts, env.ingest_ts, env.seq, env.price_scale, env.size_scale
            if (
                env.symbol != canonical
                or seq < 0
                or xts < MIN_TS_US
                or its < MIN_TS_US
                or xts - its > self.max_future_skew_us
            ):
                return None
            if eps != ps or ess != ss:
                # Grid types are re-expressed at the instrument's scales (full path); the others
                # keep theirs when finer than the instrument's (_process: the finer of the two).
                if finer is None or eps < ps or ess < ss or eps > 18 or ess > 18:
                    return None
                tick_lot = finer.get((eps, ess))
                if tick_lot is None:
                    tick_lot = finer[(eps, ess)] = self._units(ref, eps, ess)
                tick, lot = tick_lot
            payload = getattr(env, field)
            if not payload_ok(payload, tick):
                return None
            id_ts = 0 if env.exchange_ts_is_receipt else xts
            # deterministic=True (compute_event_id's) orders map entries only; the payloads have
            # no maps (_PAYLOADS_HAVE_NO_MAPS), so the plain call gives the same bytes, cheaper.
            if event_id_from(head, id_ts, seq, eps, ess, payload.SerializeToString()) != eid:
                return None
        except Exception:  # noqa: BLE001 - nothing changed yet: _process decides and reports it
            return None
        # From here on state changes, in _process's order: dedup, then the sequence check.
        tp = (topic, partition)
        dd = self.dedup.get(tp)
        if dd is None:
            dd = self.dedup[tp] = OffsetWindowDedup(self.dedup_span)
        if not dd.first_time(offset, eid):
            self.duplicates += 1
            return Outcome("duplicate", env=env)
        if seq:
            last_seq = self.last_seq
            key = (tp, canonical, et)
            if et is _SNAPSHOT:
                last_seq[key] = seq
                last_seq[(tp, canonical, _DELTA)] = seq
            else:
                last = last_seq.get(key)
                if last is not None and (seq < last or (seq == last and et is _DELTA)):
                    try:
                        self._check_seq(tp, env, et)  # raises the Reject with its reason
                    except Reject as exc:
                        self.counters.count(str(exc))
                        return Outcome("dlq", reason=str(exc))
                last_seq[key] = seq
        env.tick_size = tick
        env.lot_size = lot
        env.qty_unit, env.contract_value, env.contract_value_ccy = qty_unit, cv, ccy
        env.ingest_latency_us = its - xts
        self.ok += 1
        if stamps is None:
            return Outcome("ok", env=env, topic=out_topic)
        batch = stamps.get(out_topic)
        if batch is None:
            batch = stamps[out_topic] = []
        batch.append(xts)
        # ok_record's record, its per-topic and per-symbol parts prepared once
        out_headers = [_SCHEMA_ITEM, _CONTENT_TYPE_ITEM, et_item, ("event-id", eid.encode())]
        # envelope_bytes' value: the version stated in the body (serialized last, so appended)
        value = env.SerializeToString() if stated else env.SerializeToString() + VERSION_FIELD
        return OutRecord(out_topic, value, rec_key, out_headers, xts // 1000)

    def _fast_topic(self, topic: str) -> tuple | bool:
        """The fast path's facts of a raw topic (False: its records take the full path)."""
        try:
            src, out_topic = self._topic(topic)
        except Reject:
            return False
        et = src.event_type
        if et not in _FAST_CHECKS:
            return False
        fields = (out_topic, src.exchange.pb, src.market.pb, et.pb, et.payload_field, et, _FAST_CHECKS[et], {})
        return (*fields, ("event-type", et.value.encode()))

    def _fast_symbol(self, topic: str, native: str) -> tuple | bool:
        """What the fast path needs of a venue symbol's instrument (False: full path)."""
        src, _ = self._topic(topic)
        et = src.event_type
        ref = self.catalog.get(src.exchange, src.market, native)
        if ref is None or not ref.canonical:
            return False
        ps, ss = self._scales(ref)
        if not (0 <= ps <= 18 and 0 <= ss <= 18):
            return False
        try:
            tick, lot = self._units(ref, ps, ss)
            unit = self._qty_unit(ref)
        except Reject:
            return False
        head = id_head(src.exchange.pb, src.market.pb, ref.canonical, et.pb)
        finer = None if et in GRID_TYPES else {}
        key = ref.canonical.encode()
        return (ref.canonical, head, ps, ss, tick, lot, unit.unit.pb, unit.contract_value, unit.ccy, finer, ref, key)

    def _topic(self, topic: str):
        """(source facets, processed topic) per raw topic, parsed once."""
        hit = self._topics.get(topic)
        if hit is None:
            try:
                src = parse_event_topic(topic)
            except ValueError as exc:
                raise Reject(f"bad_topic: {exc}") from None
            if src.stage is not Stage.RAW:
                raise Reject(f"bad_topic: {topic} is not a raw topic")
            hit = self._topics[topic] = (src, event_topic(Stage.PROCESSED, src.market, src.event_type, src.exchange))
        return hit

    def _units(self, ref: InstrumentRef, ps: int, ss: int) -> tuple[int, int]:
        key = (ref, ps, ss)
        hit = self._unit_cache.get(key)
        if hit is None:
            try:
                hit = (ref.tick_units(ps), ref.lot_units(ss))
            except ValueError as exc:  # ScaleError: a tick or lot that overflows int64 at this scale
                raise Reject(f"range: tick/lot of {ref.native} at scales {ps}/{ss}: {exc}") from None
            self._unit_cache[key] = hit
        return hit

    def _qty_unit(self, ref: InstrumentRef) -> ContractUnit:
        hit = self._qty_units.get(ref)
        if hit is None:
            try:
                hit = self._qty_units[ref] = unit_of(ref)
            except UnitError as exc:  # never guess: 1 contract read as 1 BTC is silently wrong
                raise Reject(f"unit: {exc}") from None
        return hit

    def _scales(self, ref: InstrumentRef) -> tuple[int, int]:
        hit = self._scale_cache.get(ref)
        if hit is None:
            hit = self._scale_cache[ref] = (ref.price_scale, ref.size_scale)
        return hit

    def _process(self, topic, partition, offset, value, headers) -> Outcome:
        src, out_topic = self._topic(topic)
        try:
            env = decode(value, headers, verify_id=True)
        except SerdeError as exc:
            raise Reject(f"decode: {exc}") from None
        try:
            et = event_type_from_pb(env.event_type)
            ex, mk = exchange_from_pb(env.exchange), market_from_pb(env.market)
        except (KeyError, ValueError):
            raise Reject("mismatch: unspecified exchange, market or event type") from None
        if (ex, mk, et) != (src.exchange, src.market, src.event_type):
            raise Reject(f"mismatch: {ex}/{mk}/{et} record on topic {topic}")
        if env.WhichOneof("payload") != et.payload_field:
            raise Reject(f"mismatch: payload {env.WhichOneof('payload')} for event type {et}")
        tp = (topic, partition)
        dd = self.dedup.get(tp)
        if dd is None:
            dd = self.dedup[tp] = OffsetWindowDedup(self.dedup_span)
        if not dd.first_time(offset, env.event_id):
            self.duplicates += 1
            return Outcome("duplicate", env=env)
        ref = self._instrument(ex, mk, env.native_symbol)
        changed = env.symbol != ref.canonical
        env.symbol = ref.canonical
        if env.exchange_ts < MIN_TS_US or env.ingest_ts < MIN_TS_US:
            raise Reject(f"ts_range: exchange_ts={env.exchange_ts} ingest_ts={env.ingest_ts} before 2010")
        if env.exchange_ts > env.ingest_ts + self.max_future_skew_us:
            raise Reject(
                f"ts_range: exchange_ts {env.exchange_ts} is {env.exchange_ts - env.ingest_ts} µs "
                f"after receipt (allowed skew {self.max_future_skew_us} µs)"
            )
        if not (0 <= env.price_scale <= 18 and 0 <= env.size_scale <= 18):
            raise Reject(f"range: scales {env.price_scale}/{env.size_scale} outside 0..18")
        _validate_payload(env, et)
        ps, ss = self._scales(ref)
        if et not in GRID_TYPES:
            ps, ss = max(ps, env.price_scale), max(ss, env.size_scale)
        tick, lot = self._units(ref, ps, ss)
        changed = changed or (ps, ss) != (env.price_scale, env.size_scale)
        _rescale_payload(env, et, ps, ss, tick)
        self._check_seq(tp, env, et)
        env.tick_size = tick
        env.lot_size = lot
        unit = self._qty_unit(ref)
        env.qty_unit, env.contract_value, env.contract_value_ccy = unit.unit.pb, unit.contract_value, unit.ccy
        env.ingest_latency_us = env.ingest_ts - env.exchange_ts
        if changed:  # enrichment fields are not part of the id; symbol and scales are
            env.event_id = compute_event_id(env)
        self.ok += 1
        return Outcome("ok", env=env, topic=out_topic)


_EVENT_TYPE_ITEMS: dict[int, tuple[str, bytes]] = {}


def ok_record(topic: str, env: pb.Envelope) -> OutRecord:
    """The processed record of an accepted envelope: schemas.serde.encode's key, value and
    headers (its checks too), without its intermediate KafkaRecord, stamped with exchange time."""
    eid, sym = env.event_id, env.symbol
    if not eid or not sym:
        encode(env)  # raises encode's SerdeError
    et_item = _EVENT_TYPE_ITEMS.get(env.event_type)
    if et_item is None:
        et_item = _EVENT_TYPE_ITEMS[env.event_type] = ("event-type", event_type_from_pb(env.event_type).value.encode())
    return OutRecord(
        topic,
        envelope_bytes(env),
        sym.encode(),
        [_SCHEMA_ITEM, _CONTENT_TYPE_ITEM, et_item, ("event-id", eid.encode())],
        env.exchange_ts // 1000,
    )


def outcome_records(o: Outcome, msg_topic: str, partition: int, offset: int, value: bytes | None) -> list[OutRecord]:
    if o.kind == "ok":
        return [ok_record(o.topic, o.env)]
    if o.kind == "dlq":
        env = o.env
        dl = dead_letter(
            DlqStage.NORMALIZE,
            o.reason,
            source=record_source(msg_topic, partition, offset),
            raw=value,
            ingest_ts=env.ingest_ts if env else 0,
        )
        return [OutRecord(dl.topic, dl.value, dl.key, dl.headers)]
    return []


class NormalizerService(TransactionalLoop):
    """The long-running normalizer: raw topics in, processed + dlq.normalize out."""

    name = "normalizer"

    def __init__(
        self,
        conn: kc.KafkaConnection,
        normalizer: Normalizer,
        input_topics: list[str],
        *,
        group_id: str = "ticklake-normalizer",
        transactional_id: str = "ticklake-normalizer",
        **kw,
    ):
        super().__init__(conn, group_id=group_id, transactional_id=transactional_id, input_topics=input_topics, **kw)
        self.normalizer = normalizer
        self._raw_before = 0.0  # running maximum of the batches' start times (RAW_BEFORE_HEADER)
        self._polled_at = 0.0

    def summary(self) -> str:
        n = self.normalizer
        return f"{super().summary()} ok={n.ok} duplicates={n.duplicates} dlq={dict(n.counters.counts)}"

    def warm_up(self, committed: dict[TP, int | None]) -> None:
        """Re-read the dedup span before each committed offset so the restarted state equals
        the crashed one's (output of warm-up records is discarded: it was committed)."""
        span = self.normalizer.dedup_span
        cons = Consumer(
            kc.consumer_config(self.conn, f"{self.group_id}-warmup", read_committed=True, fetch_wait_max_ms=10)
        )
        try:
            n = 0
            for tp, off in committed.items():
                if not off:
                    continue
                low, _ = watermarks(cons, tp)
                for m in read_range(cons, tp, max(low, off - span), off):
                    self.normalizer.process(m.topic(), m.partition(), m.offset(), m.value(), m.headers())
                    n += 1
            self.normalizer.counters.counts.clear()
            log.info("normalizer warm-up replayed %d records", n)
        finally:
            cons.close()

    def _poll_batch(self) -> list[Message]:
        msgs = super()._poll_batch()
        self._polled_at = time.time()  # every raw record in msgs was created before this
        return msgs

    def before_produce(self, msgs: list[Message], outs: list[OutRecord]) -> None:
        if outs:
            self._mark_raw_before(outs, self._polled_at)

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        out: list[OutRecord] = []
        append = out.append
        fast, full = self.normalizer._fast, self.normalizer.process_full
        dups = 0
        delays: dict[str, list[int]] = {}
        for m in msgs:
            topic, value, partition, offset, headers = m.topic(), m.value(), m.partition(), m.offset(), m.headers()
            o = fast(topic, partition, offset, value, headers, delays)
            if o is None:
                o = full(topic, partition, offset, value, headers)
            elif type(o) is OutRecord:
                append(o)
                continue
            kind = o.kind
            if kind == "ok":
                rec = ok_record(o.topic, o.env)
                stamps = delays.get(rec.topic)
                if stamps is None:
                    stamps = delays[rec.topic] = []
                stamps.append(o.env.exchange_ts)
                append(rec)
            elif kind == "duplicate":
                dups += 1
            else:
                out += outcome_records(o, topic, partition, offset, value)
        if dups:
            metrics.DUPLICATES.labels(self.name).inc(dups)
        observe_exchange_to_processed(delays, time.time())
        return out

    def _mark_raw_before(self, out: list[OutRecord], polled_at: float) -> None:
        """RAW_BEFORE_HEADER on the last record of each (topic, key) of the batch, hence on the
        last record of each output partition (keyed records: a key's partition is fixed): the
        feature processor's bound on the raw CreateTime of what it took
        (FeatureProcessor._proposal_stamp). The batch's pairs are collected first (~70 ns a
        record), then the last record of each is found from the end, stopping once all are
        found. Every pair of every batch is stamped: the early exit on the pairs seen before
        (an earlier version) missed a pair new in a batch, e.g. a symbol's first book snapshot,
        and its partition then lacked the header until that pair's next record (seconds to
        hours for snapshots), so the feature processor fell back to its own clock for every
        proposal meanwhile (docs/decisions.md, "Latency rows: where the time beyond the floor
        goes")."""
        self._raw_before = max(self._raw_before, polled_at)
        item = (RAW_BEFORE_HEADER, raw_before_value(self.transactional_id, self._raw_before))
        left = len({(r.topic, r.key) for r in out})
        seen: set[tuple[str, bytes | None]] = set()
        for r in reversed(out):
            k = (r.topic, r.key)
            if k not in seen:
                seen.add(k)
                r.headers = [*(r.headers or ()), item]
                left -= 1
                if not left:
                    break


def observe_exchange_to_processed(exchange_ts_by_topic: dict[str, list[int]], now_s: float) -> None:
    """Venue time -> processed latency per record, labelled by the processed topic's exchange
    and market (processed.<market>.<domain>.<type>.<exchange>)."""
    for topic, stamps in exchange_ts_by_topic.items():
        parts = topic.split(".")
        delays = np.maximum(0.0, now_s - np.asarray(stamps, dtype=np.int64) / 1e6)
        observe_many(metrics.EXCHANGE_TO_PROCESSED.labels(parts[-1], parts[1]), delays)


def observe_many(hist, values: np.ndarray) -> None:
    """`hist.observe(v)` for each of `values`, with one lock round per bucket touched instead
    of two per value (a prometheus_client observe cost ~1.4 µs, the normalizer's per-event
    histogram ~5 % of its CPU). The same buckets (the first upper bound >= the value) and sum;
    a client without the attributes this relies on gets the plain loop."""
    bounds, buckets, total = (getattr(hist, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:
        for v in values.tolist():
            hist.observe(v)
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds, dtype=float), values, side="left"), minlength=len(bounds))
    total.inc(float(values.sum()))
    for i, c in enumerate(counts.tolist()):
        if c:
            buckets[i].inc(c)


def build_catalog(
    cache_path: str | None,
    base_urls: dict[tuple[Exchange, Market], str] | None = None,
    venues: list[tuple[Exchange, Market]] | None = None,
) -> tuple[InstrumentCatalog, Callable]:
    """Catalog from the JSON cache (if any), plus a refresher that fetches a venue's exchange
    info (from `base_urls`, e.g. the replay emulator) and rewrites the cache."""
    cat = InstrumentCatalog.load(cache_path) if cache_path and os.path.exists(cache_path) else InstrumentCatalog()

    def refresh(ex: Exchange, mk: Market) -> int:
        url = (base_urls or {}).get((ex, mk))
        n = cat.add(fetch_instruments(ex, mk, url))
        if cache_path:
            cat.save(cache_path)
        return n

    for ex, mk in venues or []:
        if not any(r.exchange == ex.value and r.market == mk.value for r in cat):
            refresh(ex, mk)
    return cat, refresh


def input_topics_for(exchanges: list[str] | None, markets: list[str] | None) -> list[str]:
    exs = tuple(Exchange(e) for e in exchanges) if exchanges else tuple(Exchange)
    mks = tuple(Market(m) for m in markets) if markets else tuple(Market)
    return all_event_topics(Stage.RAW, exchanges=exs, markets=mks)


#: Comma-separated EXCHANGE:MARKET=URL exchange-info roots used when the settings give none
#: (`ticklake up --replay` points reference data at its emulator this way, because the
#: supervisor launches the normalizer without run config).
EXCHANGE_INFO_ENV = "TICKLAKE_EXCHANGE_INFO_URLS"


class NormalizerSettings(LoopSettings):
    """The normalizer's settings: the Dagster run config (pipelines/services/processors.py)
    and the `python -m streaming.processors.normalizer` options (runtime/service_cli.py)."""

    exchanges: list[str] = []
    """Limit to these exchanges (empty: all)."""
    markets: list[str] = []
    """Limit to these markets (empty: all)."""
    instruments_cache: str = ""
    """JSON instrument cache (default $TICKLAKE_HOME/instruments.json); refreshed on unknown symbols."""
    exchange_info_urls: list[str] = Field(default_factory=list, json_schema_extra={"cli": "--base-url"})
    """EXCHANGE:MARKET=URL roots for exchange-info (e.g. the replay emulator); default the live venues."""
    group_id: str = "ticklake-normalizer"
    """Consumer group (the feature processor's upstream-progress check reads it)."""
    transactional_id: str = "ticklake-normalizer"
    dedup_span: int = DEFAULT_DEDUP_SPAN
    """Offsets per partition the event_id dedup window spans (also what a restart re-reads)."""
    batch_max_ms: int = 200


def exchange_info_urls(items: list[str]) -> dict[tuple[Exchange, Market], str]:
    """EXCHANGE:MARKET=URL items (the settings', else $TICKLAKE_EXCHANGE_INFO_URLS) by venue."""
    items = items or [u for u in os.environ.get(EXCHANGE_INFO_ENV, "").split(",") if u]
    out = {}
    for item in items:
        venue, _, url = item.partition("=")
        ex, _, mk = venue.partition(":")
        out[(Exchange(ex), Market(mk))] = url
    return out


def normalizer_from_settings(
    conn: kc.KafkaConnection, settings: NormalizerSettings, *, default_cache: str = ""
) -> NormalizerService:
    """The service a Dagster run (default_cache: the home's) and the standalone entry both run."""
    cache = settings.instruments_cache or default_cache
    if not cache:
        raise SystemExit("normalizer: give --instruments-cache (the JSON instrument cache to read and refresh)")
    catalog, refresh = build_catalog(cache, exchange_info_urls(settings.exchange_info_urls))
    log.info("instrument catalog: %d instruments from %s", len(catalog), cache)
    return NormalizerService(
        conn,
        Normalizer(catalog, dedup_span=settings.dedup_span, refresh=refresh),
        input_topics_for(settings.exchanges or None, settings.markets or None),
        group_id=settings.group_id,
        transactional_id=settings.transactional_id,
        batch_max_ms=settings.batch_max_ms,
    )


main = service_main(
    __name__, NormalizerSettings, lambda conn, _a, s: normalizer_from_settings(conn, s), service=NormalizerService.name
)


if __name__ == "__main__":
    sys.exit(main())

"""What every venue adapter shares: exact number parsing, per-instrument scales and book
state, envelope construction, and the "never raise out of on_frame" wrapper.

Venue modules keep only their protocol rules; the sync bookkeeping that ``ticklake capture
verify`` reports (snapshots, applied/stale deltas, gaps, resyncs, crossed books, BBO and
checksum checks) lives here in one place so every venue counts the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from collectors.exchanges.base import DeadLetter, FrameResult, RestRequest, Resync, Send
from collectors.exchanges.registry import parse_exchange_info
from orderbook import L2Book
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import event_id_from, id_head, stamp_event_id
from schemas.instruments import InstrumentDataError, InstrumentRef, by_native
from schemas.model import EventType, Exchange, Market
from schemas.scaled import INT64_MAX, MAX_ABS_FUNDING_RATE, RATE_SCALE, ScaleError, to_scaled
from schemas.symbols import Instrument, SymbolError, parse_native

try:  # orjson parses venue frames ~4x faster than the stdlib; the stdlib is the fallback.
    import orjson as _orjson

    #: bound directly, not wrapped: one Python call less on every frame of every venue
    loads: Callable[[bytes | str], Any] = _orjson.loads

    JSON_DECODE_ERRORS: tuple[type[Exception], ...] = (_orjson.JSONDecodeError, ValueError, TypeError)
except ImportError:  # pragma: no cover - depends on the environment

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    JSON_DECODE_ERRORS = (ValueError, TypeError)


def put_levels(levels: Any, pairs: Iterable[tuple[int, int]]) -> None:
    """Append (px, qty) pairs to a repeated Level field of a book event. add() then attribute
    sets: ~25% cheaper than add(px=, qty=) on upb."""
    add = levels.add
    for px, q in pairs:
        lv = add()
        lv.px = px
        lv.qty = q


def frame_object(frame: bytes | str) -> dict:
    """A venue frame decoded: every venue's data frames are JSON objects, so anything else is
    refused with the same reason whichever venue sent it."""
    try:
        msg = loads(frame)
    except JSON_DECODE_ERRORS as e:
        raise FrameError(f"malformed JSON: {e}") from None
    if type(msg) is not dict:
        raise FrameError(f"unexpected JSON {type(msg).__name__}, expected an object")
    return msg


_POW10 = tuple(10**i for i in range(19))
_LIST_TYPE = {list}
_TWO = {2}
_ZEROS = tuple("0" * i for i in range(64))

SIDE_BUY = pb.SIDE_BUY
SIDE_SELL = pb.SIDE_SELL
EVENT_TRADE = EventType.TRADE.pb
EVENT_BOOK_SNAPSHOT = EventType.BOOK_SNAPSHOT.pb
EVENT_BOOK_DELTA = EventType.BOOK_DELTA.pb
EVENT_FUNDING = EventType.FUNDING.pb
EVENT_MARK_PRICE = EventType.MARK_PRICE.pb
EVENT_LIQUIDATION = EventType.LIQUIDATION.pb
EVENT_TICKER = EventType.TICKER.pb
REASON_INITIAL = pb.SNAPSHOT_REASON_INITIAL
REASON_RESYNC = pb.SNAPSHOT_REASON_RESYNC
REASON_VENUE = pb.SNAPSHOT_REASON_VENUE
REASON_PERIODIC = pb.SNAPSHOT_REASON_PERIODIC
_ENVELOPE_FROM = pb.Envelope.FromString


class FrameError(Exception):
    """A frame we refuse; becomes a DeadLetter with this message as the reason."""

    def __init__(self, reason: str, native_symbol: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.native_symbol = native_symbol


class NotSubscribed(FrameError):
    """A frame about an instrument this adapter was not asked to collect: no state is made for
    it (a venue -- or a corrupt frame -- naming 20,000 symbols must not grow memory)."""


# -- numbers -----------------------------------------------------------------------------------


def parse_scaled(text: str, scale: int) -> int:
    """Venue decimal string -> scaled int, exact or ScaleError (never rounds, never negative).

    Fast path for the plain ``digits.digits`` strings venues send; anything else (exponents,
    signs, too many decimals) goes through ``schemas.scaled.to_scaled``, which decides.
    """
    if type(text) is not str:
        raise ScaleError(f"expected a decimal string, got {type(text).__name__} {text!r}")
    i = len(text) - 1 - scale
    if i > 0 and text[i] == ".":  # exactly `scale` decimals, as venues print a feed
        t = text.replace(".", "", 1)
        if t.isdigit() and t.isascii():  # [0-9] only: no sign, blank, "_" or second point
            v = int(t)
            if v <= INT64_MAX:
                return v
        return to_scaled(text, scale)  # decides (and refuses) the odd ones
    if text.isdigit() and text.isascii():  # an integer (USD-M sizes at scale 0): no "." to find
        v = int(text) * _POW10[scale]
        if v <= INT64_MAX:
            return v
        return to_scaled(text, scale)  # refuses it
    i = text.find(".")
    if i > 0:
        extra = len(text) - i - 1 - scale  # decimals beyond the scale
        if "_" not in text:
            if extra <= 0:
                body, mul = text, _POW10[-extra]
            elif extra < 64 and text.endswith(_ZEROS[extra]):  # padded: "61737.63000000" at scale 2
                body, mul = text[:-extra], 1
            else:
                return to_scaled(text, scale)  # raises: needs more precision
            try:
                v = int(body.replace(".", "", 1)) * mul
            except ValueError:
                raise ScaleError(f"not a decimal number: {text!r}") from None
            if 0 <= v <= INT64_MAX:
                return v
    elif i < 0 and text.isdigit() and text.isascii():
        v = int(text) * _POW10[scale]
        if v <= INT64_MAX:
            return v
    return to_scaled(text, scale)


def decimals(text: str) -> int:
    """Decimals a value needs as written ("0.35130000" -> 8, "30316" -> 0, "1e-5" -> 5)."""
    if type(text) is not str:
        raise ScaleError(f"expected a decimal string, got {type(text).__name__} {text!r}")
    if "e" in text or "E" in text:
        mant, _, exp = text.lower().partition("e")
        frac = mant.partition(".")[2]
        try:
            return max(0, len(frac) - int(exp))
        except ValueError:
            raise ScaleError(f"not a decimal number: {text!r}") from None
    i = text.find(".")
    return 0 if i < 0 else len(text) - i - 1


def significant_decimals(text: Any) -> int:
    """Decimals a value needs to be exact ("28560.00" -> 0, "11851.86949091" -> 8): trailing
    zeros carry no precision, so they must not widen a scale (a mark price printed with 18
    decimals of padding would otherwise not fit int64 at scale 18)."""
    if type(text) is not str:
        raise ScaleError(f"expected a decimal string, got {type(text).__name__} {text!r:.40}")
    if "e" in text or "E" in text:
        return decimals(text)
    i = text.find(".")
    return 0 if i < 0 else len(text[i + 1 :].rstrip("0"))


#: the largest millisecond timestamp whose µs fit int64
MAX_MS = INT64_MAX // 1000


def funding_rate(text: Any, native: str) -> int:
    """A venue funding rate at RATE_SCALE, refused beyond ±MAX_ABS_FUNDING_RATE (10 %): venue
    caps are a few percent, so a rate of 150 % is a corrupt value, not a market."""
    try:
        r = to_scaled(text, RATE_SCALE, signed=True)
    except ScaleError as e:
        raise FrameError(f"funding rate: {e}", native) from None
    if abs(r) > MAX_ABS_FUNDING_RATE:
        raise FrameError(f"funding rate {text!r:.40} beyond ±10 %", native)
    return r


def ms_to_us(value: Any) -> int:
    """Venue millisecond timestamp (int or numeric string) -> µs, within int64."""
    if type(value) is int:
        v = value
    elif type(value) is str and value.isdigit() and value.isascii():
        v = int(value)
    else:
        raise FrameError(f"bad millisecond timestamp {value!r:.80}")
    if not 0 <= v <= MAX_MS:
        raise FrameError(f"millisecond timestamp {value!r:.40} out of range")
    return v * 1000


def as_int(value: Any, what: str, lo: int = 0) -> int:
    """A venue id/sequence number (int or integer string) in lo..INT64_MAX: the envelope's
    fields are int64, and venue ids are never negative (lo=-1 where -1 means "none")."""
    if type(value) is int:
        v = value
    elif type(value) is str and value.lstrip("-").isdigit() and value.isascii() and len(value) < 40:
        v = int(value)
    else:
        raise FrameError(f"bad {what} {value!r:.80}")
    if not lo <= v <= INT64_MAX:
        raise FrameError(f"{what} {v} out of range")
    return v


def opt_seq(value: Any, what: str) -> int:
    """An optional venue sequence field: absent or not an integer -> 0 ("none"), else in range."""
    if type(value) is not int:
        return 0
    if not 0 <= value <= INT64_MAX:
        raise FrameError(f"{what} {value} out of range")
    return value


def text_id(value: Any, what: str, limit: int = 64) -> str:
    """A venue id or status carried as text (trade id, order status): short, not a structure."""
    if type(value) is int:
        return str(value)
    if type(value) is not str or len(value) > limit:
        raise FrameError(f"bad {what} {value!r:.80}")
    return value


class ScaleTracker:
    """The scale of one family of values (book/trade prices, sizes, mark prices) of one instrument.

    Known from exchange info -> locked from the start. Otherwise it is inferred from the
    decimal strings seen: it may grow until the first book snapshot locks it (so a trade
    printed as "30236" before the book arrived cannot pin the scale to 0), and once locked a
    value that needs more decimals is refused (dead-lettered) rather than rounded.
    """

    __slots__ = ("scale", "locked", "cache")

    #: converted strings remembered per tracker: venues repeat price and size strings a lot,
    #: and a dict hit is several times cheaper than converting. 16k entries (~2 MB) caught 66%
    #: of BTCUSDT diff prices over 6 minutes (75% unbounded); bounded because a shard holds
    #: hundreds of instruments. Cleared whenever the scale changes, and when full.
    CACHE_MAX = 16_384

    def __init__(self, scale: int | None = None) -> None:
        self.scale = 0 if scale is None else scale
        self.locked = scale is not None
        self.cache: dict[str, int] = {}

    def fit(self, values) -> int:
        """Scale to use for ``values`` (an iterable of decimal strings)."""
        if not self.locked:
            need = self.scale
            for v in values:
                d = decimals(v)
                if d > need:
                    need = d
            if need > 18:
                raise ScaleError(f"a value needs {need} decimals (max 18)")
            if need != self.scale:
                self.scale = need
                self.cache.clear()
        return self.scale

    def lock(self, values=()) -> int:
        if not self.locked:
            self.fit(values)
            self.locked = True
        return self.scale

    def restore(self, scale: int, locked: bool) -> None:
        """Back to an earlier state (a refused frame must not leave its scale behind)."""
        if scale != self.scale:
            self.scale = scale
            self.cache.clear()
        self.locked = locked

    def conv(self, text: str) -> int:
        """``text`` at this scale (exact, cached); ScaleError when it does not fit."""
        cache = self.cache
        try:
            v = cache.get(text)
        except TypeError:
            raise ScaleError(f"expected a decimal string, got {type(text).__name__}") from None
        if v is None:
            v = parse_scaled(text, self.scale)
            if len(cache) >= self.CACHE_MAX:
                cache.clear()
            cache[text] = v
        return v


_CACHE_MAX = ScaleTracker.CACHE_MAX  # read per book message (levels): a global, not a class lookup


# -- per-instrument state -----------------------------------------------------------------------


@dataclass(slots=True)
class BookStats:
    """Per-instrument sync counters (what `ticklake capture verify` prints)."""

    snapshots: int = 0
    deltas_applied: int = 0
    deltas_stale: int = 0
    gaps: int = 0
    resyncs: int = 0
    crossed: int = 0
    bbo_checked: int = 0
    bbo_mismatched: int = 0
    checksum_ok: int = 0
    checksum_bad: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class InstrumentState:
    """Everything an adapter keeps for one instrument on one connection set."""

    __slots__ = (
        "native",
        "inst",
        "market",
        "market_pb",
        "symbol",
        "px",
        "sz",
        "mark_floor",
        "book",
        "stats",
        "next_reason",
        "awaiting",
        "buffer",
        "bbo",
        "first_after_snapshot",
        "ticker",
        "levels_str",
        "topic",
        "snapshot_requests",
        "prefixes",
    )

    def __init__(self, native: str, inst: Instrument, spec: InstrumentRef | None) -> None:
        self.native = native
        self.inst = inst
        self.market = inst.market
        self.market_pb = inst.market.pb
        self.symbol = inst.canonical
        ps = spec.price_scale if spec else None
        ss = spec.size_scale if spec else None
        self.px = ScaleTracker(ps)
        self.sz = ScaleTracker(ss)
        #: least scale of mark/index/settle prices; each message may need more (aux_prices)
        self.mark_floor = ps or 0
        self.book = L2Book()
        self.stats = BookStats()
        self.next_reason = REASON_INITIAL  # reason the next applied snapshot is published with
        self.awaiting = False  # a snapshot was requested / resubscribed, not yet applied
        self.buffer: list[Any] = []  # venue deltas held until the snapshot arrives (Binance)
        self.bbo: dict[int, tuple[int, int, int, int]] = {}  # update id -> venue BBO (for checks)
        self.first_after_snapshot = False
        self.ticker: dict[str, Any] | None = None  # last full ticker (Bybit delta merge)
        self.levels_str: tuple[dict[int, tuple[str, str]], dict[int, tuple[str, str]]] | None = None
        self.topic = ""  # venue book topic/channel, for resubscribe-style resyncs
        self.snapshot_requests = 0
        #: (event type, price scale, size scale, shard) -> (wire bytes of the envelope fields
        #: fixed for them, event-id head): see AdapterBase.envelope
        self.prefixes: dict[tuple[int, int, int, str], tuple[bytes, bytes]] = {}


def _tracked_value(st: InstrumentState, text: Any, tr: ScaleTracker, what: str) -> int:
    """One decimal string of ``st`` as a scaled int: the scale widens to fit it until the
    tracker is locked; past that, a value with more decimals refuses the frame."""
    if not tr.locked:
        tr.fit((text,))
    try:
        return tr.conv(text)
    except ScaleError as e:
        raise FrameError(f"precision: {e} ({st.native} {what} scale fixed at {tr.scale})", st.native) from None


class AdapterBase:
    """Shared plumbing; subclasses implement ``_handle(frame, recv_ts_us, out)``."""

    exchange: Exchange
    market: Market
    #: emitted BOOK_SNAPSHOT events carry at most this many levels per side
    snapshot_depth = 2000
    #: remembered venue BBO frames per instrument, for checks against the rebuilt book
    bbo_memory = 512

    def __init__(
        self,
        *,
        shard: str = "",
        instruments: dict[str, InstrumentRef] | None = None,
        snapshot_depth: int | None = None,
        subscribed: Iterable[str] | None = None,
    ) -> None:
        self.shard = shard
        self.specs: dict[str, InstrumentRef] = dict(instruments or {})
        #: venue symbols this adapter collects; None = any (capture replay)
        self.subscribed: frozenset[str] | None = frozenset(subscribed) if subscribed is not None else None
        #: states read by the current frame -> their scale trackers before it (see on_frame)
        self._touched: dict[InstrumentState, tuple[int, bool, int, bool]] = {}
        #: the book the current frame updates, once known (see on_frame)
        self._book_st: InstrumentState | None = None
        self.states: dict[str, InstrumentState] = {}
        self.ignored: dict[str, int] = {}  # frames understood but deliberately not published
        self.dead_letter_count = 0
        self.frames = 0
        self.last_rx_us = 0
        if snapshot_depth is not None:
            self.snapshot_depth = snapshot_depth
        self._ex_pb = self.exchange.pb

    # -- public API beyond the VenueAdapter protocol -------------------------------------------

    def on_frame(self, frame: bytes | str, recv_ts_us: int) -> FrameResult:
        """Parse one frame; a refused frame comes back as a DeadLetter, never as an exception.

        A frame is all or nothing. Its events are published only if the whole frame is
        accepted; scales it would have widened are put back; and a refused frame of a synced
        book means the venue's update is lost to us, so that symbol resyncs: the published
        deltas must always rebuild the collector's book."""
        out = FrameResult()
        self.frames += 1
        self.last_rx_us = recv_ts_us
        if self._touched:  # empty after frames whose fast paths took no state (aggTrade)
            self._touched.clear()
        self._book_st = None
        try:
            self._handle(frame, recv_ts_us, out)
        except FrameError as e:
            return self._refuse(out, e.reason, frame, e.native_symbol)
        except ScaleError as e:
            return self._refuse(out, f"precision: {e}", frame, "")
        except Exception as e:  # a bug or an unforeseen shape: keep the frame, keep running
            return self._refuse(out, f"unexpected {type(e).__name__}: {e}"[:500], frame, "")
        return out

    def _refuse(self, out: FrameResult, reason: str, frame: bytes | str, native: str) -> FrameResult:
        for st, (ps, pl, ss, sl) in self._touched.items():
            st.px.restore(ps, pl)
            st.sz.restore(ss, sl)
        st = self._book_st
        if st is not None and st.book.synced:
            self.lost_update(st, f"refused frame: {reason}"[:300], out)
        return self._dead(out, reason, frame, native or (st.native if st is not None else ""))

    def ws_urls(self, base_url: str, native_symbols: list[str]) -> list[str]:
        """Every connection URL for these symbols (venue-specific)."""
        raise NotImplementedError

    def ws_url(self, base_url: str, native_symbols: list[str]) -> str:
        return self.ws_urls(base_url, native_symbols)[0]

    def lost_update(self, st: InstrumentState, reason: str, out: FrameResult) -> None:
        """Resync ``st`` after a refused frame of its synced book (by default by subscribing
        its book again; Binance fetches a REST snapshot instead)."""
        self.resubscribe(st, reason, out, True)

    def book_subscription(self, st: InstrumentState) -> Any:
        """The subscribe argument of ``st``'s book, for venues that resend a snapshot on subscribe."""
        raise NotImplementedError

    def liquidation_state(self, native: Any) -> InstrumentState | None:
        """The state of a liquidation's instrument; None (counted as ignored) for one the shard
        does not collect: the venues' liquidation streams report every instrument (Binance
        !forceOrder@arr, Bybit allLiquidation, OKX liquidation-orders per instType)."""
        try:
            return self.state(native)
        except NotSubscribed:
            self._ignore("liquidation:not_subscribed")
            return None

    def subscribe_all(self, native_symbols: list[str], args: list, per_request: int, out: FrameResult) -> None:
        """A new connection of a venue that pushes a book snapshot on subscribe (Bybit, OKX):
        subscribe ``args`` in requests of at most ``per_request``; a book already synced gets a
        fresh snapshot, which consumers must take as replacing theirs (RESYNC)."""
        for i in range(0, len(args), per_request):
            out.sends.append(Send(dump({"op": "subscribe", "args": args[i : i + per_request]})))
        for s in native_symbols:
            st = self.states.get(s)
            if st is not None and st.book.synced:
                st.next_reason = REASON_RESYNC

    def resubscribe(self, st: InstrumentState, reason: str, out: FrameResult, gap: bool) -> None:
        """Drop ``st``'s book and subscribe it again: Bybit and OKX answer a subscribe with a
        fresh snapshot, so that is their whole rebuild."""
        self.start_resync(st, reason, out, gap)
        arg = self.book_subscription(st)
        out.sends.append(Send(dump({"op": "unsubscribe", "args": [arg]})))
        out.sends.append(Send(dump({"op": "subscribe", "args": [arg]})))

    def await_snapshot(self, st: InstrumentState, reason: str, out: FrameResult) -> None:
        """A delta for a book that has no snapshot is dropped (Bybit, OKX): the first one
        resubscribes, which brings a snapshot; the ones after it wait for that snapshot."""
        if not st.awaiting:
            self.resubscribe(st, reason, out, True)
        else:
            st.stats.deltas_stale += 1  # waiting for the resubscribe snapshot

    def crossed_by_delta(self, st: InstrumentState, reason: str, applied: str, out: FrameResult) -> FrameError:
        """A delta crossed the book (Bybit, OKX), so it is no longer the venue's: counted and
        resubscribed; returns the error the frame fails with (the caller raises it)."""
        book = st.book
        st.stats.crossed += 1
        bb, ba = book.best_bid_px(), book.best_ask_px()
        self.resubscribe(st, reason, out, False)
        return FrameError(f"crossed book after {applied}: best bid {bb} >= best ask {ba}", st.native)

    def set_instruments(self, specs: dict[str, InstrumentRef]) -> None:
        """Exchange info arrived: future states use it (existing states keep their locks)."""
        self.specs.update(specs)

    def load_instruments(self, body: bytes | str, out: FrameResult, *, category: str | None = None) -> None:
        """An exchange-info body of this venue: parse it with the one shared parser
        (collectors/exchanges/registry.py), so the raw events' scales follow the same rule as the
        normalizer's catalog. A body without the documented shape is a dead letter; single
        unusable entries are left out and counted (the other instruments still get scales)."""
        rejects: list[str] = []
        try:
            refs = parse_exchange_info(self.exchange, self.market, body, category=category, rejects=rejects)
        except Exception as e:  # InstrumentDataError, or anything unforeseen: never out of shard start
            what = str(e) if isinstance(e, InstrumentDataError) else f"unexpected {type(e).__name__}: {e}"
            raw = body.encode() if isinstance(body, str) else bytes(body)
            self.dead_letter_count += 1
            out.dead_letters.append(DeadLetter(reason=f"instruments: {what}"[:1000], raw=raw))
            return
        for _ in rejects:
            self._ignore("instrument entry unusable")
        self.set_instruments(by_native(refs))

    def book_stats(self) -> dict[str, BookStats]:
        return {n: s.stats for n, s in self.states.items()}

    def book(self, native: str) -> L2Book | None:
        st = self.states.get(native)
        return st.book if st else None

    def snapshot_events(self, recv_ts_us: int, reason: int = REASON_PERIODIC) -> list[pb.Envelope]:
        """BOOK_SNAPSHOT of every synced book (periodic snapshots for late-joining consumers)."""
        return [
            self.snapshot_event(st, reason, st.book.exchange_ts, recv_ts_us)
            for st in self.states.values()
            if st.book.synced
        ]

    # -- helpers for subclasses ----------------------------------------------------------------

    def _dead(self, out: FrameResult, reason: str, frame: bytes | str, native: str) -> FrameResult:
        raw = frame.encode() if isinstance(frame, str) else bytes(frame)
        self.dead_letter_count += 1
        # Events produced before the failure are dropped: a frame is published whole or not at all.
        return FrameResult(
            dead_letters=[DeadLetter(reason=reason, raw=raw, native_symbol=native)],
            requests=out.requests,
            sends=out.sends,
            resyncs=out.resyncs,
            reconnect=out.reconnect,
        )

    def _ignore(self, what: str) -> None:
        self.ignored[what] = self.ignored.get(what, 0) + 1

    def market_of(self, native: str) -> Market:
        return self.market

    def state(self, native: str) -> InstrumentState:
        if type(native) is not str:
            raise FrameError(f"symbol is not a string: {native!r:.80}")
        st = self.states.get(native)
        if st is None:
            if self.subscribed is not None and native not in self.subscribed:
                raise NotSubscribed(f"not subscribed: {native[:40]!r}", native[:40])
            spec = self.specs.get(native)
            try:
                market = self.market_of(native)
                inst = parse_native(
                    self.exchange, market, native, base=spec.base if spec else None, quote=spec.quote if spec else None
                )
            except SymbolError as e:
                raise FrameError(f"unknown instrument: {e}"[:300], native[:40]) from None
            st = self.states[native] = InstrumentState(native, inst, spec)
        t = self._touched
        if st not in t:
            t[st] = (st.px.scale, st.px.locked, st.sz.scale, st.sz.locked)
        return st

    def envelope(
        self,
        st: InstrumentState,
        event_type: int,
        exchange_ts: int,
        ingest_ts: int,
        seq: int,
        price_scale: int,
        size_scale: int,
    ) -> pb.Envelope:
        """A new envelope with its header set. The fields fixed per instrument, event type and
        scales are parsed from cached wire bytes in one C call, cheaper than eight attribute
        sets on every event (bench/bench_parse.py); the message is the same."""
        key = (event_type, price_scale, size_scale, self.shard)
        pre = st.prefixes.get(key)
        if pre is None:
            pre = self._prefix(st, key)
        env = _ENVELOPE_FROM(pre[0])
        env.exchange_ts = exchange_ts
        env.ingest_ts = ingest_ts
        env.seq = seq
        return env

    def _prefix(self, st: InstrumentState, key: tuple[int, int, int, str]) -> tuple[bytes, bytes]:
        event_type, price_scale, size_scale, shard = key
        env = pb.Envelope()
        env.exchange = self._ex_pb
        env.market = st.market_pb
        env.event_type = event_type
        env.symbol = st.symbol
        env.native_symbol = st.native
        env.price_scale = price_scale
        env.size_scale = size_scale
        if shard:
            env.shard = shard
        if len(st.prefixes) >= 64:  # scales still growing (no exchange info): keep it bounded
            st.prefixes.clear()
        pre = st.prefixes[key] = (env.SerializeToString(), id_head(self._ex_pb, st.market_pb, st.symbol, event_type))
        return pre

    def seal(
        self,
        st: InstrumentState,
        env: pb.Envelope,
        payload: Any,
        event_type: int,
        exchange_ts: int,
        seq: int,
        price_scale: int,
        size_scale: int,
    ) -> pb.Envelope:
        """``stamp`` for the hot handlers, which hold the identity fields in locals: the same id
        (schemas.ids.event_id_from) without reading them back from the message. ``exchange_ts``
        is 0 when the envelope's time is a receipt stand-in. The payload's plain serialization
        is the deterministic one: payload messages have no map fields (tests/test_event_ids)."""
        env.event_id = event_id_from(
            st.prefixes[(event_type, price_scale, size_scale, self.shard)][1],
            exchange_ts,
            seq,
            price_scale,
            size_scale,
            payload.SerializeToString(),
        )
        return env

    stamp = staticmethod(stamp_event_id)

    # -- events every venue fills the same way (the venue module reads and checks the fields) --

    def trade_event(
        self,
        st: InstrumentState,
        ts: int,
        recv: int,
        seq: int,
        trade_id: str,
        px: int,
        qty: int,
        taker_buys: bool,
        first_id: int = 0,
        last_id: int = 0,
    ) -> pb.Envelope:
        """A TRADE at the instrument's current scales; ``first_id``/``last_id`` only for
        aggregated trades (Binance aggTrade). ``envelope`` + ``seal`` written out here, with
        one prefix lookup for both: 0.25 µs less per trade, ~5 % of an aggTrade frame (every
        trade of every venue passes here; same bytes, same id: tests/test_event_ids.py)."""
        ps, ss = st.px.scale, st.sz.scale
        key = (EVENT_TRADE, ps, ss, self.shard)
        pre = st.prefixes.get(key)
        if pre is None:
            pre = self._prefix(st, key)
        env = _ENVELOPE_FROM(pre[0])
        env.exchange_ts = ts
        env.ingest_ts = recv
        env.seq = seq
        tr = env.trade
        tr.trade_id = trade_id
        tr.px = px
        tr.qty = qty
        tr.taker_side = SIDE_BUY if taker_buys else SIDE_SELL
        tr.first_trade_id = first_id
        tr.last_trade_id = last_id
        env.event_id = event_id_from(pre[1], ts, seq, ps, ss, tr.SerializeToString())
        return env

    def liquidation_event(
        self, st: InstrumentState, ts: int, recv: int, order_buys: bool, px: int, qty: int, status: str = ""
    ) -> pb.Envelope:
        """A LIQUIDATION; ``order_buys`` is the side of the liquidation *order* (a liquidated
        long is sold)."""
        env = self.envelope(st, EVENT_LIQUIDATION, ts, recv, 0, st.px.scale, st.sz.scale)
        liq = env.liquidation
        liq.side = SIDE_BUY if order_buys else SIDE_SELL
        liq.px = px
        liq.qty = qty
        liq.order_status = status
        return self.stamp(env)

    def mark_event(
        self, st: InstrumentState, ts: int, recv: int, seq: int, scale: int, mark: int, index: int = 0, settle: int = 0
    ) -> pb.Envelope:
        """A MARK_PRICE at the mark/index price scale ``scale`` (see aux_prices)."""
        env = self.envelope(st, EVENT_MARK_PRICE, ts, recv, seq, scale, 0)
        m = env.mark_price
        m.mark_px, m.index_px, m.estimated_settle_px = mark, index, settle
        return self.stamp(env)

    def funding_event(
        self,
        st: InstrumentState,
        ts: int,
        recv: int,
        seq: int,
        scale: int,
        rate: int,
        next_ts: int,
        mark: int = 0,
        predicted: int = 0,
    ) -> pb.Envelope:
        """A FUNDING (rates scaled by RATE_SCALE; ``mark`` at price scale ``scale``)."""
        env = self.envelope(st, EVENT_FUNDING, ts, recv, seq, scale, 0)
        f = env.funding
        f.rate = rate
        f.next_funding_ts = next_ts
        f.predicted_rate = predicted
        f.mark_px = mark
        return self.stamp(env)

    def snapshot_event(
        self, st: InstrumentState, reason: int, exchange_ts: int, ingest_ts: int, checksum: int = 0
    ) -> pb.Envelope:
        book = st.book
        ps, ss = st.px.scale, st.sz.scale
        env = self.envelope(st, EVENT_BOOK_SNAPSHOT, exchange_ts, ingest_ts, book.seq, ps, ss)
        snap = env.book_snapshot
        n = self.snapshot_depth
        put_levels(snap.bids, book.top_bids(n))
        put_levels(snap.asks, book.top_asks(n))
        snap.depth = max(len(snap.bids), len(snap.asks))
        snap.reason = reason
        snap.checksum = checksum & 0xFFFFFFFF
        return self.seal(st, env, snap, EVENT_BOOK_SNAPSHOT, exchange_ts, book.seq, ps, ss)

    def delta_event(
        self,
        st: InstrumentState,
        bids: list[tuple[int, int]],
        asks: list[tuple[int, int]],
        exchange_ts: int,
        ingest_ts: int,
        seq: int,
        first_seq: int,
        prev_seq: int,
        checksum: int = 0,
    ) -> pb.Envelope:
        ps, ss = st.px.scale, st.sz.scale
        env = self.envelope(st, EVENT_BOOK_DELTA, exchange_ts, ingest_ts, seq, ps, ss)
        d = env.book_delta
        d.first_seq = first_seq
        d.prev_seq = prev_seq
        if checksum:
            d.checksum = checksum & 0xFFFFFFFF
        put_levels(d.bids, bids)
        put_levels(d.asks, asks)
        return self.seal(st, env, d, EVENT_BOOK_DELTA, exchange_ts, seq, ps, ss)

    def snapshot_levels(self, st: InstrumentState, raw_bids: Any, raw_asks: Any) -> tuple[list, list]:
        """A full book arrived: fix the instrument's scales from every level of both sides
        (unless exchange info fixed them) and convert the levels. All or nothing: a refused
        snapshot leaves the scales as they were. If a value seen earlier widened the
        not-yet-locked scale so far that this book overflows int64 at it, the book's own
        precision wins (one odd trade must not make every book unrepresentable)."""
        px, sz = st.px, st.sz
        saved = (px.scale, px.locked, sz.scale, sz.locked)
        try:
            if type(raw_bids) is not list or type(raw_asks) is not list:
                raise FrameError(f"snapshot levels of {st.native} are not lists", st.native)
            try:
                prices = [lv[0] for raw in (raw_bids, raw_asks) for lv in raw]
                sizes = [lv[1] for raw in (raw_bids, raw_asks) for lv in raw]
            except (IndexError, TypeError, KeyError):
                raise FrameError(f"malformed levels in snapshot of {st.native}", st.native) from None
            px.lock(prices)
            sz.lock(sizes)
            try:
                return self.levels(st, raw_bids), self.levels(st, raw_asks)
            except FrameError:
                if saved[1] and saved[3]:
                    raise
                px.restore(saved[0], saved[1])
                sz.restore(saved[2], saved[3])
                if not px.locked:
                    px.scale, px.cache = 0, {}
                    px.lock(prices)
                if not sz.locked:
                    sz.scale, sz.cache = 0, {}
                    sz.lock(sizes)
                return self.levels(st, raw_bids), self.levels(st, raw_asks)
        except (FrameError, ScaleError):
            px.restore(saved[0], saved[1])
            sz.restore(saved[2], saved[3])
            raise

    def levels(self, st: InstrumentState, raw: Any) -> list[tuple[int, int]]:
        """[[px, qty, ...], ...] strings -> [(px, qty)] at the instrument's scales."""
        if type(raw) is not list:
            raise FrameError(f"levels are not a list: {raw!r:.80}", st.native)
        px, sz = st.px, st.sz
        if not px.locked or not sz.locked:
            try:
                px.fit([lv[0] for lv in raw])
                sz.fit([lv[1] for lv in raw])
            except (IndexError, TypeError, KeyError):
                raise FrameError(f"malformed level in {raw!r:.120}", st.native) from None
        ps, ss = px.scale, sz.scale
        pc, qc = px.cache, sz.cache
        if len(pc) > _CACHE_MAX:
            pc.clear()
        if len(qc) > _CACHE_MAX:
            qc.clear()
        out: list[tuple[int, int]] = []
        append = out.append
        # Hot path of every book message: the cache lookups and the exact conversion of a miss
        # are inlined here (a call per value costs as much as the lookup).
        try:
            # Every level must be a list (a 2-character string would unpack into a "level");
            # checked in C over the whole side rather than per level in the loop.
            if raw and set(map(type, raw)) != _LIST_TYPE:
                raise TypeError
            if raw and len(raw[0]) == 2:  # [px, qty] (Binance, Bybit)
                # a level of another length fails to unpack (ValueError: malformed); one after
                # a refused value is found by the precision handler below, so it still wins
                for p, q in raw:
                    a = pc.get(p)
                    if a is None:
                        a = pc[p] = parse_scaled(p, ps)
                    b = qc.get(q)
                    if b is None:
                        b = qc[q] = parse_scaled(q, ss)
                    append((a, b))
            else:  # [px, qty, ...] (OKX: 4 fields)
                for lv in raw:
                    p = lv[0]
                    q = lv[1]
                    a = pc.get(p)
                    if a is None:
                        a = pc[p] = parse_scaled(p, ps)
                    b = qc.get(q)
                    if b is None:
                        b = qc[q] = parse_scaled(q, ss)
                    append((a, b))
            return out
        except ScaleError as e:  # (a ValueError: caught first)
            if len(raw[0]) == 2 and set(map(len, raw)) != _TWO:
                raise FrameError(f"malformed level in {raw!r:.120}", st.native) from None
            raise FrameError(
                f"precision: {e} (instrument {st.native} fixed at price scale {ps}, size scale {ss})", st.native
            ) from None
        except (IndexError, TypeError, KeyError, ValueError):
            raise FrameError(f"malformed level in {raw!r:.120}", st.native) from None

    def prepare(self, st: InstrumentState, prices: tuple = (), sizes: tuple = ()) -> None:
        """Settle unlocked scales over every value of a message before converting any, so all
        values in one envelope share one scale."""
        if not st.px.locked:
            st.px.fit([v for v in prices if v not in (None, "")])
        if not st.sz.locked:
            st.sz.fit([v for v in sizes if v not in (None, "")])

    def aux_prices(self, st: InstrumentState, *texts: Any) -> tuple[int, list[int]]:
        """Mark, index and settle prices of ONE message at one scale of their own: the
        instrument's tick scale, widened to what this message's values need.

        Venues publish these with more decimals than the tick (Binance USD-M markPrice
        "11851.86949091" on a 0.10 tick, Bybit indexPrice, OKX markPx), so locking them to
        the tick scale dead-letters them in production mode, and a scale that grows with
        what was seen makes one padded 18-decimal value widen it for the session and the
        same message hash differently on two connections. Per message, the scale depends
        on the message alone (deterministic event ids); "" / None -> 0 (absent)."""
        scale = st.mark_floor
        for t in texts:
            if t is None or t == "":
                continue
            try:
                d = significant_decimals(t)
            except ScaleError as e:
                raise FrameError(f"precision: {e}", st.native) from None
            if d > scale:
                scale = d
        if scale > 18:
            raise FrameError(f"precision: a mark/index price needs {scale} decimals (max 18)", st.native)
        out = []
        for t in texts:
            if t is None or t == "":
                out.append(0)
                continue
            try:
                out.append(parse_scaled(t, scale))
            except ScaleError as e:
                raise FrameError(f"precision: {e} ({st.native} mark/index scale {scale})", st.native) from None
        return scale, out

    def price(self, st: InstrumentState, text: Any, tracker: ScaleTracker | None = None) -> int:
        return _tracked_value(st, text, tracker or st.px, "price")

    def size(self, st: InstrumentState, text: Any) -> int:
        return _tracked_value(st, text, st.sz, "size")

    # -- book sync helpers shared by the venues -----------------------------------------------

    def apply_book_snapshot(
        self,
        st: InstrumentState,
        bids: list[tuple[int, int]],
        asks: list[tuple[int, int]],
        seq: int,
        exchange_ts: int,
        recv_ts_us: int,
        out: FrameResult,
        checksum: int = 0,
    ) -> None:
        book = st.book
        book.price_scale, book.size_scale = st.px.scale, st.sz.scale
        book.apply_snapshot(bids, asks, seq)
        book.exchange_ts = exchange_ts
        st.stats.snapshots += 1
        reason = st.next_reason
        # After the first one, a snapshot nobody asked for is the venue replacing the book.
        st.next_reason = REASON_VENUE
        st.awaiting = False
        st.first_after_snapshot = True
        out.events.append(self.snapshot_event(st, reason, exchange_ts, recv_ts_us, checksum))

    def start_resync(self, st: InstrumentState, reason: str, out: FrameResult, gap: bool) -> None:
        """Drop ONE instrument's book; the venue module adds the request/send that rebuilds it."""
        if gap:
            st.stats.gaps += 1
        st.stats.resyncs += 1
        st.book.clear()
        st.bbo.clear()
        st.next_reason = REASON_RESYNC
        st.awaiting = True
        st.levels_str = None
        out.resyncs.append(Resync(native_symbol=st.native, reason=reason))

    def check_crossed(self, st: InstrumentState) -> bool:
        if st.book.crossed():
            st.stats.crossed += 1
            return True
        return False

    def remember_bbo(
        self, st: InstrumentState, update_id: int, bid_px: int, bid_qty: int, ask_px: int, ask_qty: int
    ) -> None:
        """A venue BBO (Binance bookTicker, OKX bbo-tbt) tagged with the book update id it reflects."""
        bbo = st.bbo
        bbo[update_id] = (bid_px, bid_qty, ask_px, ask_qty)
        if len(bbo) > self.bbo_memory:
            del bbo[next(iter(bbo))]
        if st.book.synced and st.book.seq == update_id:
            self._compare_bbo(st, bbo.pop(update_id))

    def check_bbo_after_apply(self, st: InstrumentState) -> None:
        if st.bbo:
            hit = st.bbo.pop(st.book.seq, None)
            if hit is not None:
                self._compare_bbo(st, hit)
            # venue BBOs older than the book can no longer be matched (ids arrive in order)
            bbo, seq = st.bbo, st.book.seq
            while bbo:
                k = next(iter(bbo))
                if k >= seq:
                    break
                del bbo[k]

    def _compare_bbo(self, st: InstrumentState, venue: tuple[int, int, int, int]) -> None:
        st.stats.bbo_checked += 1
        bb, ba = st.book.best_bid(), st.book.best_ask()
        ours = (bb[0] if bb else 0, bb[1] if bb else 0, ba[0] if ba else 0, ba[1] if ba else 0)
        if ours != venue:
            st.stats.bbo_mismatched += 1


def rest_request(
    path: str, params: dict[str, str], *, weight: int, purpose: str = "snapshot", native_symbol: str = ""
) -> RestRequest:
    return RestRequest(
        path=path, params=tuple(params.items()), weight=weight, purpose=purpose, native_symbol=native_symbol
    )


def dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


__all__ = [
    "AdapterBase",
    "BookStats",
    "FrameError",
    "InstrumentState",
    "NotSubscribed",
    "ScaleTracker",
    "as_int",
    "decimals",
    "dump",
    "frame_object",
    "funding_rate",
    "loads",
    "ms_to_us",
    "opt_seq",
    "parse_scaled",
    "rest_request",
    "significant_decimals",
    "text_id",
]

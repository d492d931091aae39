"""Binance spot and USD-M futures: combined-stream frames and REST depth snapshots ->
canonical events, with each venue's documented local-book procedure.

Spot (``/api/v3/depth`` + ``<sym>@depth``): buffer diffs, fetch the snapshot, drop diffs
with ``u <= lastUpdateId``; the first kept diff must reach ``lastUpdateId + 1`` (``U <=
lastUpdateId + 1``), else the snapshot is older than the stream and is fetched again; then
a diff with ``u <= book id`` is stale and one with ``U > book id + 1`` is a gap.

USD-M (``/fapi/v1/depth`` + ``<sym>@depth``): drop diffs with ``u < lastUpdateId``; the
first applied one has ``U <= lastUpdateId <= u``; after that each diff's ``pu`` must equal
the previous diff's ``u``. Since 2026-04-23 fstream routes streams by path: depth,
bookTicker and trade on ``/public``, aggTrade, markPrice, forceOrder (and the rest) on
``/market``; an unrouted connection only gets ``/public`` streams, so ``ws_urls`` returns
one URL per route.

A gap, a crossed book or an unparseable diff resyncs only that symbol: its book is dropped,
the diff is buffered and a new REST snapshot requested; the snapshot that follows is
published with reason RESYNC. Reconnects do not reset books: the sequence rules decide (an
overlapping make-before-break connection just produces stale diffs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from collectors.exchanges import binance_venue as venue
from collectors.exchanges.base import DeadLetter, FrameResult, RestRequest
from collectors.exchanges.common import (
    EVENT_TICKER,
    JSON_DECODE_ERRORS,
    MAX_MS,
    AdapterBase,
    FrameError,
    InstrumentState,
    as_int,
    dump,
    frame_object,
    funding_rate,
    loads,
    ms_to_us,
    rest_request,
    text_id,
)
from schemas.model import Exchange, Market
from schemas.scaled import INT64_MAX, ScaleError

#: default hosts: the venue declaration (binance_venue.py) is the one place they are spelled
SPOT_WS = venue.SPOT.endpoints.ws
USDM_WS = venue.USDM.endpoints.ws

#: streams on fstream's /public route (high-frequency book data); everything else is /market
_USDM_PUBLIC = frozenset({"depth", "depth5", "depth10", "depth20", "bookTicker", "trade"})


def usdm_route(stream: str) -> str:
    """'public' or 'market' for a USD-M stream name such as 'btcusdt@depth@100ms'."""
    kind = stream[1:].split("@")[0] if stream.startswith("!") else stream.partition("@")[2].split("@")[0]
    return "public" if kind in _USDM_PUBLIC else "market"


def spot_depth_weight(limit: int) -> int:
    """REST weight of GET /api/v3/depth by limit (venue's published table)."""
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def usdm_depth_weight(limit: int) -> int:
    """REST weight of GET /fapi/v1/depth by limit."""
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


class Diff(NamedTuple):
    """A depth diff whose ids and time were checked when it arrived, so a buffered diff can
    never break the snapshot handler later (a string "u" once made it raise on every
    snapshot and the symbol stayed unsynced)."""

    U: int
    u: int
    pu: int | None
    ts_us: int | None
    bids: Any
    asks: Any


def snapshot_stream_ts(buffered: list, kept: list, recv: int) -> int:
    """The event time of a spot depth snapshot, which the venue does not send: the time of the
    stream position it stands for. Its book is the state just before the first diff kept after
    it (snapshot events sort before deltas of the same time), else the state after the newest
    buffered diff it covers; the receive time only when no buffered diff has a time. Never the
    receive time first: in a replay the collector receives at wall-clock time while the stream
    carries the capture's times, and a snapshot stamped "now" lands in another lake hour than
    its deltas, so the capture's hours have a book that never syncs (no mid, no labels)."""
    for d, _frame, _recv in kept:
        if d.ts_us is not None:
            return d.ts_us
    for d, _frame, _recv in reversed(buffered):
        if d.ts_us is not None:
            return d.ts_us
    return recv


class BinanceAdapter(AdapterBase):
    exchange = Exchange.BINANCE
    market = Market.SPOT
    usdm = False
    default_streams: tuple[str, ...] = ("depth@100ms", "trade", "bookTicker")
    max_streams_per_connection = 1024
    depth_path = venue.SPOT_DEPTH_PATH
    info_path = venue.SPOT_INFO_PATH

    def __init__(
        self,
        *,
        streams: tuple[str, ...] | None = None,
        depth_limit: int = 1000,
        max_buffer: int = 10_000,
        fetch_instruments: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.streams = tuple(streams or self.default_streams)
        self.depth_limit = depth_limit
        self.max_buffer = max_buffer
        self.fetch_instruments = fetch_instruments
        self._dispatch = {
            "depthUpdate": self._depth,
            "trade": self._trade,
            "aggTrade": self._agg_trade,
            "bookTicker": self._book_ticker,
            "24hrTicker": self._ticker24,
            "markPriceUpdate": self._mark_price,
            "forceOrder": self._force_order,
        }

    # -- connection plumbing ------------------------------------------------------------------

    def stream_names(self, native_symbols: list[str]) -> list[str]:
        return [f"{s.lower()}@{ch}" for s in native_symbols for ch in self.streams]

    def ws_urls(self, base_url: str, native_symbols: list[str]) -> list[str]:
        base = (base_url or SPOT_WS).rstrip("/")
        names = self.stream_names(native_symbols)
        n = self.max_streams_per_connection
        return [f"{base}/stream?streams=" + "/".join(names[i : i + n]) for i in range(0, len(names), n)]

    def on_open(self, native_symbols: list[str]) -> FrameResult:
        """Streams are in the URL; snapshots are requested when each symbol's first diff arrives
        (the documented order: open the stream, buffer, then fetch)."""
        out = FrameResult()
        if self.fetch_instruments:
            out.requests.append(self.instruments_request(native_symbols))
        return out

    def keepalive(self, now_us: int) -> FrameResult:
        return FrameResult()  # Binance pings with websocket control frames; the transport pongs

    def snapshot_request(self, st: InstrumentState) -> RestRequest:
        weight = usdm_depth_weight(self.depth_limit) if self.usdm else spot_depth_weight(self.depth_limit)
        st.snapshot_requests += 1
        return rest_request(
            self.depth_path,
            {"symbol": st.native, "limit": str(self.depth_limit)},
            weight=weight,
            native_symbol=st.native,
        )

    def instruments_request(self, native_symbols: list[str]) -> RestRequest:
        if self.usdm:
            return rest_request(self.info_path, {}, weight=1, purpose="instruments")
        return rest_request(self.info_path, {"symbols": dump(sorted(native_symbols))}, weight=20, purpose="instruments")

    # -- frames ----------------------------------------------------------------------------------

    def _handle(self, frame: bytes | str, recv: int, out: FrameResult) -> None:
        msg = frame_object(frame)
        data = msg.get("data")
        if data is None:
            if "result" in msg and "id" in msg:  # SUBSCRIBE/UNSUBSCRIBE acknowledgement
                self._ignore("ack")
                return
            if "code" in msg and "msg" in msg:
                raise FrameError(f"venue error {msg.get('code')}: {msg.get('msg')}")
            data = msg  # raw /ws/<stream> connection
        if type(data) is dict:  # the usual frame: dispatched here, one call less than _one
            e = data.get("e")
            fn = self._dispatch.get(e) if type(e) is str else None
            if fn is not None:
                fn(data, frame, recv, out)
                return
        elif type(data) is list:  # !markPrice@arr, !forceOrder@arr style
            for item in data:
                self._one(item, frame, recv, out)
            return
        self._one(data, frame, recv, out)

    def _one(self, data: Any, frame: bytes | str, recv: int, out: FrameResult) -> None:
        if type(data) is not dict:
            raise FrameError(f"unexpected payload {type(data).__name__}")
        e = data.get("e")
        if e is not None and type(e) is not str:
            raise FrameError(f"event type is not a string: {e!r:.60}")
        fn = self._dispatch.get(e) if e is not None else None
        if fn is not None:
            fn(data, frame, recv, out)
        elif e is None and "u" in data and "B" in data and "A" in data:
            self._book_ticker(data, frame, recv, out)  # spot bookTicker carries no "e"
        elif e in ("kline", "continuous_kline", "24hrMiniTicker", "depthSnapshot", "indexPriceUpdate"):
            self._ignore(e)
        elif e is None and "lastUpdateId" in data:
            self._ignore("partialDepth")  # <sym>@depth<N>: no symbol in the payload
        elif e == "serverShutdown" or (type(data.get("event")) is dict and data["event"].get("e") == "serverShutdown"):
            out.reconnect = "serverShutdown"
        else:
            raise FrameError(f"unknown message shape (e={e!r})")

    # -- order book -----------------------------------------------------------------------------

    def _depth(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        """A diff of a synced book whose ids and time are ints in range (the common case) goes
        straight to ``_apply``; anything else takes ``_depth_checked``, which decides and words
        the refusal or buffers the diff."""
        try:
            st = self.states[d["s"]]
            U, u, bids, asks = d["U"], d["u"], d["b"], d["a"]
            ts = d.get("T") or d["E"]
        except (KeyError, TypeError):  # missing field, unhashable symbol, unknown instrument
            self._depth_checked(d, frame, recv, out)
            return
        pu = d.get("pu")
        if not (
            type(U) is int
            and type(u) is int
            and type(ts) is int
            and 0 <= U <= u <= INT64_MAX
            and 0 <= ts <= MAX_MS
            and (pu is None or (type(pu) is int and -1 <= pu <= INT64_MAX))
            and st.book.synced
            and st.px.locked
            and st.sz.locked
        ):
            self._depth_checked(d, frame, recv, out)
            return
        # locked scales: nothing here changes them, so the frame leaves none to restore
        self._book_st = st  # refused from here on: this book lost a venue update
        self._apply(st, U, u, pu, ts * 1000, bids, asks, frame, recv, out)

    def _depth_checked(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        st = self.state(d.get("s"))
        self._book_st = st  # refused from here on: this book lost a venue update
        U, u = as_int(d.get("U"), "first update id U"), as_int(d.get("u"), "final update id u")
        if U > u:
            raise FrameError(f"first update id U={U} > final update id u={u}", st.native)
        pu = d.get("pu")
        if pu is not None:
            pu = as_int(pu, "previous final update id pu", lo=-1)
        ts = d.get("T") or d.get("E")
        diff = Diff(U, u, pu, ms_to_us(ts) if ts is not None else None, d.get("b"), d.get("a"))
        if not st.book.synced:
            self._buffer(st, diff, frame, recv, out)
            return
        self._apply_diff(st, diff, frame, recv, out)

    def lost_update(self, st: InstrumentState, reason: str, out: FrameResult) -> None:
        self._resync(st, reason, None, b"", 0, out, True)

    def _buffer(self, st: InstrumentState, d: Diff, frame: bytes | str, recv: int, out: FrameResult) -> None:
        buf = st.buffer
        buf.append((d, frame, recv))
        if len(buf) > self.max_buffer:
            # The snapshot is very late (or its answer was lost): keep the newest half and ask again.
            del buf[: len(buf) - self.max_buffer // 2]
            st.awaiting = False
        if not st.awaiting:
            st.awaiting = True
            out.requests.append(self.snapshot_request(st))

    def _resync(
        self,
        st: InstrumentState,
        reason: str,
        d: Diff | None,
        frame: bytes | str,
        recv: int,
        out: FrameResult,
        gap: bool,
    ) -> None:
        self.start_resync(st, reason, out, gap)
        st.buffer = [(d, frame, recv)] if d is not None else []
        out.requests.append(self.snapshot_request(st))

    def _apply_diff(self, st: InstrumentState, d: Diff, frame: bytes | str, recv: int, out: FrameResult) -> None:
        self._apply(st, d.U, d.u, d.pu, d.ts_us, d.bids, d.asks, frame, recv, out)

    def _apply(
        self,
        st: InstrumentState,
        U: int,
        u: int,
        pu: int | None,
        ts_us: int | None,
        raw_bids: Any,
        raw_asks: Any,
        frame: bytes | str,
        recv: int,
        out: FrameResult,
    ) -> None:
        """Apply one diff (the fields of a ``Diff``) to a synced book, enforcing the venue's
        continuity rule. Everything that can refuse the diff is checked before the book changes."""
        book = st.book
        last = book.seq
        if self.usdm:
            if st.first_after_snapshot:
                if u < last:
                    st.stats.deltas_stale += 1
                    return
                if U > last:
                    d = Diff(U, u, pu, ts_us, raw_bids, raw_asks)
                    self._resync(st, f"gap: first diff U={U} > lastUpdateId={last}", d, frame, recv, out, True)
                    return
            elif pu != last:
                if u <= last:
                    st.stats.deltas_stale += 1
                    return
                d = Diff(U, u, pu, ts_us, raw_bids, raw_asks)
                self._resync(st, f"gap: pu={pu} != previous u={last}", d, frame, recv, out, True)
                return
        else:
            if u <= last:
                st.stats.deltas_stale += 1
                return
            if U > last + 1:
                d = Diff(U, u, pu, ts_us, raw_bids, raw_asks)
                self._resync(st, f"gap: U={U} > previous u+1={last + 1}", d, frame, recv, out, True)
                return
        try:
            bids = self.levels(st, raw_bids)
            asks = self.levels(st, raw_asks)
        except FrameError as e:
            # The venue's update is lost to us, so the book is no longer the venue's.
            self._resync(st, f"unusable diff: {e.reason}", None, frame, recv, out, True)
            self._dead_in(out, e.reason, frame, st.native)
            return
        book.apply(bids, asks)
        if book.crossed():
            st.stats.crossed += 1
            bb, ba = book.best_bid_px(), book.best_ask_px()
            self._resync(st, f"crossed book after u={u}: bid {bb} >= ask {ba}", None, frame, recv, out, False)
            self._dead_in(out, f"crossed book after applying u={u}: best bid {bb} >= best ask {ba}", frame, st.native)
            return
        book.seq = u
        book.exchange_ts = ts_us if ts_us is not None else recv
        st.first_after_snapshot = False
        st.stats.deltas_applied += 1
        out.events.append(
            self.delta_event(st, bids, asks, book.exchange_ts, recv, u, U, pu if self.usdm and pu is not None else -1)
        )
        if st.bbo:
            self.check_bbo_after_apply(st)

    def _dead_in(self, out: FrameResult, reason: str, frame: bytes | str, native: str) -> None:
        raw = frame.encode() if isinstance(frame, str) else bytes(frame)
        self.dead_letter_count += 1
        out.dead_letters.append(DeadLetter(reason=reason, raw=raw, native_symbol=native))

    def on_rest(self, request: RestRequest, status: int, body: bytes, recv_ts_us: int) -> FrameResult:
        out = FrameResult()
        try:
            if request.purpose == "instruments":
                if status == 200:
                    self.load_instruments(body, out)
                return out
            self._on_snapshot(request, status, body, recv_ts_us, out)
        except FrameError as e:
            self._rest_refused(out, request, f"REST {request.path}: {e.reason}", body, e.native_symbol)
        except ScaleError as e:
            self._rest_refused(out, request, f"REST {request.path}: precision: {e}", body, request.native_symbol)
        except Exception as e:
            self._rest_refused(
                out,
                request,
                f"REST {request.path}: unexpected {type(e).__name__}: {e}"[:500],
                body,
                request.native_symbol,
            )
        return out

    def _rest_refused(self, out: FrameResult, request: RestRequest, reason: str, body: bytes, native: str) -> None:
        """A snapshot body we refuse. If the book was already rebuilt from it when the error
        came, it is dropped again and re-fetched, so nothing half-applied stays published."""
        st = self.states.get(request.native_symbol) if type(request.native_symbol) is str else None
        if st is not None and st.book.synced and any(e.native_symbol == st.native for e in out.events):
            out.events = [e for e in out.events if e.native_symbol != st.native]
            self._resync(st, reason[:300], None, body, 0, out, False)
        self._dead_in(out, reason, body, native)

    def _on_snapshot(self, request: RestRequest, status: int, body: bytes, recv: int, out: FrameResult) -> None:
        native = request.native_symbol or dict(request.params).get("symbol", "")
        st = self.state(native)
        if status != 200:
            self._dead_in(out, f"snapshot HTTP {status} for {native}", body, native)
            out.requests.append(self.snapshot_request(st))  # the transport paces retries
            return
        if st.book.synced:
            self._ignore("unsolicited_snapshot")
            return
        try:
            snap = loads(body)
        except JSON_DECODE_ERRORS as e:
            raise FrameError(f"malformed JSON: {e}", native) from None
        if type(snap) is not dict or "lastUpdateId" not in snap:
            raise FrameError("depth snapshot without lastUpdateId", native)
        last = as_int(snap["lastUpdateId"], "lastUpdateId")
        ts = snap.get("T") or snap.get("E")
        bids, asks = self.snapshot_levels(st, snap.get("bids"), snap.get("asks"))
        buf, kept = st.buffer, []
        for item in buf:
            u = item[0].u
            if (u < last) if self.usdm else (u <= last):
                st.stats.deltas_stale += 1
            else:
                kept.append(item)
        exchange_ts = ms_to_us(ts) if ts is not None else snapshot_stream_ts(buf, kept, recv)
        if kept:
            U0, u0 = kept[0][0].U, kept[0][0].u
            bridges = (U0 <= last <= u0) if self.usdm else (U0 <= last + 1)
            if not bridges:
                # Older than the buffered stream: fetch again (documented step), keep the buffer.
                st.buffer = kept
                self._ignore("snapshot_too_old")
                out.requests.append(self.snapshot_request(st))
                return
        st.buffer = []
        self.apply_book_snapshot(st, bids, asks, last, exchange_ts, recv, out)
        if st.book.crossed():
            out.events.pop()  # not the venue's book: not published
            st.stats.crossed += 1
            bb, ba = st.book.best_bid_px(), st.book.best_ask_px()
            self._resync(st, f"crossed snapshot lastUpdateId={last}", None, body, recv, out, False)
            st.buffer = kept
            raise FrameError(f"crossed snapshot lastUpdateId={last}: best bid {bb} >= best ask {ba}", native)
        for d, frame, r in kept:
            if not st.book.synced:  # a buffered diff broke continuity: re-buffer the rest
                self._buffer(st, d, frame, r, out)
                continue
            self._apply_diff(st, d, frame, r, out)

    # -- trades, tickers, derivatives data -------------------------------------------------------

    def _trade(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        x = d.get("X", "MARKET")
        if x != "MARKET":
            # Insurance-fund / ADL fills are not market trades (the aggTrade stream leaves them out too).
            self._ignore(f"trade:{text_id(x, 'trade type X', 32)}")
            return
        st = self.state(d.get("s"))
        t = as_int(d.get("t"), "trade id")
        px, qty = self.price(st, d.get("p")), self.size(st, d.get("q"))
        ts = ms_to_us(d.get("T") or d.get("E"))
        out.events.append(self.trade_event(st, ts, recv, t, str(t), px, qty, not _flag(d, "m")))

    def _agg_trade(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        """The common case checked and converted inline (an aggTrade with every field of the
        documented type and in range, a known instrument with locked scales, cached or exact
        price/size strings); anything else takes ``_agg_trade_checked``, which decides and
        words the refusal. Both give the same envelope and id (tests/test_adapters_fast_path.py)."""
        try:
            st = self.states[d["s"]]
            f, last, a, ts, m, p, q = d["f"], d["l"], d["a"], d["T"], d["m"], d["p"], d["q"]
        except (KeyError, TypeError):  # missing field, unhashable symbol, unknown instrument
            self._agg_trade_checked(d, frame, recv, out)
            return
        px, sz = st.px, st.sz
        if not (
            type(f) is int
            and type(last) is int
            and type(a) is int
            and type(ts) is int
            and type(m) is bool
            and type(p) is str
            and type(q) is str
            and 0 <= f <= last <= INT64_MAX
            and 0 <= a <= INT64_MAX
            and 0 < ts <= MAX_MS
            and px.locked
            and sz.locked
        ):
            self._agg_trade_checked(d, frame, recv, out)
            return
        # locked scales: nothing here can change them, so the frame leaves none to restore
        pv = px.cache.get(p)
        if pv is None:
            pv = self.price(st, p)
        qv = sz.cache.get(q)
        if qv is None:
            qv = self.size(st, q)
        out.events.append(self.trade_event(st, ts * 1000, recv, a, str(a), pv, qv, not m, f, last))

    def _agg_trade_checked(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        st = self.state(d.get("s"))
        f, last = as_int(d.get("f"), "first trade id"), as_int(d.get("l"), "last trade id")
        a = d.get("a")
        agg_id = as_int(a, "aggregate trade id") if a is not None else last
        if f > last:
            raise FrameError(f"aggTrade first trade id {f} > last {last}", st.native)
        px, qty = self.price(st, d.get("p")), self.size(st, d.get("q"))
        ts = ms_to_us(d.get("T") or d.get("E"))
        trade_id = str(a) if a is not None else (str(f) if f == last else f"{f}-{last}")
        out.events.append(self.trade_event(st, ts, recv, agg_id, trade_id, px, qty, not _flag(d, "m"), f, last))

    def _book_ticker(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        """The common case inline (a known instrument with locked scales, an int update id,
        str prices and sizes, an int time or none: spot's), the rest by ``_book_ticker_checked``;
        same envelope and id (tests/test_adapters_fast_path.py)."""
        try:
            st = self.states[d["s"]]
            u, b, bq, a, aq = d["u"], d["b"], d["B"], d["a"], d["A"]
        except (KeyError, TypeError):  # missing field, unhashable symbol, unknown instrument
            self._book_ticker_checked(d, frame, recv, out)
            return
        ts = d.get("T") or d.get("E")  # spot bookTicker has no time: receipt time stands in
        px, sz = st.px, st.sz
        if not (
            type(u) is int
            and type(b) is str
            and type(bq) is str
            and type(a) is str
            and type(aq) is str
            and 0 <= u <= INT64_MAX
            and (ts is None or (type(ts) is int and 0 < ts <= MAX_MS))
            and px.locked
            and sz.locked
        ):
            self._book_ticker_checked(d, frame, recv, out)
            return
        pc, qc = px.cache, sz.cache
        bpx, bsz, apx, asz = pc.get(b), qc.get(bq), pc.get(a), qc.get(aq)
        if bpx is None:
            bpx = self.price(st, b)
        if bsz is None:
            bsz = self.size(st, bq)
        if apx is None:
            apx = self.price(st, a)
        if asz is None:
            asz = self.size(st, aq)
        ps, ss = px.scale, sz.scale
        ex_ts = ts * 1000 if ts else 0
        env = self.envelope(st, EVENT_TICKER, ex_ts if ts else recv, recv, u, ps, ss)
        if not ts:
            env.exchange_ts_is_receipt = True  # the id then hashes u and the prices, not our clock
        tk = env.ticker
        tk.bid_px, tk.bid_qty, tk.ask_px, tk.ask_qty = bpx, bsz, apx, asz
        out.events.append(self.seal(st, env, tk, EVENT_TICKER, ex_ts, u, ps, ss))
        self.remember_bbo(st, u, bpx, bsz, apx, asz)

    def _book_ticker_checked(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        st = self.state(d.get("s"))
        u = as_int(d.get("u"), "update id")
        self.prepare(st, (d.get("b"), d.get("a")), (d.get("B"), d.get("A")))
        bp, bq = self.price(st, d.get("b")), self.size(st, d.get("B"))
        ap, aq = self.price(st, d.get("a")), self.size(st, d.get("A"))
        ts = d.get("T") or d.get("E")  # spot bookTicker has no time: receipt time stands in
        ps, ss = st.px.scale, st.sz.scale
        ex_ts = ms_to_us(ts) if ts else 0
        env = self.envelope(st, EVENT_TICKER, ex_ts if ts else recv, recv, u, ps, ss)
        if not ts:
            env.exchange_ts_is_receipt = True  # the id then hashes u and the prices, not our clock
        tk = env.ticker
        tk.bid_px, tk.bid_qty, tk.ask_px, tk.ask_qty = bp, bq, ap, aq
        out.events.append(self.seal(st, env, tk, EVENT_TICKER, ex_ts, u, ps, ss))
        if st.px.locked and st.sz.locked:
            self.remember_bbo(st, u, bp, bq, ap, aq)

    def _ticker24(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        st = self.state(d.get("s"))
        env = self.envelope(st, EVENT_TICKER, ms_to_us(d.get("E")), recv, 0, 0, 0)
        tk = env.ticker
        self.prepare(st, (d.get("b"), d.get("a"), d.get("c")), (d.get("B"), d.get("A"), d.get("v")))
        if "b" in d and "a" in d:
            tk.bid_px, tk.bid_qty = self.price(st, d["b"]), self.size(st, d.get("B"))
            tk.ask_px, tk.ask_qty = self.price(st, d["a"]), self.size(st, d.get("A"))
        tk.last_px = self.price(st, d.get("c"))
        tk.volume_24h = self.size(st, d.get("v"))
        env.price_scale, env.size_scale = st.px.scale, st.sz.scale
        out.events.append(self.stamp(env))

    def _mark_price(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        st = self.state(d.get("s"))
        ts = ms_to_us(d.get("E"))
        if d.get("p") in (None, ""):
            raise FrameError("markPriceUpdate without a mark price", st.native)
        scale, (mark, index, settle) = self.aux_prices(st, d.get("p"), d.get("i"), d.get("P"))
        events = [self.mark_event(st, ts, recv, 0, scale, mark, index, settle)]
        rate = d.get("r")
        if st.market is Market.PERP and rate not in (None, ""):
            r = funding_rate(rate, st.native)
            nxt = d.get("T")
            events.append(self.funding_event(st, ts, recv, 0, scale, r, ms_to_us(nxt) if nxt else 0, mark))
        out.events.extend(events)

    def _force_order(self, d: dict, frame: bytes | str, recv: int, out: FrameResult) -> None:
        o = d.get("o")
        if type(o) is not dict:
            raise FrameError("forceOrder without order object")
        st = self.liquidation_state(o.get("s"))
        if st is None:
            return
        side = o.get("S")
        if side not in ("BUY", "SELL"):
            raise FrameError(f"forceOrder side {side!r}", st.native)
        filled = o.get("z")  # accumulated filled qty; the order qty when nothing is reported filled
        qty = self.size(st, filled if type(filled) is str and _nonzero(filled) else o.get("q"))
        px = self.price(st, o.get("p"))
        ts, status = ms_to_us(o.get("T") or d.get("E")), text_id(o.get("X", ""), "order status")
        out.events.append(self.liquidation_event(st, ts, recv, side == "BUY", px, qty, status))


class BinanceSpotAdapter(BinanceAdapter):
    """Binance spot (stream.binance.com, /api/v3)."""


class BinanceUsdmAdapter(BinanceAdapter):
    """Binance USD-M futures (fstream.binance.com, /fapi/v1): perpetuals and dated contracts."""

    market = Market.PERP
    usdm = True
    default_streams = ("depth@100ms", "aggTrade", "bookTicker", "markPrice@1s", "forceOrder")
    max_streams_per_connection = 200
    depth_path = venue.USDM_DEPTH_PATH
    info_path = venue.USDM_INFO_PATH

    def market_of(self, native: str) -> Market:
        tail = native.partition("_")[2]
        return Market.FUTURE if tail.isdigit() and len(tail) == 6 else Market.PERP

    def ws_urls(self, base_url: str, native_symbols: list[str]) -> list[str]:
        """One combined-stream URL per fstream route (/public, /market), chunked at 200 streams."""
        base = (base_url or USDM_WS).rstrip("/")
        routes: dict[str, list[str]] = {"public": [], "market": []}
        for name in self.stream_names(native_symbols):
            routes[usdm_route(name)].append(name)
        n = self.max_streams_per_connection
        return [
            f"{base}/{route}/stream?streams=" + "/".join(names[i : i + n])
            for route, names in routes.items()
            for i in range(0, len(names), n)
        ]


def _flag(d: dict, key: str) -> bool:
    v = d.get(key)
    if type(v) is not bool:
        raise FrameError(f"field {key!r} is not a boolean: {v!r}")
    return v


def _nonzero(text: str) -> bool:
    return any(c not in "0." for c in text)

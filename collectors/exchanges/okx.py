"""OKX v5 public channels -> canonical events.

One connection carries spot, perpetual (``-SWAP``) and dated (``-YYMMDD``) instruments;
the market is read from each instId. Order books (``books``, ``books-l2-tbt``,
``books50-l2-tbt``): ``snapshot`` then ``update``s; with ``seqId``/``prevSeqId`` (sent
since 2022) an update's ``prevSeqId`` must equal the previous message's ``seqId``
(that also covers a heartbeat update with ``seqId == prevSeqId`` and no levels, and a
sequence reset where ``seqId < prevSeqId``); captures from before those fields rely on the
checksum alone. The checksum is a signed CRC32 over the best 25 levels interleaved
"bidPx:bidSz:askPx:askSz:..." using the strings exactly as the venue sent them, so the
adapter keeps each level's original strings beside the integer book. A checksum of 0
means "not sent" (OKX zeroes the field from 2026-06) and is not checked. A gap,
checksum mismatch or crossed book resyncs that instrument only by unsubscribing and
resubscribing its book channel; the venue's fresh snapshot is published with reason
RESYNC.

Keep-alive: send the text ``ping`` when nothing arrived for 20 s (OKX drops a silent
connection after 30 s); the venue answers ``pong``.
"""

from __future__ import annotations

import zlib
from typing import Any

from collectors.exchanges import okx_venue as venue
from collectors.exchanges.base import DeadLetter, FrameResult, RestRequest, Send
from collectors.exchanges.common import (
    EVENT_TICKER,
    AdapterBase,
    FrameError,
    InstrumentState,
    as_int,
    frame_object,
    funding_rate,
    ms_to_us,
    opt_seq,
    rest_request,
    text_id,
)
from schemas.model import Exchange, Market

WS_BASE = venue.MIXED.endpoints.ws  # spelled once, in the venue declaration (okx_venue.py)
IDLE_PING_US = 20_000_000
BOOK_CHANNELS = frozenset({"books", "books-l2-tbt", "books50-l2-tbt"})
CHECKSUM_LEVELS = 25
#: channels whose data items are handled one at a time: channel -> the adapter's item handler
_ITEM_HANDLERS = {
    "trades": "_trade",
    "trades-all": "_trade",
    "tickers": "_ticker",
    "funding-rate": "_funding",
    "mark-price": "_mark",
    "liquidation-orders": "_liquidations",
}
_IGNORED = frozenset(
    {
        "index-tickers",
        "open-interest",
        "price-limit",
        "estimated-price",
        "opt-summary",
        "books5",
        "mark-price-candle1m",
        "candle1m",
        "liquidations",
    }
)


def okx_checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """Signed CRC32 of "bidPx:bidSz:askPx:askSz:..." over the best 25 levels per side."""
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts += bids[i]
        if i < len(asks):
            parts += asks[i]
    v = zlib.crc32(":".join(parts).encode())
    return v - 0x1_0000_0000 if v >= 0x8000_0000 else v


def market_of_inst(inst_id: str) -> Market:
    parts = inst_id.split("-")
    if len(parts) == 2:
        return Market.SPOT
    if len(parts) == 3 and parts[2] == "SWAP":
        return Market.PERP
    if len(parts) == 3 and parts[2].isdigit() and len(parts[2]) == 6:
        return Market.FUTURE
    raise FrameError(f"unsupported OKX instrument {inst_id!r} (options and others are not collected)", inst_id)


class OkxAdapter(AdapterBase):
    exchange = Exchange.OKX
    market = Market.SPOT  # per instrument in practice: see market_of

    def __init__(
        self,
        *,
        book_channel: str = "books",
        channels: tuple[str, ...] | None = None,
        liquidation_inst_types: tuple[str, ...] | None = None,
        fetch_instruments: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if book_channel not in BOOK_CHANNELS:
            raise ValueError(f"book channel must be one of {sorted(BOOK_CHANNELS)}")
        self.book_channel = book_channel
        self.channels = channels
        self.liquidation_inst_types = liquidation_inst_types
        self.fetch_instruments = fetch_instruments
        self._last_ping_us = 0

    def market_of(self, native: str) -> Market:
        return market_of_inst(native)

    # -- connection plumbing --------------------------------------------------------------------

    def subscriptions(self, native_symbols: list[str]) -> list[dict[str, str]]:
        args: list[dict[str, str]] = []
        inst_types: set[str] = set()
        for inst in native_symbols:
            mk = market_of_inst(inst)
            chans = self.channels or (
                (self.book_channel, "trades", "tickers")
                + (("funding-rate", "mark-price") if mk is Market.PERP else ())
                + (("mark-price",) if mk is Market.FUTURE else ())
            )
            args += [{"channel": ch, "instId": inst} for ch in chans]
            if mk is Market.PERP:
                inst_types.add("SWAP")
            elif mk is Market.FUTURE:
                inst_types.add("FUTURES")
        for it in sorted(self.liquidation_inst_types if self.liquidation_inst_types is not None else inst_types):
            args.append({"channel": "liquidation-orders", "instType": it})
        return args

    def ws_urls(self, base_url: str, native_symbols: list[str]) -> list[str]:
        return [f"{(base_url or WS_BASE).rstrip('/')}{venue.STREAM_PATH}"]

    def on_open(self, native_symbols: list[str]) -> FrameResult:
        out = FrameResult()
        self.subscribe_all(native_symbols, self.subscriptions(native_symbols), 100, out)
        if self.fetch_instruments:
            for it in sorted({_inst_type(market_of_inst(s)) for s in native_symbols}):
                out.requests.append(
                    rest_request(venue.INSTRUMENTS_PATH, {"instType": it}, weight=1, purpose="instruments")
                )
        return out

    def keepalive(self, now_us: int) -> FrameResult:
        if not self.last_rx_us:
            self.last_rx_us = now_us
        if now_us - max(self.last_rx_us, self._last_ping_us) >= IDLE_PING_US:
            self._last_ping_us = now_us
            return FrameResult(sends=[Send("ping")])
        return FrameResult()

    def on_rest(self, request: RestRequest, status: int, body: bytes, recv_ts_us: int) -> FrameResult:
        out = FrameResult()
        if request.purpose == "instruments" and status == 200:
            self.load_instruments(body, out)
        return out

    # -- frames ---------------------------------------------------------------------------------

    def _handle(self, frame: bytes | str, recv: int, out: FrameResult) -> None:
        if frame == "pong" or frame == b"pong":
            self._ignore("pong")
            return
        msg = frame_object(frame)
        arg = msg.get("arg")
        if "event" in msg:
            self._event(msg, out)
            return
        if type(arg) is not dict or "data" not in msg:
            raise FrameError("message without arg/data")
        ch = arg.get("channel")
        if type(ch) is not str:
            raise FrameError(f"channel is not a string: {ch!r:.60}")
        data = msg["data"]
        if type(data) is not list:
            raise FrameError(f"{ch}: data is not a list")
        item = _ITEM_HANDLERS.get(ch)
        if item is not None:
            handle = getattr(self, item)
            for t in data:
                handle(t, recv, out)
        elif ch in BOOK_CHANNELS:
            self._book(msg, arg, data, frame, recv, out)
        elif ch == "bbo-tbt":
            self._bbo(arg, data, recv, out)
        elif ch in _IGNORED:
            self._ignore(ch)
        else:
            raise FrameError(f"unknown channel {ch!r}")

    def _event(self, msg: dict, out: FrameResult) -> None:
        ev = msg.get("event")
        if ev in ("subscribe", "unsubscribe", "channel-conn-count"):
            self._ignore(ev)
        elif ev == "error":
            raise FrameError(f"venue error {msg.get('code')}: {msg.get('msg')}")
        elif ev == "notice":
            # e.g. code 64008: the connection will close for a service upgrade
            out.reconnect = f"notice {msg.get('code')}: {msg.get('msg')}"
        else:
            raise FrameError(f"unknown event {ev!r}")

    # -- order book -----------------------------------------------------------------------------

    def _book(self, msg: dict, arg: dict, data: list, frame: bytes | str, recv: int, out: FrameResult) -> None:
        inst = arg.get("instId")
        st = self.state(inst)
        st.topic = arg.get("channel", self.book_channel)
        self._book_st = st  # refused from here on: this book lost a venue update
        if len(data) != 1 or type(data[0]) is not dict:
            raise FrameError("book message must carry exactly one data object", inst)
        d = data[0]
        action = msg.get("action")
        ts = ms_to_us(d.get("ts"))
        seq_id, prev = d.get("seqId"), d.get("prevSeqId")
        if (seq_id is not None and type(seq_id) is not int) or (prev is not None and type(prev) is not int):
            raise FrameError(f"bad seqId/prevSeqId {seq_id!r:.40}/{prev!r:.40}", inst)
        if seq_id is not None:
            as_int(seq_id, "seqId")
        if prev is not None:
            as_int(prev, "prevSeqId", lo=-1)
        checksum = d.get("checksum", 0) or 0
        if type(checksum) is not int or not -(2**31) <= checksum < 2**32:
            raise FrameError(f"bad checksum {checksum!r:.40}", inst)
        raw_b, raw_a = d.get("bids"), d.get("asks")
        if action == "snapshot":
            bids, asks = self.snapshot_levels(st, raw_b, raw_a)
            st.levels_str = (
                {p: (lv[0], lv[1]) for p, lv in zip((x[0] for x in bids), raw_b)},
                {p: (lv[0], lv[1]) for p, lv in zip((x[0] for x in asks), raw_a)},
            )
            self.apply_book_snapshot(st, bids, asks, seq_id or 0, ts, recv, out, checksum)
            if self.check_crossed(st):
                out.events.pop()  # not the venue's book: not published
                self.resubscribe(st, "crossed snapshot", out, False)
                raise FrameError("crossed book in snapshot", inst)
            if not self._check(st, checksum, "snapshot", frame, out):
                out.events.pop()  # the snapshot is not the venue's book: it is not published
            return
        if action != "update":
            raise FrameError(f"book action {action!r}", inst)
        book = st.book
        if not book.synced:
            self.await_snapshot(st, "update without a snapshot", out)
            return
        if seq_id is not None and prev is not None and book.seq:
            if prev != book.seq:
                if seq_id <= book.seq and prev < book.seq and seq_id >= prev:
                    st.stats.deltas_stale += 1  # already applied (overlapping connection)
                    return
                self.resubscribe(st, f"gap: prevSeqId={prev} != previous seqId={book.seq}", out, True)
                return
        try:
            bids = self.levels(st, raw_b)
            asks = self.levels(st, raw_a)
        except FrameError:
            self.resubscribe(st, "unusable update", out, True)
            raise
        book.apply(bids, asks)
        sb, sa = st.levels_str
        for (p, q), lv in zip(bids, raw_b):
            if q:
                sb[p] = (lv[0], lv[1])
            else:
                sb.pop(p, None)
        for (p, q), lv in zip(asks, raw_a):
            if q:
                sa[p] = (lv[0], lv[1])
            else:
                sa.pop(p, None)
        if book.crossed():
            raise self.crossed_by_delta(st, "crossed book", "update", out)
        if not self._check(st, checksum, "update", frame, out):
            return
        if seq_id is not None:
            book.seq = seq_id
        book.exchange_ts = ts
        st.stats.deltas_applied += 1
        out.events.append(
            self.delta_event(
                st, bids, asks, ts, recv, seq_id or 0, seq_id or 0, prev if prev is not None else -1, checksum
            )
        )

    def _check(self, st: InstrumentState, checksum: int, what: str, frame: bytes | str, out: FrameResult) -> bool:
        """Verify the venue checksum (when sent); on mismatch resync and dead-letter the frame."""
        if not checksum:
            return True
        sb, sa = st.levels_str
        book = st.book
        ours = okx_checksum(
            [sb[p] for p, _ in book.top_bids(CHECKSUM_LEVELS)], [sa[p] for p, _ in book.top_asks(CHECKSUM_LEVELS)]
        )
        if ours == checksum:
            st.stats.checksum_ok += 1
            return True
        st.stats.checksum_bad += 1
        self.resubscribe(st, f"checksum mismatch on {what}: venue {checksum}, book {ours}", out, False)
        raw = frame.encode() if isinstance(frame, str) else bytes(frame)
        self.dead_letter_count += 1
        out.dead_letters.append(
            DeadLetter(
                reason=f"checksum mismatch on {what}: venue {checksum}, rebuilt book {ours}",
                raw=raw,
                native_symbol=st.native,
            )
        )
        return False

    def book_subscription(self, st: InstrumentState) -> dict[str, str]:
        return {"channel": st.topic or self.book_channel, "instId": st.native}

    # -- other channels -------------------------------------------------------------------------

    def _trade(self, t: Any, recv: int, out: FrameResult) -> None:
        if type(t) is not dict:
            raise FrameError("trade item is not an object")
        st = self.state(t.get("instId"))
        side = t.get("side")
        if side not in ("buy", "sell"):
            raise FrameError(f"trade side {side!r}", st.native)
        tid = text_id(t.get("tradeId"), "tradeId")
        px, qty = self.price(st, t.get("px")), self.size(st, t.get("sz"))
        seq = int(tid) if tid.isdigit() and tid.isascii() and len(tid) < 19 else 0
        out.events.append(self.trade_event(st, ms_to_us(t.get("ts")), recv, seq, tid, px, qty, side == "buy"))

    def _ticker(self, t: Any, recv: int, out: FrameResult) -> None:
        if type(t) is not dict:
            raise FrameError("ticker item is not an object")
        st = self.state(t.get("instId"))
        env = self.envelope(st, EVENT_TICKER, ms_to_us(t.get("ts")), recv, 0, 0, 0)
        tk = env.ticker
        self.prepare(
            st, (t.get("bidPx"), t.get("askPx"), t.get("last")), (t.get("bidSz"), t.get("askSz"), t.get("vol24h"))
        )
        tk.bid_px = self._opt(st, t.get("bidPx"), True)
        tk.bid_qty = self._opt(st, t.get("bidSz"), False)
        tk.ask_px = self._opt(st, t.get("askPx"), True)
        tk.ask_qty = self._opt(st, t.get("askSz"), False)
        tk.last_px = self._opt(st, t.get("last"), True)
        # vol24h is in the instrument's size unit (base for spot, contracts for swaps/futures)
        tk.volume_24h = self._opt(st, t.get("vol24h"), False)
        env.price_scale, env.size_scale = st.px.scale, st.sz.scale
        out.events.append(self.stamp(env))

    def _opt(self, st: InstrumentState, v: Any, is_px: bool) -> int:
        if v in (None, ""):
            return 0
        return self.price(st, v) if is_px else self.size(st, v)

    def _funding(self, t: Any, recv: int, out: FrameResult) -> None:
        if type(t) is not dict:
            raise FrameError("funding-rate item is not an object")
        st = self.state(t.get("instId"))
        rate = t.get("fundingRate")
        if rate in (None, ""):
            raise FrameError("funding-rate message has no fundingRate", st.native)
        r = funding_rate(rate, st.native)
        nxt = t.get("nextFundingRate")
        predicted = funding_rate(nxt, st.native) if nxt not in (None, "") else 0
        ts, ft = t.get("ts"), t.get("fundingTime")
        ts_us = ms_to_us(ts) if ts not in (None, "") else recv
        next_ts = ms_to_us(ft) if ft not in (None, "") else 0
        out.events.append(self.funding_event(st, ts_us, recv, 0, 0, r, next_ts, predicted=predicted))

    def _mark(self, t: Any, recv: int, out: FrameResult) -> None:
        if type(t) is not dict:
            raise FrameError("mark-price item is not an object")
        st = self.state(t.get("instId"))
        if t.get("markPx") in (None, ""):
            raise FrameError("mark-price item without markPx", st.native)
        scale, (mark,) = self.aux_prices(st, t.get("markPx"))
        out.events.append(self.mark_event(st, ms_to_us(t.get("ts")), recv, 0, scale, mark))

    def _liquidations(self, t: Any, recv: int, out: FrameResult) -> None:
        if type(t) is not dict or type(t.get("details")) is not list:
            raise FrameError("liquidation-orders item without details")
        st = self.liquidation_state(t.get("instId"))
        if st is None:
            return
        for det in t["details"]:
            if type(det) is not dict:
                raise FrameError("liquidation detail is not an object", st.native)
            side = det.get("side")
            if side not in ("buy", "sell"):
                raise FrameError(f"liquidation side {side!r}", st.native)
            px, qty = self.price(st, det.get("bkPx")), self.size(st, det.get("sz"))
            # the detail's side is the liquidation order's side
            out.events.append(self.liquidation_event(st, ms_to_us(det.get("ts")), recv, side == "buy", px, qty))

    def _bbo(self, arg: dict, data: list, recv: int, out: FrameResult) -> None:
        st = self.state(arg.get("instId"))
        for d in data:
            if type(d) is not dict:
                raise FrameError("bbo-tbt item is not an object", st.native)
            b = d.get("bids") or []
            a = d.get("asks") or []
            if type(b) is not list or type(a) is not list or any(type(lv) is not list for lv in b[:1] + a[:1]):
                raise FrameError("bbo-tbt levels are not lists", st.native)
            self.prepare(st, tuple(lv[0] for lv in b[:1] + a[:1]), tuple(lv[1] for lv in b[:1] + a[:1]))
            bp, bq = (self.price(st, b[0][0]), self.size(st, b[0][1])) if b else (0, 0)
            ap, aq = (self.price(st, a[0][0]), self.size(st, a[0][1])) if a else (0, 0)
            seq = opt_seq(d.get("seqId"), "bbo seqId")
            env = self.envelope(st, EVENT_TICKER, ms_to_us(d.get("ts")), recv, seq, st.px.scale, st.sz.scale)
            tk = env.ticker
            tk.bid_px, tk.bid_qty, tk.ask_px, tk.ask_qty = bp, bq, ap, aq
            out.events.append(self.stamp(env))
            if seq and st.px.locked and st.sz.locked:
                self.remember_bbo(st, seq, bp, bq, ap, aq)


def _inst_type(m: Market) -> str:
    return {Market.SPOT: "SPOT", Market.PERP: "SWAP", Market.FUTURE: "FUTURES"}[m]

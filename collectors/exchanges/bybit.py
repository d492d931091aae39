"""Bybit v5 public streams (spot, linear, inverse) -> canonical events.

Order book ``orderbook.{depth}.{symbol}``: a ``snapshot`` replaces the book (Bybit re-sends
one whenever it has a problem; level-1 books are re-sent unchanged every 3 s with the same
``u``), a ``delta`` must carry ``u`` = previous ``u`` + 1, and ``u == 1`` means the
service restarted and the message overwrites the book. Size "0" deletes a level. A gap,
crossed book or unusable delta resyncs that symbol only, by unsubscribing and
resubscribing its book topic, which makes Bybit push a fresh snapshot (published with
reason RESYNC).

``tickers`` sends a snapshot and then deltas holding only changed fields; deltas are
merged into the last full ticker before a TICKER is emitted, and for contracts the
funding and mark/index fields become FUNDING and MARK_PRICE events when they change.
``allLiquidation`` (and the older ``liquidation``) report the *position* side: "Buy"
means a long was liquidated, i.e. the liquidation order sold.
Keep-alive is an application ``{"op":"ping"}`` every 20 s.
"""

from __future__ import annotations

import re
from typing import Any

from collectors.exchanges import bybit_venue as venue
from collectors.exchanges.base import FrameResult, RestRequest, Send
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

WS_BASE = venue.ENDPOINTS.ws  # spelled once, in the venue declaration (bybit_venue.py)
CATEGORIES = venue.CATEGORIES
PING_INTERVAL_US = 20_000_000
#: Bybit caps the args of one subscribe request (spot: 10)
MAX_ARGS_PER_REQUEST = 10

_INVERSE_FUTURE = re.compile(r"^[A-Z0-9]+USD[FGHJKMNQUVXZ]\d\d$")
_LINEAR_FUTURE = re.compile(r"^[A-Z0-9]+-\d{1,2}[A-Z]{3}\d{2}$")


class BybitAdapter(AdapterBase):
    exchange = Exchange.BYBIT

    def __init__(
        self,
        *,
        category: str = "linear",
        depth: int = 200,
        channels: tuple[str, ...] | None = None,
        fetch_instruments: bool = False,
        **kw: Any,
    ) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"Bybit category must be one of {CATEGORIES}, not {category!r}")
        self.category = category
        self.market = Market.SPOT if category == "spot" else Market.PERP
        super().__init__(**kw)
        self.depth = depth
        default = ("orderbook", "publicTrade", "tickers") + (() if category == "spot" else ("allLiquidation",))
        self.channels = tuple(channels or default)
        self.fetch_instruments = fetch_instruments
        self._last_ping_us = 0

    def market_of(self, native: str) -> Market:
        if self.category == "spot":
            return Market.SPOT
        # Dated names are unambiguous whatever the category (BTCUSDH25 inverse, BTC-27DEC24 linear).
        if _INVERSE_FUTURE.fullmatch(native) or _LINEAR_FUTURE.fullmatch(native):
            return Market.FUTURE
        return Market.PERP

    # -- connection plumbing --------------------------------------------------------------------

    def topics(self, native: str) -> list[str]:
        return [f"orderbook.{self.depth}.{native}" if ch == "orderbook" else f"{ch}.{native}" for ch in self.channels]

    def ws_urls(self, base_url: str, native_symbols: list[str]) -> list[str]:
        return [f"{(base_url or WS_BASE).rstrip('/')}{venue.STREAM_PREFIX}/{self.category}"]

    def on_open(self, native_symbols: list[str]) -> FrameResult:
        out = FrameResult()
        self._last_ping_us = 0  # a new connection: ping on the next keepalive tick
        args = [t for s in native_symbols for t in self.topics(s)]
        self.subscribe_all(native_symbols, args, MAX_ARGS_PER_REQUEST, out)
        if self.fetch_instruments:
            out.requests.append(self.instruments_request(native_symbols))
        return out

    def keepalive(self, now_us: int) -> FrameResult:
        if not self._last_ping_us or now_us - self._last_ping_us >= PING_INTERVAL_US:
            self._last_ping_us = now_us
            return FrameResult(sends=[Send('{"op":"ping"}')])
        return FrameResult()

    def instruments_request(self, native_symbols: list[str]) -> RestRequest:
        params = {"category": self.category, "limit": "1000"}
        if len(native_symbols) == 1:
            params["symbol"] = native_symbols[0]
        return rest_request(venue.INSTRUMENTS_PATH, params, weight=1, purpose="instruments")

    def on_rest(self, request: RestRequest, status: int, body: bytes, recv_ts_us: int) -> FrameResult:
        out = FrameResult()
        if request.purpose == "instruments" and status == 200:
            self.load_instruments(body, out, category=self.category)
        return out

    # -- frames ---------------------------------------------------------------------------------

    def _handle(self, frame: bytes | str, recv: int, out: FrameResult) -> None:
        msg = frame_object(frame)
        topic = msg.get("topic")
        if topic is None:
            self._control(msg)
            return
        if type(topic) is not str:
            raise FrameError(f"topic is not a string: {topic!r}")
        kind, _, rest = topic.partition(".")
        if kind == "orderbook":
            self._orderbook(msg, rest, frame, recv, out)
        elif kind == "publicTrade":
            self._trades(msg, recv, out)
        elif kind == "tickers":
            self._ticker(msg, recv, out)
        elif kind == "allLiquidation":
            self._all_liquidation(msg, recv, out)
        elif kind == "liquidation":
            self._legacy_liquidation(msg, recv, out)
        elif kind in ("kline", "tickers_lt", "lt"):
            self._ignore(kind)
        else:
            raise FrameError(f"unknown topic {topic!r}")

    def _control(self, msg: dict) -> None:
        op = msg.get("op")
        if op in ("ping", "pong") or msg.get("ret_msg") == "pong":
            self._ignore("pong")
        elif op in ("subscribe", "unsubscribe"):
            if msg.get("success") is False:
                raise FrameError(f"{op} rejected: {msg.get('ret_msg')!r}")
            self._ignore(op)
        else:
            raise FrameError(f"unknown message without topic (op={op!r})")

    # -- order book -----------------------------------------------------------------------------

    def _orderbook(self, msg: dict, rest: str, frame: bytes | str, recv: int, out: FrameResult) -> None:
        depth_s, _, native = rest.partition(".")
        data = msg.get("data")
        if type(data) is not dict:
            raise FrameError("orderbook message without data object")
        native = data.get("s") or native
        st = self.state(native)
        topic = f"orderbook.{depth_s}.{native}"
        if st.topic != topic:
            if st.topic:
                # One book per symbol: another depth of the same symbol has its own u sequence.
                self._ignore("orderbook:other_depth")
                return
            if not depth_s.isdigit() or not depth_s.isascii() or len(depth_s) > 4:
                raise FrameError(f"orderbook topic depth {depth_s[:20]!r}", native)
            st.topic = topic
        self._book_st = st  # refused from here on: this book lost a venue update
        u = data.get("u")
        if type(u) is not int:
            raise FrameError(f"orderbook update id u={u!r:.40}", native)
        as_int(u, "orderbook update id u")
        typ = msg.get("type")
        ts = ms_to_us(msg.get("ts"))
        if typ == "snapshot" or u == 1:
            # A snapshot, or a delta with u=1 after a service restart, replaces the book.
            bids, asks = self.snapshot_levels(st, data.get("b"), data.get("a"))
            self.apply_book_snapshot(st, bids, asks, u, ts, recv, out)
            if self.check_crossed(st):
                self.resubscribe(st, f"crossed snapshot u={u}", out, False)
                raise FrameError(f"crossed book in snapshot u={u}", native)
            return
        if typ != "delta":
            raise FrameError(f"orderbook message type {typ!r}", native)
        book = st.book
        if not book.synced:
            self.await_snapshot(st, f"delta u={u} without a snapshot", out)
            return
        if u <= book.seq:
            st.stats.deltas_stale += 1
            return
        if u != book.seq + 1:
            self.resubscribe(st, f"gap: u={u} after u={book.seq}", out, True)
            return
        try:
            bids = self.levels(st, data.get("b"))
            asks = self.levels(st, data.get("a"))
        except FrameError:
            self.resubscribe(st, f"unusable delta u={u}", out, True)
            raise
        book.apply(bids, asks)
        if book.crossed():
            raise self.crossed_by_delta(st, f"crossed book after u={u}", f"applying u={u}", out)
        book.seq = u
        book.exchange_ts = ts
        st.stats.deltas_applied += 1
        out.events.append(self.delta_event(st, bids, asks, ts, recv, u, u, -1))

    def book_subscription(self, st: InstrumentState) -> str:
        return st.topic or f"orderbook.{self.depth}.{st.native}"

    # -- trades, tickers, liquidations ----------------------------------------------------------

    def _trades(self, msg: dict, recv: int, out: FrameResult) -> None:
        data = msg.get("data")
        if type(data) is not list:
            raise FrameError("publicTrade data is not a list")
        for t in data:
            if type(t) is not dict:
                raise FrameError("publicTrade item is not an object")
            st = self.state(t.get("s"))
            side = t.get("S")
            if side not in ("Buy", "Sell"):
                raise FrameError(f"trade side {side!r}", st.native)
            px, qty = self.price(st, t.get("p")), self.size(st, t.get("v"))
            ts, seq = ms_to_us(t.get("T")), opt_seq(t.get("seq"), "trade seq")
            trade_id = text_id(t.get("i", ""), "trade id")
            out.events.append(self.trade_event(st, ts, recv, seq, trade_id, px, qty, side == "Buy"))

    def _ticker(self, msg: dict, recv: int, out: FrameResult) -> None:
        data = msg.get("data")
        if type(data) is not dict:
            raise FrameError("tickers data is not an object")
        st = self.state(data.get("symbol"))
        typ = msg.get("type", "snapshot")
        # The merged ticker is kept only once the whole frame has been accepted: a refused
        # delta must not leak its fields into later TICKER events.
        if typ == "snapshot":
            t = dict(data)
        elif typ == "delta":
            if st.ticker is None:
                raise FrameError("tickers delta before any snapshot (nothing to merge into)", st.native)
            t = {**st.ticker, **data}
        else:
            raise FrameError(f"tickers type {typ!r}", st.native)
        ts = ms_to_us(msg.get("ts"))
        seq = opt_seq(msg.get("cs"), "ticker cs")
        env = self.envelope(st, EVENT_TICKER, ts, recv, seq, 0, 0)
        tk = env.ticker
        self.prepare(
            st,
            (t.get("bid1Price"), t.get("ask1Price"), t.get("lastPrice")),
            (t.get("bid1Size"), t.get("ask1Size"), t.get("volume24h"), t.get("openInterest")),
        )
        tk.bid_px = self._opt_px(st, t.get("bid1Price"))
        tk.bid_qty = self._opt_sz(st, t.get("bid1Size"))
        tk.ask_px = self._opt_px(st, t.get("ask1Price"))
        tk.ask_qty = self._opt_sz(st, t.get("ask1Size"))
        tk.last_px = self._opt_px(st, t.get("lastPrice"))
        tk.volume_24h = self._opt_sz(st, t.get("volume24h"))
        tk.open_interest = self._opt_sz(st, t.get("openInterest"))
        env.price_scale, env.size_scale = st.px.scale, st.sz.scale
        events = [self.stamp(env)]
        if self.category != "spot":
            mark_s, index_s = t.get("markPrice"), t.get("indexPrice")
            mscale, (mark, index) = self.aux_prices(st, mark_s, index_s)
            if ("markPrice" in data or "indexPrice" in data) and mark:
                events.append(self.mark_event(st, ts, recv, seq, mscale, mark, index))
            rate = t.get("fundingRate")
            if ("fundingRate" in data or "nextFundingTime" in data) and rate:
                r = funding_rate(rate, st.native)
                nxt = t.get("nextFundingTime")
                events.append(self.funding_event(st, ts, recv, seq, mscale, r, ms_to_us(nxt) if nxt else 0, mark))
        st.ticker = t
        out.events.extend(events)

    def _opt_px(self, st: InstrumentState, v: Any) -> int:
        return self.price(st, v) if v not in (None, "") else 0

    def _opt_sz(self, st: InstrumentState, v: Any) -> int:
        return self.size(st, v) if v not in (None, "") else 0

    def _liq(
        self, st: InstrumentState, position_side: Any, px: Any, qty: Any, ts: int, recv: int, out: FrameResult
    ) -> None:
        if position_side not in ("Buy", "Sell"):
            raise FrameError(f"liquidation side {position_side!r}", st.native)
        price, size = self.price(st, px), self.size(st, qty)
        # Position side Buy = a long was liquidated = the liquidation order sold.
        out.events.append(self.liquidation_event(st, ts, recv, position_side != "Buy", price, size))

    def _all_liquidation(self, msg: dict, recv: int, out: FrameResult) -> None:
        data = msg.get("data")
        items = data if type(data) is list else [data]
        for d in items:
            if type(d) is not dict:
                raise FrameError("allLiquidation item is not an object")
            st = self.liquidation_state(d.get("s"))
            if st is None:
                continue
            self._liq(st, d.get("S"), d.get("p"), d.get("v"), ms_to_us(d.get("T")), recv, out)

    def _legacy_liquidation(self, msg: dict, recv: int, out: FrameResult) -> None:
        d = msg.get("data")
        if type(d) is not dict:
            raise FrameError("liquidation data is not an object")
        st = self.state(d.get("symbol"))
        ts = d.get("updatedTime", d.get("updateTime", msg.get("ts")))
        self._liq(st, d.get("side"), d.get("price"), d.get("size"), ms_to_us(ts), recv, out)

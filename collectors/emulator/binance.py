"""Binance on the wire, as the emulator plays it: spot (stream.binance.com, /api/v3) and
USD-M (fstream.binance.com, /fapi/v1, routed /public and /market streams) combined and raw
streams, subscribe/list methods, REST depth snapshots and exchange info with the venue's
request-weight limits. Independent of the collectors' adapter (it is its test oracle);
hosts and paths come from the venue declaration (collectors/exchanges/binance_venue.py).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from collectors.emulator.ratelimit import VenueLimits
from collectors.emulator.sim import Client, InstrumentInfo, VenueSim, dumps, now_ms
from collectors.exchanges import binance_venue
from schemas.model import Exchange, Market
from schemas.symbols import SymbolError, split_concatenated

BINANCE_SPOT_LIMITS = VenueLimits(60.0, 6000, "X-MBX-USED-WEIGHT-1M", 429, 418, 120.0)
BINANCE_USDM_LIMITS = VenueLimits(60.0, 2400, "X-MBX-USED-WEIGHT-1M", 429, 418, 120.0)


def binance_depth_weight(market: Market, limit: int) -> int:
    if market is Market.SPOT:
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


class BinanceSim(VenueSim):
    exchange = Exchange.BINANCE

    def __init__(self, market: Market = Market.SPOT, **kw: Any) -> None:
        self.market = Market(market)
        self.usdm = self.market is not Market.SPOT
        self.name = host_name(self.market)
        self.feed = binance_venue.USDM if self.usdm else binance_venue.SPOT
        self.limits = BINANCE_USDM_LIMITS if self.usdm else BINANCE_SPOT_LIMITS
        self.rest_prefix = binance_venue.USDM_REST_PREFIX if self.usdm else binance_venue.SPOT_REST_PREFIX
        super().__init__(**kw)
        self._pending_snapshot: tuple[str, bytes | str] | None = None
        #: diffs seen before the symbol's first snapshot: the venue's book already includes
        #: them, so they are applied on top of a snapshot that is older than they are.
        self._early: dict[str, list[dict]] = {}
        #: native -> connections subscribed to its diff stream that have not fetched a depth
        #: snapshot since (a Binance client buffers diffs and asks once it sees the first)
        self._snapshot_due: dict[str, set[int]] = {}

    @staticmethod
    def _diff_native(key: str) -> str | None:
        """The symbol of a diff-depth stream (<sym>@depth[@100ms]); None for other streams
        (partial-depth <sym>@depth20 needs no snapshot)."""
        sym, _, rest = key.partition("@")
        if rest == "depth" or (rest.startswith("depth@") and rest.endswith("ms")):
            return sym.upper()
        return None

    def subscribe(self, client: Client, key: str) -> None:
        native = self._diff_native(key)
        if native is not None:
            self._snapshot_due.setdefault(native, set()).add(client.id)
        super().subscribe(client, key)

    def on_close(self, client: Client) -> None:
        super().on_close(client)
        for due in self._snapshot_due.values():
            due.discard(client.id)
        self._settled.set()

    def _sync_done(self, native: str) -> bool:
        return not self._snapshot_due.get(native)

    def _snapshot_served(self, native: str) -> None:
        due = self._snapshot_due.get(native)
        if due:
            due.pop()
        self._settled.set()

    # ws
    def accept(self, client: Client) -> str | None:
        parts = urlsplit(client.path)
        path = parts.path
        for prefix in ("/public", "/market"):  # USD-M routed endpoints (2026)
            if self.usdm and path.startswith(prefix + "/"):
                path = path[len(prefix) :]
        if path == self.feed.stream_path:
            streams = dict(parse_qsl(parts.query)).get("streams", "")
            for s in filter(None, streams.split("/")):
                self.subscribe(client, s)
            return None
        if path == "/ws" or path == "/ws/":
            return None
        if path.startswith("/ws/"):
            client.raw = True
            for s in filter(None, path[4:].split("/")):
                self.subscribe(client, s)
            return None
        return f"unknown path {client.path}"

    def on_message(self, client: Client, text: str) -> None:
        try:
            msg = json.loads(text)
            method, rid = msg.get("method"), msg.get("id")
        except (ValueError, AttributeError):
            client.offer(dumps({"error": {"code": 3, "msg": "Invalid JSON"}}))
            return
        params = msg.get("params") or []
        if method == "SUBSCRIBE":
            for s in params:
                self.subscribe(client, str(s))
            client.offer(dumps({"result": None, "id": rid}))
        elif method == "UNSUBSCRIBE":
            for s in params:
                self.unsubscribe(client, str(s))
            client.offer(dumps({"result": None, "id": rid}))
        elif method == "LIST_SUBSCRIPTIONS":
            client.offer(dumps({"result": sorted(client.subs), "id": rid}))
        else:
            client.offer(dumps({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid}))

    def server_shutdown(self) -> None:
        text = dumps({"e": "serverShutdown", "E": now_ms()})
        for c in self.clients.values():
            c.offer(text)

    def catalog_entry(self, obj: dict[str, Any], market: Market) -> tuple[str, Market, str, str] | None:
        if not isinstance(obj.get("stream"), str):
            return None
        sym, _, ch = obj["stream"].partition("@")
        return obj["stream"], market, sym.upper(), ch

    def route_key(self, obj: Any) -> str | None:
        return obj.get("stream") if isinstance(obj, dict) and isinstance(obj.get("data"), dict) else None

    # capture
    def ingest_ws(self, payload: bytes | str) -> None:
        self.frames_in += 1
        text = payload.decode() if isinstance(payload, bytes) else payload
        obj = json.loads(text)
        if not isinstance(obj, dict):
            return
        stream, data = obj.get("stream"), obj.get("data")
        if stream is None or not isinstance(data, dict):
            return  # subscription answers and the like are not market data
        native = data.get("s", "")
        upd = data.get("e") == "depthUpdate"
        if upd:
            self._note_symbol(native)
            if self._pending_snapshot is not None:
                _, body = self._pending_snapshot
                self._pending_snapshot = None
                self._install(native, body)
            self._apply_update(native, data)
        elif native:
            self._note_symbol(native)
        self.emit(stream, text, native, upd, raw=lambda: dumps(data))

    def _note_symbol(self, native: str) -> None:
        if native and native not in self.instruments:
            try:
                base, quote = split_concatenated(native)
            except SymbolError:
                base, quote = native, ""
            self.add_instrument(InstrumentInfo(native, self.market, base, quote))

    def _apply_update(self, native: str, data: dict) -> None:
        book = self.book(native)
        if not book.known:
            early = self._early.setdefault(native, [])
            early.append(data)
            if len(early) > 10_000:
                del early[0]
            return
        u = int(data["u"])
        if u <= book.seq:
            return
        book.apply(data.get("b", ()), data.get("a", ()))
        book.prev_seq = int(data.get("pu", book.seq))
        book.seq = u
        book.ts_ms = int(data.get("E", 0))

    def ingest_rest(self, url: str, payload: bytes | str) -> None:
        q = dict(parse_qsl(urlsplit(url).query)) if url else {}
        native = q.get("symbol", "")
        if not native:
            # A snapshot recorded without its URL (hftbacktest): it belongs to the depth
            # stream that is running; bind it when that stream's next update arrives.
            self._pending_snapshot = ("", payload)
            return
        self._note_symbol(native)
        self._install(native, payload)

    def _install(self, native: str, payload: bytes | str) -> None:
        snap = json.loads(payload)
        book = self.book(native)
        seq = int(snap["lastUpdateId"])
        if book.known and seq <= book.seq:
            return
        book.reset(snap.get("bids", ()), snap.get("asks", ()), seq)
        book.ts_ms = int(snap.get("E", 0))
        for data in self._early.pop(native, []):
            self._apply_update(native, data)
        self.learn_steps(native, list(snap.get("bids", ())) + list(snap.get("asks", ())))
        if self._snapshot_due.get(native):
            self.barrier.add(native)
        self.mark_known()

    # REST
    def routes(self):
        p = self.rest_prefix
        return [
            (p + "/depth", self._depth, self._depth_weight),
            (p + "/exchangeInfo", self._exchange_info, lambda r: 1 if self.usdm else 20),
            (p + "/ping", self._ping, lambda r: 1),
            (p + "/time", self._time, lambda r: 1),
        ]

    def _limit(self, request: web.Request) -> int:
        try:
            return max(1, min(int(request.query.get("limit", 500 if self.usdm else 100)), 5000))
        except ValueError:
            return 100

    def _depth_weight(self, request: web.Request) -> int:
        return binance_depth_weight(self.market, self._limit(request))

    async def _depth(self, request: web.Request) -> web.Response:
        native = request.query.get("symbol", "")
        if not native:
            return web.json_response({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent."}, status=400)
        if native not in self.books and native not in self.instruments:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        book = await self.wait_book(native, timeout=30.0)
        if book is None:
            return web.json_response({"code": -1007, "msg": "Timeout waiting for response."}, status=503)
        n = self._limit(request)
        body: dict[str, Any] = {"lastUpdateId": book.seq}
        if self.usdm:
            body["E"] = book.ts_ms or now_ms()
            body["T"] = book.ts_ms or now_ms()
        body["bids"] = [lv[:2] for lv in book.top_bids(n)]
        body["asks"] = [lv[:2] for lv in book.top_asks(n)]
        self._snapshot_served(native)
        return web.json_response(body)

    async def _exchange_info(self, request: web.Request) -> web.Response:
        wanted = request.query.get("symbol")
        syms = []
        for info in self.instruments.values():
            if wanted and info.native != wanted:
                continue
            filters = [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": info.tick or "0",
                    "maxPrice": "1000000",
                    "tickSize": info.tick or "0",
                },
                {"filterType": "LOT_SIZE", "minQty": info.lot or "0", "maxQty": "9000000", "stepSize": info.lot or "0"},
            ]
            row: dict[str, Any] = {
                "symbol": info.native,
                "status": "TRADING",
                "baseAsset": info.base,
                "quoteAsset": info.quote,
                "filters": filters,
            }
            if not self.usdm:  # book quantities can be finer than the lot step (schemas/instruments.py)
                row["baseAssetPrecision"] = info.size_decimals or len(info.lot.partition(".")[2])
            if self.usdm:
                row.update(
                    {
                        "pair": info.native,
                        "contractType": "PERPETUAL",
                        "pricePrecision": len(info.tick.partition(".")[2]),
                        "quantityPrecision": len(info.lot.partition(".")[2]),
                    }
                )
            syms.append(row)
        if wanted and not syms:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.limits.limit,
                    }
                ],
                "symbols": syms,
            }
        )

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": now_ms()})

    def refusal(self, status: int, ip: str, retry_after_s: float) -> web.Response:
        if status == 418:
            until = now_ms() + int(retry_after_s * 1000)
            msg = (
                f"Way too much request weight used; IP banned until {until}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            msg = (
                f"Too many requests; current limit of IP({ip}) is {self.limits.limit} requests per minute. "
                "Please use WebSocket Streams for live updates to avoid polling the API."
            )
        return web.json_response({"code": -1003, "msg": msg}, status=status)

    # synthetic
    def synth_book(self, native, bids, asks, ts_ms, snapshot=False):
        book = self.book(native)
        if snapshot or not book.known:
            book.reset(bids, asks, book.seq or 1000)
            book.ts_ms = ts_ms
            self.mark_known()
            return
        lower = native.lower()
        U = book.seq + 1
        u = book.seq + 1 + (ts_ms % 3)  # an event may span several update ids
        pu = book.seq
        book.apply(bids, asks)
        book.seq, book.prev_seq, book.ts_ms = u, pu, ts_ms
        for key in (
            f"{lower}@depth@100ms",
            f"{lower}@depth",
            f"{lower}@depth@0ms",
            f"{lower}@depth@250ms",
            f"{lower}@depth@500ms",
        ):
            if not self.subscribed(key):
                continue
            data: dict[str, Any] = {"e": "depthUpdate", "E": ts_ms}
            if self.usdm:
                data["T"] = ts_ms
            data.update({"s": native, "U": U, "u": u})
            if self.usdm:
                data["pu"] = pu
            data["b"], data["a"] = bids, asks
            self._emit_stream(key, native, data, True)
        key = f"{lower}@bookTicker"
        if self.subscribed(key) and book.bids and book.asks:
            bb, ba = book.top_bids(1)[0], book.top_asks(1)[0]
            data = {"u": u, "s": native, "b": bb[0], "B": bb[1], "a": ba[0], "A": ba[1]}
            if self.usdm:
                data = {"e": "bookTicker", **data, "T": ts_ms, "E": ts_ms}
            self._emit_stream(key, native, data)

    def synth_trade(self, native, px, qty, buyer_maker, ts_ms, trade_id):
        values = {"E": ts_ms, "T": ts_ms, "s": native, "p": px, "q": qty, "m": buyer_maker, "M": True, "X": "MARKET"}
        values.update(t=trade_id, a=trade_id, f=trade_id, l=trade_id)
        for stream in ("trade", "aggTrade"):
            key = f"{native.lower()}@{stream}"
            if self.subscribed(key):
                fields = _TRADE_FIELDS[stream, self.usdm]
                self._emit_stream(key, native, {"e": stream, **{k: values[k] for k in fields}})

    def _emit_stream(self, key: str, native: str, data: dict, book_update: bool = False) -> None:
        """One combined-stream frame ``{"stream": key, "data": data}`` (raw: the bare payload)."""
        self.emit(key, dumps({"stream": key, "data": data}), native, book_update, raw=lambda: dumps(data))


#: the fields of a synthetic trade / aggTrade payload after "e", in the order the venue sends
#: them, on spot (False) and USD-M (True)
_TRADE_FIELDS = {
    ("trade", False): ("E", "s", "t", "p", "q", "T", "m", "M"),
    ("trade", True): ("E", "T", "s", "t", "p", "q", "X", "m"),
    ("aggTrade", False): ("E", "s", "a", "p", "q", "f", "l", "T", "m", "M"),
    ("aggTrade", True): ("E", "s", "a", "p", "q", "f", "l", "T", "m"),
}


def host_name(market: Market) -> str:
    return "binance-spot" if market is Market.SPOT else "binance-usdm"


def make_sim(market: Market, **kw: Any) -> BinanceSim:
    return BinanceSim(market, **kw)


def synthetic_symbol(base: str, market: Market) -> str:
    """The venue's spelling of a synthetic USDT instrument of ``market``."""
    return f"{base}USDT"

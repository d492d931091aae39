"""Bybit v5 on the wire, as the emulator plays it: /v5/public/<category> streams with
op-style subscribe, ping/pong and snapshot-then-delta books, REST orderbook and
instruments-info with the venue's IP limits. Independent of the collectors' adapter (it is
its test oracle); paths come from the venue declaration (collectors/exchanges/bybit_venue.py).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from collectors.emulator.ratelimit import VenueLimits
from collectors.emulator.sim import Client, InstrumentInfo, VenueSim, dumps, now_ms
from collectors.exchanges import bybit_venue
from schemas.model import Exchange, Market
from schemas.symbols import SymbolError, split_concatenated

BYBIT_LIMITS = VenueLimits(5.0, 600, None, None, 403, 600.0)
BYBIT_CATEGORIES = {"spot": Market.SPOT, "linear": Market.PERP, "inverse": Market.PERP, "option": Market.FUTURE}


class BybitSim(VenueSim):
    exchange = Exchange.BYBIT
    app_pings_required = True
    name = "bybit"
    limits = BYBIT_LIMITS

    def __init__(self, category: str = "linear", **kw: Any) -> None:
        super().__init__(**kw)
        self.category = category
        self.tickers: dict[str, dict[str, Any]] = {}
        self._ticker_meta: dict[str, tuple[int, int]] = {}
        self._u: dict[str, int] = {}

    def accept(self, client: Client) -> str | None:
        path = urlsplit(client.path).path.rstrip("/")
        head, _, cat = path.rpartition("/")
        if head != bybit_venue.STREAM_PREFIX or cat not in BYBIT_CATEGORIES:
            return f"unknown path {client.path}"
        return None

    def on_message(self, client: Client, text: str) -> None:
        try:
            msg = json.loads(text)
            op = msg.get("op")
        except (ValueError, AttributeError):
            client.offer(dumps({"success": False, "ret_msg": "Invalid request", "op": "", "conn_id": str(client.id)}))
            return
        rid = msg.get("req_id", "")
        cid = f"emu-{client.id}"
        if op == "ping":
            client.app_pings += 1
            client.last_app_ping = time.monotonic()
            if client.path.rstrip("/").endswith("/spot"):
                client.offer(dumps({"success": True, "ret_msg": "pong", "conn_id": cid, "req_id": rid, "op": "ping"}))
            else:
                client.offer(dumps({"req_id": rid, "op": "pong", "args": [str(now_ms())], "conn_id": cid}))
            return
        if op in ("subscribe", "unsubscribe"):
            args = msg.get("args") or []
            ok = isinstance(args, list) and all(isinstance(a, str) and a for a in args)
            client.offer(
                dumps(
                    {
                        "success": ok,
                        "ret_msg": "" if ok else f"Invalid topic {args!r}",
                        "conn_id": cid,
                        "req_id": rid,
                        "op": op,
                    }
                )
            )
            if ok:
                for a in args:
                    (self.subscribe if op == "subscribe" else self.unsubscribe)(client, a)
            return
        client.offer(
            dumps({"success": False, "ret_msg": f"unknown op {op!r}", "conn_id": cid, "req_id": rid, "op": op})
        )

    def frames_on_subscribe(self, key: str) -> list[str]:
        if key.startswith("orderbook."):
            _, depth, native = key.split(".", 2)
            book = self.books.get(native)
            if book is None or not book.known:
                return []
            n = int(depth) if depth.isdigit() else None
            return [
                dumps(
                    {
                        "topic": key,
                        "type": "snapshot",
                        "ts": book.ts_ms,
                        "data": {**_levels(native, book, n), "u": book.seq, "seq": book.aux_seq},
                        "cts": book.cts_ms or book.ts_ms,
                    }
                )
            ]
        if key.startswith("tickers.") and key in self.tickers:
            ts, cs = self._ticker_meta.get(key, (now_ms(), 0))
            return [dumps({"topic": key, "type": "snapshot", "data": self.tickers[key], "cs": cs, "ts": ts})]
        return []

    def catalog_entry(self, obj: dict[str, Any], market: Market) -> tuple[str, Market, str, str] | None:
        if not isinstance(obj.get("topic"), str):
            return None
        parts = obj["topic"].split(".")
        return obj["topic"], market, parts[-1], ".".join(parts[:-1])

    def route_key(self, obj: Any) -> str | None:
        return obj.get("topic") if isinstance(obj, dict) else None

    def ingest_ws(self, payload: bytes | str) -> None:
        self.frames_in += 1
        text = payload.decode() if isinstance(payload, bytes) else payload
        obj = json.loads(text)
        topic = obj.get("topic") if isinstance(obj, dict) else None
        if not topic:
            return
        data = obj.get("data")
        upd = False
        native = ""
        if topic.startswith("orderbook.") and isinstance(data, dict):
            native = data.get("s", "")
            self._note_symbol(native)
            snapshot = obj.get("type") == "snapshot" or int(data.get("u", 0)) == 1
            upd = self.replay_book(native, snapshot, data.get("b", ()), data.get("a", ()), data.get("u"))
            book = self.book(native)
            book.aux_seq = int(data.get("seq", book.aux_seq))
            book.ts_ms = int(obj.get("ts", book.ts_ms))
            book.cts_ms = int(obj.get("cts", book.cts_ms))
        elif topic.startswith("tickers.") and isinstance(data, dict):
            native = data.get("symbol", "")
            if obj.get("type") == "snapshot" or topic not in self.tickers:
                self.tickers[topic] = dict(data)
            else:
                self.tickers[topic].update(data)
            self._ticker_meta[topic] = (int(obj.get("ts", 0)), int(obj.get("cs", 0)))
        self.emit(topic, text, native, upd)

    def _note_symbol(self, native: str) -> None:
        if native and native not in self.instruments:
            try:
                base, quote = split_concatenated(
                    native.removesuffix("PERP") + ("USDC" if native.endswith("PERP") else "")
                )
            except SymbolError:
                base, quote = native, ""
            self.add_instrument(InstrumentInfo(native, BYBIT_CATEGORIES.get(self.category, Market.PERP), base, quote))

    book_query = ("symbol", "limit", 25)
    rest_paths = {
        bybit_venue.ORDERBOOK_PATH: "rest_book",
        bybit_venue.INSTRUMENTS_PATH: "_instruments",
        bybit_venue.TIME_PATH: "_time",
    }

    def unknown_book(self) -> dict[str, Any]:
        return {"retCode": 10001, "retMsg": "params error: symbol invalid", "result": {}, "time": now_ms()}

    def book_body(self, native: str, book: Any, n: int) -> dict[str, Any]:
        result = {**_levels(native, book, n), "ts": book.ts_ms, "u": book.seq, "seq": book.aux_seq, "cts": book.cts_ms}
        return {"retCode": 0, "retMsg": "OK", "result": result, "time": now_ms()}

    async def _instruments(self, request: web.Request) -> web.Response:
        cat = request.query.get("category", self.category)
        wanted = request.query.get("symbol")
        rows = []
        for info in self.instruments.values():
            if wanted and info.native != wanted:
                continue
            if cat != "spot" and (cat == "inverse") != (info.quote == "USD"):
                continue  # Bybit lists USD-quoted (inverse) contracts under inverse only
            row: dict[str, Any] = {
                "symbol": info.native,
                "status": "Trading",
                "baseCoin": info.base,
                "quoteCoin": info.quote,
                "priceFilter": {"tickSize": info.tick or "0"},
            }
            if cat == "spot":
                row["lotSizeFilter"] = {"basePrecision": info.lot or "0", "minOrderQty": info.lot or "0"}
            else:
                # inverse: sizes are 1-USD contracts, margined and settled in the coin
                inverse = cat == "inverse"
                row["contractType"] = "InversePerpetual" if inverse else "LinearPerpetual"
                row["settleCoin"] = info.base if inverse else info.quote
                row["lotSizeFilter"] = {"qtyStep": info.lot or "0", "minOrderQty": info.lot or "0"}
            rows.append(row)
        return web.json_response(
            {"retCode": 0, "retMsg": "OK", "result": {"category": cat, "list": rows}, "time": now_ms()}
        )

    async def _time(self, request: web.Request) -> web.Response:
        ms = now_ms()
        return web.json_response(
            {
                "retCode": 0,
                "retMsg": "OK",
                "result": {"timeSecond": str(ms // 1000), "timeNano": str(ms * 1_000_000)},
                "time": ms,
            }
        )

    def refusal(self, status: int, ip: str, retry_after_s: float) -> web.Response:
        return web.Response(status=status, text="access too frequent")

    def synth_book(self, native, bids, asks, ts_ms, snapshot=False):
        book = self.book(native)
        if snapshot or not book.known:
            book.reset(bids, asks, 1)
            book.aux_seq = 10_000
            book.ts_ms = book.cts_ms = ts_ms
            self.mark_known()
            return
        book.apply(bids, asks)
        book.seq += 1
        book.aux_seq += 1 + ts_ms % 5
        book.ts_ms = book.cts_ms = ts_ms
        for key in [k for k in self.subscribers if k.startswith("orderbook.") and k.endswith("." + native)]:
            if not self.subscribers[key]:
                continue
            text = dumps(
                {
                    "topic": key,
                    "type": "delta",
                    "ts": ts_ms,
                    "data": {"s": native, "b": bids, "a": asks, "u": book.seq, "seq": book.aux_seq},
                    "cts": ts_ms,
                }
            )
            self.emit(key, text, native, True)

    def synth_trade(self, native, px, qty, buyer_maker, ts_ms, trade_id):
        key = f"publicTrade.{native}"
        if self.subscribed(key):
            self.emit(
                key,
                dumps(
                    {
                        "topic": key,
                        "type": "snapshot",
                        "ts": ts_ms,
                        "data": [
                            {
                                "T": ts_ms,
                                "s": native,
                                "S": "Sell" if buyer_maker else "Buy",
                                "v": qty,
                                "p": px,
                                "L": "ZeroPlusTick",
                                "i": f"emu-{trade_id}",
                                "BT": False,
                            }
                        ],
                    }
                ),
                native,
            )


def host_name(market: Market) -> str:
    return BybitSim.name  # every category on one host


def make_sim(market: Market, **kw: Any) -> BybitSim:
    """The host, speaking the category a shard of ``market`` without symbols would use."""
    return BybitSim(bybit_venue.feed_for(market).name, **kw)


def synthetic_symbol(base: str, market: Market) -> str:
    """The venue's spelling of a synthetic USDT instrument of ``market``."""
    return f"{base}USDT"


def _levels(native: str, book: Any, n: int | None) -> dict[str, Any]:
    """The best ``n`` levels of each side as Bybit lists them (socket snapshot and REST book)."""
    return {"s": native, "b": [lv[:2] for lv in book.top_bids(n)], "a": [lv[:2] for lv in book.top_asks(n)]}

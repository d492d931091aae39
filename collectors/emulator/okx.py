"""OKX v5 on the wire, as the emulator plays it: /ws/v5/public (and /business) with
subscribe events, text ping/pong, book snapshots and updates with CRC32 checksums, REST books
and instruments (contract values by OKX's published rule). Independent of the collectors'
adapter (it is its test oracle); paths come from the venue declaration
(collectors/exchanges/okx_venue.py).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from collectors.emulator.book import okx_checksum
from collectors.emulator.ratelimit import VenueLimits
from collectors.emulator.sim import Client, InstrumentInfo, VenueSim, dumps, now_ms
from collectors.exchanges import okx_venue
from schemas.model import Exchange, Market

OKX_LIMITS = VenueLimits(2.0, 40, None, 429, 429, 2.0)
OKX_BOOK_CHANNELS = {"books": 400, "books-l2-tbt": 400, "books50-l2-tbt": 50}


#: Contract values the OKX emulator serves for a derivative no genuine instrument body names
#: (its captures carry no instruments body). OKX's published contract specifications:
#: inverse (coin-margined) contracts are 100 USD for BTC and 10 USD for every other coin;
#: linear USDT/USDC contracts are 0.01 BTC, 0.1 ETH and, for the coins listed here, their
#: OKX value; any other linear coin is served as 1 coin per contract (stated by ctVal, so a
#: consumer that applies ctVal reads the right amount whatever the value).
OKX_INVERSE_CTVAL_USD = {"BTC": "100"}
OKX_INVERSE_CTVAL_DEFAULT = "10"
OKX_LINEAR_CTVAL = {
    "BTC": "0.01",
    "ETH": "0.1",
    "SOL": "1",
    "XRP": "100",
    "DOGE": "1000",
    "LTC": "1",
    "UNI": "1",
    "ADA": "100",
}
OKX_LINEAR_CTVAL_DEFAULT = "1"
#: Quote currencies of OKX inverse contracts (sizes are USD contracts, margin in the coin).
OKX_INVERSE_QUOTES = ("USD",)


def okx_contract(inst_id: str, reference: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """ctVal, ctValCcy, ctType and settleCcy OKX lists for a SWAP/FUTURES instrument: from a
    genuine instruments body when one names it (OkxSim.load_reference), else the defaults
    above. Written independently of the collectors' and normalizer's unit code, which it tests."""
    ref = (reference or {}).get(inst_id)
    if ref is not None and ref.get("ctVal"):
        return {k: str(ref.get(k, "")) for k in ("ctVal", "ctValCcy", "ctType", "settleCcy")}
    base, quote = (inst_id.split("-") + ["", ""])[:2]
    if quote in OKX_INVERSE_QUOTES:
        return {
            "ctVal": OKX_INVERSE_CTVAL_USD.get(base, OKX_INVERSE_CTVAL_DEFAULT),
            "ctValCcy": quote,
            "ctType": "inverse",
            "settleCcy": base,
        }
    return {
        "ctVal": OKX_LINEAR_CTVAL.get(base, OKX_LINEAR_CTVAL_DEFAULT),
        "ctValCcy": base,
        "ctType": "linear",
        "settleCcy": quote,
    }


def okx_market(inst_id: str) -> Market:
    parts = inst_id.split("-")
    if parts[-1] == "SWAP":
        return Market.PERP
    if len(parts) == 3 and parts[2].isdigit():
        return Market.FUTURE
    return Market.SPOT


def okx_inst_type(inst_id: str) -> str:
    return {Market.PERP: "SWAP", Market.FUTURE: "FUTURES", Market.SPOT: "SPOT"}[okx_market(inst_id)]


class OkxSim(VenueSim):
    exchange = Exchange.OKX
    app_pings_required = True
    name = "okx"
    limits = OKX_LIMITS

    def __init__(self, *, checksums: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        #: OKX stopped sending checksums (always 0) in 2026; False emulates that.
        self.checksums = checksums
        self._has_seq: set[str] = set()
        #: genuine /api/v5/public/instruments rows by instId (load_reference): served as is
        self.reference: dict[str, dict[str, Any]] = {}

    def load_reference(self, body: bytes | str | dict[str, Any]) -> int:
        """Serve the venue's own instrument rows (ctVal, ticks, lots) for the instruments a
        genuine instruments body lists; returns how many rows it added."""
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        rows = [r for r in data.get("data", []) if isinstance(r, dict) and r.get("instId")]
        self.reference.update((r["instId"], r) for r in rows)
        return len(rows)

    @staticmethod
    def key(arg: dict[str, Any]) -> str:
        inst = arg.get("instId") or arg.get("instFamily") or arg.get("instType") or ""
        return f"{arg.get('channel', '')}:{inst}"

    def accept(self, client: Client) -> str | None:
        path = urlsplit(client.path).path.rstrip("/")
        if path not in (okx_venue.STREAM_PATH, okx_venue.BUSINESS_STREAM_PATH):
            return f"unknown path {client.path}"
        return None

    def on_message(self, client: Client, text: str) -> None:
        if text == "ping":
            client.app_pings += 1
            client.last_app_ping = time.monotonic()
            client.offer("pong")
            return
        cid = f"emu{client.id:08x}"
        try:
            msg = json.loads(text)
            op, args = msg.get("op"), msg.get("args")
        except (ValueError, AttributeError):
            client.offer(
                dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}", "connId": cid})
            )
            return
        if (
            op not in ("subscribe", "unsubscribe")
            or not isinstance(args, list)
            or not all(isinstance(a, dict) and a.get("channel") for a in args)
        ):
            client.offer(
                dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}", "connId": cid})
            )
            return
        for a in args:
            client.offer(dumps({"event": op, "arg": a, "connId": cid}))
            (self.subscribe if op == "subscribe" else self.unsubscribe)(client, self.key(a))

    def frames_on_subscribe(self, key: str) -> list[str]:
        channel, _, inst = key.partition(":")
        depth = OKX_BOOK_CHANNELS.get(channel)
        if depth is None:
            return []
        book = self.books.get(inst)
        if book is None or not book.known:
            return []
        bids, asks = book.top_bids(depth), book.top_asks(depth)
        d: dict[str, Any] = {
            "asks": asks,
            "bids": bids,
            "ts": str(book.ts_ms),
            "checksum": okx_checksum(bids, asks) if self.checksums else 0,
        }
        if inst in self._has_seq:
            d["prevSeqId"] = -1
            d["seqId"] = book.seq
        return [dumps({"arg": {"channel": channel, "instId": inst}, "action": "snapshot", "data": [d]})]

    synthetic_channels = ("books", "trades")

    def market_of(self, native: str, market: Market) -> Market:
        return okx_market(native)  # one host for every market: the instId tells

    def catalog_entry(self, obj: dict[str, Any], market: Market) -> tuple[str, Market, str, str] | None:
        if not isinstance(obj.get("arg"), dict) or "event" in obj:
            return None
        inst = obj["arg"].get("instId")
        if not inst:
            return None
        return self.key(obj["arg"]), okx_market(inst), inst, obj["arg"].get("channel", "")

    def route_key(self, obj: Any) -> str | None:
        if not isinstance(obj, dict) or "event" in obj or not isinstance(obj.get("arg"), dict):
            return None
        return self.key(obj["arg"])

    def ingest_ws(self, payload: bytes | str) -> None:
        self.frames_in += 1
        text = payload.decode() if isinstance(payload, bytes) else payload
        if text in ("pong", "ping"):
            return
        obj = json.loads(text)
        if not isinstance(obj, dict) or "event" in obj or not isinstance(obj.get("arg"), dict):
            return  # acks and errors are answers to a client, not market data
        arg = obj["arg"]
        key = self.key(arg)
        channel = arg.get("channel", "")
        inst = arg.get("instId", "")
        if inst:
            self._note_symbol(inst)
        upd = False
        if channel in OKX_BOOK_CHANNELS and obj.get("data"):
            d = obj["data"][0]
            if "seqId" in d:
                self._has_seq.add(inst)
            snapshot = obj.get("action") == "snapshot"
            upd = self.replay_book(inst, snapshot, d.get("bids", ()), d.get("asks", ()), d.get("seqId"))
            book = self.book(inst)
            book.ts_ms = int(d.get("ts", book.ts_ms))
        self.emit(key, text, inst, upd)

    def _note_symbol(self, inst: str) -> None:
        if inst not in self.instruments:
            parts = inst.split("-")
            self.add_instrument(InstrumentInfo(inst, okx_market(inst), parts[0], parts[1] if len(parts) > 1 else ""))

    book_query = ("instId", "sz", 1)
    rest_paths = {
        okx_venue.BOOKS_PATH: "rest_book",
        okx_venue.INSTRUMENTS_PATH: "_instruments",
        okx_venue.TIME_PATH: "_time",
    }

    def unknown_book(self) -> dict[str, Any]:
        return {"code": "51001", "msg": "Instrument ID does not exist", "data": []}

    def book_body(self, native: str, book: Any, n: int) -> dict[str, Any]:
        return {
            "code": "0",
            "msg": "",
            "data": [{"asks": book.top_asks(n), "bids": book.top_bids(n), "ts": str(book.ts_ms)}],
        }

    async def _instruments(self, request: web.Request) -> web.Response:
        want_type = request.query.get("instType", "")
        want_id = request.query.get("instId", "")
        rows = []
        for info in self.instruments.values():
            itype = okx_inst_type(info.native)
            if (want_type and itype != want_type) or (want_id and info.native != want_id):
                continue
            contract = (
                {"ctVal": "", "ctValCcy": "", "ctType": "", "settleCcy": ""}
                if itype == "SPOT"
                else okx_contract(info.native, self.reference)
            )
            rows.append(
                {
                    "instType": itype,
                    "instId": info.native,
                    "baseCcy": info.base if itype == "SPOT" else "",
                    "quoteCcy": info.quote if itype == "SPOT" else "",
                    **contract,
                    "uly": "" if itype == "SPOT" else f"{info.base}-{info.quote}",
                    "instFamily": "" if itype == "SPOT" else f"{info.base}-{info.quote}",
                    "tickSz": info.tick or "0",
                    "lotSz": info.lot or "0",
                    "minSz": info.lot or "0",
                    "state": "live",
                }
            )
        return web.json_response({"code": "0", "msg": "", "data": rows})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"code": "0", "msg": "", "data": [{"ts": str(now_ms())}]})

    def refusal(self, status: int, ip: str, retry_after_s: float) -> web.Response:
        return web.json_response({"code": "50011", "msg": "Too Many Requests", "data": []}, status=status)

    def synth_book(self, native, bids, asks, ts_ms, snapshot=False):
        okx_bids = [[p, q, "0", "1" if float(q) else "0"] for p, q in bids]
        okx_asks = [[p, q, "0", "1" if float(q) else "0"] for p, q in asks]
        book = self.book(native)
        self._has_seq.add(native)
        if snapshot or not book.known:
            book.reset(okx_bids, okx_asks, 1000)
            book.ts_ms = ts_ms
            self.mark_known()
            return
        prev = book.seq
        book.apply(okx_bids, okx_asks)
        book.seq = prev + 1 + ts_ms % 3
        book.ts_ms = ts_ms
        for channel in OKX_BOOK_CHANNELS:
            key = f"{channel}:{native}"
            if not self.subscribed(key):
                continue
            cs = book.okx_checksum() if self.checksums else 0
            self.emit(
                key,
                dumps(
                    {
                        "arg": {"channel": channel, "instId": native},
                        "action": "update",
                        "data": [
                            {
                                "asks": okx_asks,
                                "bids": okx_bids,
                                "ts": str(ts_ms),
                                "checksum": cs,
                                "prevSeqId": prev,
                                "seqId": book.seq,
                            }
                        ],
                    }
                ),
                native,
                True,
            )

    def synth_trade(self, native, px, qty, buyer_maker, ts_ms, trade_id):
        key = f"trades:{native}"
        if self.subscribed(key):
            self.emit(
                key,
                dumps(
                    {
                        "arg": {"channel": "trades", "instId": native},
                        "data": [
                            {
                                "instId": native,
                                "tradeId": str(trade_id),
                                "px": px,
                                "sz": qty,
                                "side": "sell" if buyer_maker else "buy",
                                "ts": str(ts_ms),
                                "count": "1",
                            }
                        ],
                    }
                ),
                native,
            )


def host_name(market: Market) -> str:
    return OkxSim.name  # every market on one host


def make_sim(market: Market, **kw: Any) -> OkxSim:
    return OkxSim(**kw)


def synthetic_symbol(base: str, market: Market) -> str:
    """The venue's spelling of a synthetic USDT instrument of ``market``."""
    return f"{base}-USDT" + ("-SWAP" if market is Market.PERP else "")

"""Venue protocol simulators: what Binance, Bybit and OKX say on the wire.

Each simulator owns the venue's side of one "host": who is connected from which source
IP and subscribed to what, the venue's current books (emulator/book.py), REST endpoints
with the venue's rate-limit behaviour, and the venue-specific formats of subscription
acks, pongs, snapshots pushed on subscribe and synthetic frames. Frames from a capture
are forwarded byte for byte; only frames the venue would generate on its own (a snapshot
for a late subscriber, a REST depth answer) are rendered here.

Faults are injected at this level because this is where a real venue fails: a gap is a
book update that one subscriber set never receives while the venue's book moves on; a
malformed frame is an extra, truncated copy of a real one (so a test can count it in the
DLQ while the book stays whole); a drop aborts the TCP connection.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from collectors.emulator.book import EmuBook, okx_checksum
from collectors.emulator.ratelimit import VenueLimits, VenueRateLimiter
from schemas.model import Exchange, Market
from schemas.symbols import SymbolError, split_concatenated

_ids = itertools.count(1)

# Queue depths (frames) at which the replay waits for a slow subscriber, and the level
# it must drain to. A subscriber that does not drain within slow_client_s is dropped,
# as venues drop consumers that cannot keep up.
HIGH_WATER = 20_000
LOW_WATER = 5_000


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class Client:
    """Server side of one websocket connection."""

    sim: VenueSim
    ws: Any
    ip: str
    path: str
    id: int = field(default_factory=lambda: next(_ids))
    subs: set[str] = field(default_factory=set)
    raw: bool = False  # Binance /ws/<stream>: frames unwrapped from {"stream","data"}
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    frames_sent: int = 0  # market-data frames (incl. snapshots pushed on subscribe)
    queued: int = 0  # every message queued to the client (acks, pongs too)
    malformed_sent: int = 0
    app_pings: int = 0
    last_app_ping: float = field(default_factory=time.monotonic)
    subscribed_ever: set[str] = field(default_factory=set)
    close_reason: str = ""

    def offer(self, text: str) -> None:
        self.queued += 1
        self.queue.put_nowait(text)
        if self.queue.qsize() > HIGH_WATER:
            self.drained.clear()
            self.sim.pressure.add(self)

    def abort(self, reason: str = "dropped by emulator") -> None:
        self.close_reason = reason
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "venue": self.sim.name,
            "ip": self.ip,
            "path": self.path,
            "subscriptions": sorted(self.subscribed_ever),
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "frames_sent": self.frames_sent,
            "queued": self.queued,
            "malformed_sent": self.malformed_sent,
            "app_pings": self.app_pings,
            "close_reason": self.close_reason,
        }


@dataclass
class InstrumentInfo:
    native: str
    market: Market
    base: str
    quote: str
    tick: str = ""
    lot: str = ""
    #: decimals the venue renders quantities with; Binance spot prints them at the base asset's
    #: precision ("25.42618900"), which its exchangeInfo declares as baseAssetPrecision
    size_decimals: int = 0


#: Subscription keys whose frames are self-contained events (each one a venue event with its
#: own id) and so can be resent to a late subscriber without breaking a book's sequence.
_REPLAYABLE = ("@trade", "@aggtrade", "@bookticker", "trades:", "publictrade.")


def _replayable(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in _REPLAYABLE)


def _step_from_strings(values: Iterable[str]) -> str:
    """Smallest step the observed decimal strings need (captures carry no exchange info)."""
    d = 0
    for v in values:
        frac = v.partition(".")[2].rstrip("0")
        d = max(d, len(frac))
    return "1" if d == 0 else "0." + "0" * (d - 1) + "1"


class VenueSim:
    exchange: Exchange
    name: str
    limits: VenueLimits
    #: the venue expects application-level pings (Bybit {"op":"ping"}, OKX "ping")
    app_pings_required = False

    def __init__(
        self,
        *,
        server_ping_s: float | None = 20.0,
        app_ping_timeout_s: float | None = None,
        limits: VenueLimits | None = None,
        slow_client_s: float = 30.0,
    ) -> None:
        self.server_ping_s = server_ping_s
        self.app_ping_timeout_s = app_ping_timeout_s
        self.slow_client_s = slow_client_s
        if limits is not None:
            self.limits = limits
        self.ratelimiter = VenueRateLimiter(self.limits)
        self.books: dict[str, EmuBook] = {}
        self.instruments: dict[str, InstrumentInfo] = {}
        self.subscribers: dict[str, set[Client]] = {}
        self.clients: dict[int, Client] = {}
        self.closed_clients: list[Client] = []
        self.pressure: set[Client] = set()
        self.drop_next: dict[str, int] = {}
        self.gaps_injected: dict[str, int] = {}
        self.malformed_pending = 0
        self.malformed_symbol: str | None = None
        self.malformed_sent = 0
        self.frames_in = 0
        self.frames_out = 0
        self.rest_log: list[dict[str, Any]] = []
        self.first_subscriber = asyncio.Event()
        #: playback waiting for a key's first (or next) subscriber: key -> futures
        self._sub_waiters: dict[str, list[asyncio.Future]] = {}
        self.barrier = set()
        self._settled = asyncio.Event()
        self.refuse_until = 0.0
        self.refused = 0
        self.book_known = asyncio.Condition()
        #: frames of event streams (trades, best bid/offer) resent to a new subscriber of the
        #: key: up to this many of the latest (0: none, as a venue does). A test fault facility:
        #: a collector restarted after kill -9 gets again what its dead predecessor received
        #: but may not have published (the overlap), and must publish it with the same ids.
        self.replay_recent = 0
        self._recent: dict[str, collections.deque] = {}
        self.replayed = 0

    # -- connections ---------------------------------------------------------------------------

    def accept(self, client: Client) -> str | None:
        """Validate the path and apply URL subscriptions; an error string refuses the socket."""
        return None

    def on_open(self, client: Client) -> None:
        self.clients[client.id] = client

    def on_close(self, client: Client) -> None:
        client.closed_at = time.time()
        self.clients.pop(client.id, None)
        self.closed_clients.append(client)
        for key in client.subs:
            subs = self.subscribers.get(key)
            if subs:
                subs.discard(client)
        self.pressure.discard(client)
        client.drained.set()

    def on_message(self, client: Client, text: str) -> None:  # pragma: no cover - per venue
        raise NotImplementedError

    def subscribe(self, client: Client, key: str) -> None:
        client.subs.add(key)
        client.subscribed_ever.add(key)
        self.subscribers.setdefault(key, set()).add(client)
        # Rendered and queued synchronously, so nothing broadcast later can overtake it.
        for frame in self.frames_on_subscribe(key):
            client.offer(frame)
            client.frames_sent += 1
        for text, raw in self._recent.get(key, ()):
            client.offer(raw() if (client.raw and raw) else text)
            client.frames_sent += 1
            self.replayed += 1
        self.first_subscriber.set()
        for fut in self._sub_waiters.pop(key, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait_subscriber(self, key: str, timeout: float | None = None) -> bool:
        """Until ``key`` has a live subscriber (True) or ``timeout`` seconds passed (False).

        Woken by subscribe() itself, so a playback holding for a late collector costs
        nothing while it waits."""
        if self.subscribed(key):
            return True
        fut = asyncio.get_running_loop().create_future()
        self._sub_waiters.setdefault(key, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            waiters = self._sub_waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)
        return self.subscribed(key)

    def unsubscribe(self, client: Client, key: str) -> None:
        client.subs.discard(key)
        subs = self.subscribers.get(key)
        if subs:
            subs.discard(client)

    def frames_on_subscribe(self, key: str) -> list[str]:
        return []

    # -- book sync barrier (venues whose clients fetch snapshots over REST) ----------------------

    #: natives whose book the capture just (re)installed while a subscriber still has to fetch
    #: its snapshot; a capture playback holds until they did (see settle()).
    barrier: set[str]

    def _sync_done(self, native: str) -> bool:
        return True

    async def settle(self, timeout: float) -> None:
        """Hold the playback until every subscriber waiting for a snapshot of a book the
        capture just installed has been answered (or ``timeout`` passed). The answer is then
        the capture's own snapshot, whatever the replay speed: at speed max the REST
        round-trip would otherwise let the rest of the capture play first and fold every
        diff into a later snapshot, so the raw stream would depend on the speed."""
        deadline = time.monotonic() + timeout
        while self.barrier:
            for native in list(self.barrier):
                if self._sync_done(native):
                    self.barrier.discard(native)
            if not self.barrier:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                self.barrier.clear()
                return
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), min(left, 0.25))
            except TimeoutError:
                pass

    def live_clients(self) -> list[Client]:
        return list(self.clients.values())

    # -- broadcasting --------------------------------------------------------------------------

    def emit(
        self, key: str, text: str, native: str = "", book_update: bool = False, raw: Callable[[], str] | None = None
    ) -> None:
        if self.replay_recent and not book_update and _replayable(key):
            ring = self._recent.get(key)
            if ring is None:
                ring = self._recent[key] = collections.deque(maxlen=self.replay_recent)
            ring.append((text, raw))
        subs = self.subscribers.get(key)
        if not subs:
            return
        if book_update and native in self.drop_next:
            n = self.drop_next[native] - 1
            if n <= 0:
                del self.drop_next[native]
            else:
                self.drop_next[native] = n
            self.gaps_injected[native] = self.gaps_injected.get(native, 0) + 1
            return
        if self.malformed_pending and (self.malformed_symbol in (None, native)):
            self.malformed_pending -= 1
            bad = text[: max(1, len(text) // 2)]
            for c in subs:
                c.offer(bad)
                c.malformed_sent += 1
            self.malformed_sent += 1
        raw_text = None
        for c in subs:
            if c.raw:
                if raw_text is None:
                    raw_text = raw() if raw else text
                c.offer(raw_text)
            else:
                c.offer(text)
            c.frames_sent += 1
        self.frames_out += len(subs)

    def subscribed(self, key: str) -> bool:
        return bool(self.subscribers.get(key))

    async def relieve(self) -> None:
        """Wait for every over-full subscriber to drain (or drop it)."""
        while self.pressure:
            c = self.pressure.pop()
            if c.queue.qsize() <= LOW_WATER or c.closed_at is not None:
                continue
            try:
                await asyncio.wait_for(c.drained.wait(), self.slow_client_s)
            except TimeoutError:
                c.abort("slow consumer")

    # -- faults --------------------------------------------------------------------------------

    def inject_gap(self, native: str, count: int = 1) -> None:
        self.drop_next[native] = self.drop_next.get(native, 0) + count

    def inject_malformed(self, count: int = 1, native: str | None = None) -> None:
        self.malformed_pending += count
        self.malformed_symbol = native

    def drop(self, ip: str | None = None) -> int:
        victims = [c for c in self.clients.values() if ip is None or c.ip == ip]
        for c in victims:
            c.abort()
        return len(victims)

    # -- books ---------------------------------------------------------------------------------

    def book(self, native: str) -> EmuBook:
        b = self.books.get(native)
        if b is None:
            b = self.books[native] = EmuBook()
        return b

    async def _notify_book(self) -> None:
        async with self.book_known:
            self.book_known.notify_all()

    def mark_known(self) -> None:
        if self.shadow:
            return
        asyncio.get_running_loop().create_task(self._notify_book())

    #: a scratch copy that reads a capture ahead of playback (Emulator.play_capture) to learn
    #: its instruments: no waiters to wake
    shadow = False

    async def wait_book(self, native: str, timeout: float) -> EmuBook | None:
        b = self.books.get(native)
        if b is not None and b.known:
            return b
        try:
            async with self.book_known:
                await asyncio.wait_for(
                    self.book_known.wait_for(lambda: native in self.books and self.books[native].known), timeout
                )
        except TimeoutError:
            return None
        return self.books[native]

    # -- capture input -------------------------------------------------------------------------

    def ingest_ws(self, payload: bytes | str) -> None:  # pragma: no cover - per venue
        raise NotImplementedError

    def route_key(self, obj: Any) -> str | None:
        """Subscription key a venue frame is delivered under (None: not market data)."""
        return None

    def ingest_rest(self, url: str, payload: bytes | str) -> None:
        """A REST answer recorded in the capture (e.g. the depth snapshot)."""

    # -- REST ----------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, Callable, Callable[[web.Request], int]]]:
        """(path, handler, weight(request))."""
        return []

    def refusal(self, status: int, ip: str, retry_after_s: float) -> web.Response:
        return web.json_response({"error": "rate limited"}, status=status)

    def build_app(self) -> web.Application:
        app = web.Application()
        for path, handler, weight in self.routes():
            app.router.add_get(path, self._limited(handler, weight))
        return app

    def _limited(self, handler: Callable, weight_fn: Callable[[web.Request], int]) -> Callable:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            ip = request.remote or ""
            weight = weight_fn(request)
            now = time.time()
            decision = self.ratelimiter.check(ip, weight, now)
            entry = {
                "ts": now,
                "ip": ip,
                "path": request.path,
                "query": dict(request.query),
                "weight": weight,
                "status": decision.status,
            }
            self.rest_log.append(entry)
            if decision.status != 200:
                resp = self.refusal(decision.status, ip, decision.retry_after_s)
            else:
                resp = await handler(request)
                entry["status"] = resp.status
            resp.headers.update(decision.headers)
            return resp

        return wrapped

    # -- instruments ---------------------------------------------------------------------------

    def add_instrument(self, info: InstrumentInfo) -> None:
        if info.native not in self.instruments or not self.instruments[info.native].tick:
            self.instruments[info.native] = info

    def learn_steps(self, native: str, levels: Iterable[Iterable[str]]) -> None:
        info = self.instruments.get(native)
        if info is None or info.tick:
            return
        lv = [list(x) for x in levels]
        info.tick = _step_from_strings(x[0] for x in lv)
        info.lot = _step_from_strings(x[1] for x in lv)
        info.size_decimals = max((len(str(x[1]).partition(".")[2]) for x in lv), default=0)

    def stats(self) -> dict[str, Any]:
        return {
            "venue": self.name,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "clients": [c.record() for c in list(self.clients.values()) + self.closed_clients],
            "gaps_injected": dict(self.gaps_injected),
            "malformed_sent": self.malformed_sent,
            "refused_handshakes": self.refused,
            "rest": {
                ip: {"statuses": dict(r.statuses), "max_used": r.max_used} for ip, r in self.ratelimiter.ips.items()
            },
        }

    # -- synthetic hooks -----------------------------------------------------------------------

    def synth_book(
        self, native: str, bids: list[list[str]], asks: list[list[str]], ts_ms: int, snapshot: bool = False
    ) -> None:  # pragma: no cover - per venue
        raise NotImplementedError

    def synth_trade(
        self, native: str, px: str, qty: str, buyer_maker: bool, ts_ms: int, trade_id: int
    ) -> None:  # pragma: no cover - per venue
        raise NotImplementedError


# ============================================================================== Binance

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
        self.name = "binance-usdm" if self.usdm else "binance-spot"
        self.limits = BINANCE_USDM_LIMITS if self.usdm else BINANCE_SPOT_LIMITS
        self.rest_prefix = "/fapi/v1" if self.usdm else "/api/v3"
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
        if path == "/stream":
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
            client.offer(_dumps({"error": {"code": 3, "msg": "Invalid JSON"}}))
            return
        params = msg.get("params") or []
        if method == "SUBSCRIBE":
            for s in params:
                self.subscribe(client, str(s))
            client.offer(_dumps({"result": None, "id": rid}))
        elif method == "UNSUBSCRIBE":
            for s in params:
                self.unsubscribe(client, str(s))
            client.offer(_dumps({"result": None, "id": rid}))
        elif method == "LIST_SUBSCRIPTIONS":
            client.offer(_dumps({"result": sorted(client.subs), "id": rid}))
        else:
            client.offer(
                _dumps({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid})
            )

    def server_shutdown(self) -> None:
        text = _dumps({"e": "serverShutdown", "E": _now_ms()})
        for c in self.clients.values():
            c.offer(text)

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
        self.emit(stream, text, native, upd, raw=lambda: _dumps(data))

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
            body["E"] = book.ts_ms or _now_ms()
            body["T"] = book.ts_ms or _now_ms()
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
                "serverTime": _now_ms(),
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
        return web.json_response({"serverTime": _now_ms()})

    def refusal(self, status: int, ip: str, retry_after_s: float) -> web.Response:
        if status == 418:
            until = _now_ms() + int(retry_after_s * 1000)
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
            self.emit(key, _dumps({"stream": key, "data": data}), native, True, raw=lambda d=data: _dumps(d))
        key = f"{lower}@bookTicker"
        if self.subscribed(key) and book.bids and book.asks:
            bb, ba = book.top_bids(1)[0], book.top_asks(1)[0]
            data = {"u": u, "s": native, "b": bb[0], "B": bb[1], "a": ba[0], "A": ba[1]}
            if self.usdm:
                data = {"e": "bookTicker", **data, "T": ts_ms, "E": ts_ms}
            self.emit(key, _dumps({"stream": key, "data": data}), native, raw=lambda d=data: _dumps(d))

    def synth_trade(self, native, px, qty, buyer_maker, ts_ms, trade_id):
        lower = native.lower()
        key = f"{lower}@trade"
        if self.subscribed(key):
            data = {
                "e": "trade",
                "E": ts_ms,
                "s": native,
                "t": trade_id,
                "p": px,
                "q": qty,
                "T": ts_ms,
                "m": buyer_maker,
                "M": True,
            }
            if self.usdm:
                data = {
                    "e": "trade",
                    "E": ts_ms,
                    "T": ts_ms,
                    "s": native,
                    "t": trade_id,
                    "p": px,
                    "q": qty,
                    "X": "MARKET",
                    "m": buyer_maker,
                }
            self.emit(key, _dumps({"stream": key, "data": data}), native, raw=lambda d=data: _dumps(d))
        key = f"{lower}@aggTrade"
        if self.subscribed(key):
            data = {
                "e": "aggTrade",
                "E": ts_ms,
                "s": native,
                "a": trade_id,
                "p": px,
                "q": qty,
                "f": trade_id,
                "l": trade_id,
                "T": ts_ms,
                "m": buyer_maker,
            }
            if not self.usdm:
                data["M"] = True
            self.emit(key, _dumps({"stream": key, "data": data}), native, raw=lambda d=data: _dumps(d))


# ============================================================================== Bybit

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
        if head != "/v5/public" or cat not in BYBIT_CATEGORIES:
            return f"unknown path {client.path}"
        return None

    def on_message(self, client: Client, text: str) -> None:
        try:
            msg = json.loads(text)
            op = msg.get("op")
        except (ValueError, AttributeError):
            client.offer(_dumps({"success": False, "ret_msg": "Invalid request", "op": "", "conn_id": str(client.id)}))
            return
        rid = msg.get("req_id", "")
        cid = f"emu-{client.id}"
        if op == "ping":
            client.app_pings += 1
            client.last_app_ping = time.monotonic()
            if client.path.rstrip("/").endswith("/spot"):
                client.offer(_dumps({"success": True, "ret_msg": "pong", "conn_id": cid, "req_id": rid, "op": "ping"}))
            else:
                client.offer(_dumps({"req_id": rid, "op": "pong", "args": [str(_now_ms())], "conn_id": cid}))
            return
        if op in ("subscribe", "unsubscribe"):
            args = msg.get("args") or []
            ok = isinstance(args, list) and all(isinstance(a, str) and a for a in args)
            client.offer(
                _dumps(
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
            _dumps({"success": False, "ret_msg": f"unknown op {op!r}", "conn_id": cid, "req_id": rid, "op": op})
        )

    def frames_on_subscribe(self, key: str) -> list[str]:
        if key.startswith("orderbook."):
            _, depth, native = key.split(".", 2)
            book = self.books.get(native)
            if book is None or not book.known:
                return []
            n = int(depth) if depth.isdigit() else None
            return [
                _dumps(
                    {
                        "topic": key,
                        "type": "snapshot",
                        "ts": book.ts_ms,
                        "data": {
                            "s": native,
                            "b": [lv[:2] for lv in book.top_bids(n)],
                            "a": [lv[:2] for lv in book.top_asks(n)],
                            "u": book.seq,
                            "seq": book.aux_seq,
                        },
                        "cts": book.cts_ms or book.ts_ms,
                    }
                )
            ]
        if key.startswith("tickers.") and key in self.tickers:
            ts, cs = self._ticker_meta.get(key, (_now_ms(), 0))
            return [_dumps({"topic": key, "type": "snapshot", "data": self.tickers[key], "cs": cs, "ts": ts})]
        return []

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
            book = self.book(native)
            if obj.get("type") == "snapshot" or int(data.get("u", 0)) == 1:
                book.reset(data.get("b", ()), data.get("a", ()), int(data.get("u", 0)))
                self.learn_steps(native, list(data.get("b", ())) + list(data.get("a", ())))
                self.mark_known()
            elif book.known:
                book.apply(data.get("b", ()), data.get("a", ()))
                book.seq = int(data.get("u", book.seq))
                upd = True
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

    def routes(self):
        return [
            ("/v5/market/orderbook", self._orderbook, lambda r: 1),
            ("/v5/market/instruments-info", self._instruments, lambda r: 1),
            ("/v5/market/time", self._time, lambda r: 1),
        ]

    async def _orderbook(self, request: web.Request) -> web.Response:
        native = request.query.get("symbol", "")
        book = (
            await self.wait_book(native, timeout=30.0) if native in self.books or native in self.instruments else None
        )
        if book is None:
            return web.json_response(
                {"retCode": 10001, "retMsg": "params error: symbol invalid", "result": {}, "time": _now_ms()}
            )
        try:
            n = int(request.query.get("limit", 25))
        except ValueError:
            n = 25
        return web.json_response(
            {
                "retCode": 0,
                "retMsg": "OK",
                "result": {
                    "s": native,
                    "b": [lv[:2] for lv in book.top_bids(n)],
                    "a": [lv[:2] for lv in book.top_asks(n)],
                    "ts": book.ts_ms,
                    "u": book.seq,
                    "seq": book.aux_seq,
                    "cts": book.cts_ms,
                },
                "time": _now_ms(),
            }
        )

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
            {"retCode": 0, "retMsg": "OK", "result": {"category": cat, "list": rows}, "time": _now_ms()}
        )

    async def _time(self, request: web.Request) -> web.Response:
        ms = _now_ms()
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
            text = _dumps(
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
                _dumps(
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


# ============================================================================== OKX

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
        if path not in ("/ws/v5/public", "/ws/v5/business"):
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
                _dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}", "connId": cid})
            )
            return
        if (
            op not in ("subscribe", "unsubscribe")
            or not isinstance(args, list)
            or not all(isinstance(a, dict) and a.get("channel") for a in args)
        ):
            client.offer(
                _dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}", "connId": cid})
            )
            return
        for a in args:
            client.offer(_dumps({"event": op, "arg": a, "connId": cid}))
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
        return [_dumps({"arg": {"channel": channel, "instId": inst}, "action": "snapshot", "data": [d]})]

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
            book = self.book(inst)
            if "seqId" in d:
                self._has_seq.add(inst)
            if obj.get("action") == "snapshot":
                book.reset(d.get("bids", ()), d.get("asks", ()), int(d.get("seqId", 0)))
                self.learn_steps(inst, list(d.get("bids", ())) + list(d.get("asks", ())))
                self.mark_known()
            elif book.known:
                book.apply(d.get("bids", ()), d.get("asks", ()))
                book.seq = int(d.get("seqId", book.seq))
                upd = True
            book.ts_ms = int(d.get("ts", book.ts_ms))
        self.emit(key, text, inst, upd)

    def _note_symbol(self, inst: str) -> None:
        if inst not in self.instruments:
            parts = inst.split("-")
            self.add_instrument(InstrumentInfo(inst, okx_market(inst), parts[0], parts[1] if len(parts) > 1 else ""))

    def routes(self):
        return [
            ("/api/v5/market/books", self._books, lambda r: 1),
            ("/api/v5/public/instruments", self._instruments, lambda r: 1),
            ("/api/v5/public/time", self._time, lambda r: 1),
        ]

    async def _books(self, request: web.Request) -> web.Response:
        inst = request.query.get("instId", "")
        book = await self.wait_book(inst, 30.0) if inst in self.books or inst in self.instruments else None
        if book is None:
            return web.json_response({"code": "51001", "msg": "Instrument ID does not exist", "data": []})
        try:
            n = int(request.query.get("sz", 1))
        except ValueError:
            n = 1
        return web.json_response(
            {
                "code": "0",
                "msg": "",
                "data": [{"asks": book.top_asks(n), "bids": book.top_bids(n), "ts": str(book.ts_ms)}],
            }
        )

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
        return web.json_response({"code": "0", "msg": "", "data": [{"ts": str(_now_ms())}]})

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
                _dumps(
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
                _dumps(
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


def make_sim(exchange: Exchange | str, market: Market | str = Market.SPOT, **kw: Any) -> VenueSim:
    ex, mk = Exchange(exchange), Market(market)
    if ex is Exchange.BINANCE:
        return BinanceSim(mk, **kw)
    if ex is Exchange.BYBIT:
        return BybitSim({Market.SPOT: "spot", Market.PERP: "linear", Market.FUTURE: "linear"}[mk], **kw)
    return OkxSim(**kw)


__all__ = [
    "BinanceSim",
    "BybitSim",
    "Client",
    "InstrumentInfo",
    "OkxSim",
    "VenueSim",
    "binance_depth_weight",
    "make_sim",
    "okx_contract",
    "okx_market",
]

"""What every venue simulator shares: the server side of a websocket connection (Client),
the venue host base class (VenueSim: connections, subscriptions, books, fan-out with
back-pressure, fault injection, rate-limited REST) and the instrument model of a host.

Each venue's own wire protocol is its module beside this one (binance.py, bybit.py,
okx.py): what it says on the wire, written from the venues' documentation independently of
the collectors' adapters, since the emulator is the adapters' test oracle. Frames from a
capture are forwarded byte for byte; only frames the venue would generate on its own (a
snapshot for a late subscriber, a REST depth answer) are rendered by the venue module.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from collectors.emulator.book import EmuBook
from collectors.emulator.ratelimit import VenueLimits, VenueRateLimiter
from schemas.model import Exchange, Market

_ids = itertools.count(1)

# Queue depths (frames) at which the replay waits for a slow subscriber, and the level
# it must drain to. A subscriber that does not drain within slow_client_s is dropped,
# as venues drop consumers that cannot keep up.
HIGH_WATER = 20_000
LOW_WATER = 5_000


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def now_ms() -> int:
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


def query_int(request: web.Request, name: str, default: int) -> int:
    """An integer REST query parameter; absent or not a number: the venue's default."""
    try:
        return int(request.query.get(name, default))
    except ValueError:
        return default


def _replayable(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in _REPLAYABLE)


def step_from_strings(values: Iterable[str]) -> str:
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

    def replay_book(self, native: str, snapshot: bool, bids: Any, asks: Any, seq: Any) -> bool:
        """A recorded book message replayed into the host's book: a snapshot replaces it (and
        teaches the instrument's steps), an update applies once the book is known; ``seq`` is the
        message's update id (None: not sent). True when an update was applied."""
        book = self.book(native)
        if snapshot:
            book.reset(bids, asks, int(seq) if seq is not None else 0)
            self.learn_steps(native, list(bids) + list(asks))
            self.mark_known()
            return False
        if not book.known:
            return False
        book.apply(bids, asks)
        if seq is not None:
            book.seq = int(seq)
        return True

    #: a rest_book request: (parameter naming the symbol, depth parameter, default depth)
    book_query: tuple[str, str, int] = ("symbol", "limit", 100)

    async def rest_book(self, request: web.Request) -> web.Response:
        """The REST order book of a host that declares ``book_query``: the named symbol's best
        levels once the host has its book (``book_body``), else the venue's refusal
        (``unknown_book``: a symbol the host does not know, or no book within 30 s)."""
        param, depth_param, default_depth = self.book_query
        native = request.query.get(param, "")
        known = native in self.books or native in self.instruments
        book = await self.wait_book(native, 30.0) if known else None
        if book is None:
            return web.json_response(self.unknown_book())
        return web.json_response(self.book_body(native, book, query_int(request, depth_param, default_depth)))

    def unknown_book(self) -> Any:
        raise NotImplementedError

    def book_body(self, native: str, book: EmuBook, n: int) -> Any:
        raise NotImplementedError

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

    def catalog_entry(self, obj: dict[str, Any], market: Market) -> tuple[str, Market, str, str] | None:
        """(subscription key, market, native symbol, channel) of a capture frame, for the
        emulator's catalog of what it can serve (None: not market data); ``market`` is the
        host's market as the capture's feed says."""
        return None

    #: channels a synthetic feed serves (the collectors' shards subscribe exactly these)
    synthetic_channels: tuple[str, ...] = ()

    def market_of(self, native: str, market: Market) -> Market:
        """The market of a venue symbol on this host (``market`` unless the venue mixes them)."""
        return market

    def ingest_rest(self, url: str, payload: bytes | str) -> None:
        """A REST answer recorded in the capture (e.g. the depth snapshot)."""

    # -- REST ----------------------------------------------------------------------------------

    #: REST path -> name of its handler method, for a host whose every request weighs 1
    rest_paths: Mapping[str, str] = {}

    def routes(self) -> list[tuple[str, Callable, Callable[[web.Request], int]]]:
        """(path, handler, weight(request)); a host with other weights overrides this."""
        return [(path, getattr(self, name), lambda r: 1) for path, name in self.rest_paths.items()]

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
        info.tick = step_from_strings(x[0] for x in lv)
        info.lot = step_from_strings(x[1] for x in lv)
        info.size_decimals = max((len(str(x[1]).partition(".")[2]) for x in lv), default=0)

    def stats(self) -> dict[str, Any]:
        return {
            "venue": self.name,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "queued": sum(c.queue.qsize() for c in self.clients.values()),
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

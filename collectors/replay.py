"""Exchange emulator: each venue's websocket + REST protocol on 127.0.0.1, fed by genuine
captures or synthetic load, with faults on command.

Tests, demos (`ticklake up --replay PATH`) and load tests point the real collectors at it
instead of the venues. Per venue "host" (Binance spot, Binance USD-M, Bybit, OKX) it runs
a websocket server and a REST server speaking that venue's protocol (emulator/<venue>.py,
named by the venue registry); the venue's own rules for sequencing, snapshots-on-subscribe,
pings, rate-limit headers and 429/418/403 per *source IP* apply, so the collector's
egress-IP logic is exercised for real (bind 127.0.0.2…127.0.0.11, the emulator sees those as peers).

Feeds:
* a capture (any format collectors/capture.py reads): frames are forwarded byte for byte
  at the recorded pace times ``speed`` (or as fast as subscribers read, ``speed=None``);
  the emulator replays the capture's snapshot and deltas into its own book so a client
  that (re)connects at any point gets a snapshot consistent with the stream;
* synthetic load (emulator/synthetic.py): valid frames for N symbols at a chosen rate.

A feed starts when its venue gets its first subscriber, and a capture feed then holds each
frame until its stream (subscription key) has a subscriber: a capture spanning several
shards (OKX spot + swap + futures, or several captures at once) is delivered whole however
late, in whatever order, and at whatever speed the shards subscribe. Stats count frames
served and unserved; the platform declares a replay complete only when none went unserved.
Control: Python methods below, or the HTTP control API (`/_emulator/...`) for operators.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from collectors.config import Endpoints, ShardConfig
from collectors.emulator.sim import LOW_WATER, Client, VenueSim
from collectors.emulator.synthetic import (
    SyntheticMarket,
    SyntheticSpec,
    default_symbols,
)
from collectors.emulator.venues import make_sim, sim_name
from collectors.exchanges import registry
from schemas.model import Exchange, Market
from schemas.symbols import SymbolError, canonical_symbol

HOST = "127.0.0.1"


@dataclass
class Feed:
    name: str
    sim: VenueSim
    task: asyncio.Task | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    items: int = 0
    errors: int = 0
    paused_until: float = 0.0
    error: str = ""
    #: market-data frames handed to at least one subscriber / to nobody (lost to the collectors)
    served: int = 0
    unserved: int = 0
    unserved_keys: dict[str, int] = field(default_factory=dict)
    #: subscription key the playback is holding for (no collector subscribed to it yet)
    waiting_for: str = ""
    held_s: float = 0.0

    @property
    def complete(self) -> bool:
        """Exhausted with every market-data frame served to a subscriber and every line read."""
        return self.finished.is_set() and not self.error and self.unserved == 0 and self.errors == 0

    def stats(self) -> dict[str, Any]:
        worst = sorted(self.unserved_keys.items(), key=lambda kv: -kv[1])[:10]
        return {
            "name": self.name,
            "venue": self.sim.name,
            "items": self.items,
            "errors": self.errors,
            "finished": self.finished.is_set(),
            "error": self.error,
            "served": self.served,
            "unserved": self.unserved,
            "unserved_keys": dict(worst),
            "waiting_for": self.waiting_for,
            "held_s": round(self.held_s, 3),
            "complete": self.complete,
        }


async def _guarded_feed(feed: Feed, coro: Any) -> None:
    """Every feed's playback: a failure keeps the emulator up (the feed reports why it
    stopped), and the feed counts as finished however it ends."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        feed.error = f"{type(exc).__name__}: {exc}"
    finally:
        feed.finished.set()


async def _sit_out_pause(feed: Feed) -> float:
    """Wait out a paused feed; returns the seconds paused (the pace resumes from there)."""
    pause_start = time.monotonic()
    await asyncio.sleep(feed.paused_until - pause_start)
    return time.monotonic() - pause_start


async def _sleep_until(due: float) -> None:
    """Pace to a monotonic deadline (sub-millisecond waits are not worth a sleep)."""
    delay = due - time.monotonic()
    if delay > 0.0005:
        await asyncio.sleep(delay)


async def _yield_to_clients(sim: VenueSim, n: int) -> None:
    """Let the server send: drain full client queues, else yield every 64 frames."""
    if sim.pressure:
        await sim.relieve()
    elif n % 64 == 0:
        await asyncio.sleep(0)


@dataclass
class _Hosts:
    ws_server: Any = None
    ws_port: int = 0
    rest_runner: web.AppRunner | None = None
    rest_port: int = 0


def _listen(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(512)
    s.setblocking(False)
    return s


class Emulator:
    def __init__(
        self,
        host: str = HOST,
        *,
        server_ping_timeout_s: float | None = 60.0,
        hold_timeout_s: float | None = None,
        sync_timeout_s: float = 30.0,
        **sim_options: Any,
    ) -> None:
        """``sim_options``: the connection settings every venue host is created with
        (VenueSim's server_ping_s, app_ping_timeout_s, slow_client_s; their defaults are
        VenueSim's); a venue(**kw) call may override them for one host."""
        self.host = host
        #: how long a capture playback holds a frame for a subscriber of its key (None: as long
        #: as it takes); a frame released after the timeout goes to nobody and is counted unserved
        self.hold_timeout_s = hold_timeout_s
        #: longest hold for subscribers fetching the snapshot of a book the capture installed
        self.sync_timeout_s = sync_timeout_s
        self.server_ping_timeout_s = server_ping_timeout_s
        self.sim_options = sim_options
        self.sims: dict[str, VenueSim] = {}
        self._hosts: dict[str, _Hosts] = {}
        self.feeds: list[Feed] = []
        self._control: web.AppRunner | None = None
        self.control_port = 0
        self._started = False
        self._tasks: set[asyncio.Task] = set()
        #: symbols (native) per (exchange, market) the feeds carry, for shard_configs()
        self.catalog: dict[tuple[Exchange, Market], dict[str, None]] = {}
        self.channels: dict[tuple[Exchange, Market], dict[str, None]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def venue(self, exchange: Exchange | str, market: Market | str = Market.SPOT, **kw: Any) -> VenueSim:
        """The simulator of a venue host, created on first use (before or after start())."""
        name = sim_name(exchange, market)
        sim = self.sims.get(name)
        if sim is None:
            if self._started:
                raise RuntimeError(f"venue {name} must be added before start()")
            sim = self.sims[name] = make_sim(exchange, market, **{**self.sim_options, **kw})
        return sim

    async def start(self) -> Emulator:
        if self._started:
            return self
        for name, sim in self.sims.items():
            hosts = self._hosts[name] = _Hosts()
            hosts.ws_server = await serve(
                lambda ws, sim=sim: self._ws_handler(sim, ws),
                sock=_listen(self.host),
                process_request=lambda conn, req, sim=sim: self._refusing(sim, conn),
                compression=None,
                ping_interval=sim.server_ping_s,
                ping_timeout=self.server_ping_timeout_s,
                max_size=1 << 20,
                write_limit=1 << 20,
            )
            hosts.ws_port = hosts.ws_server.sockets[0].getsockname()[1]
            runner = web.AppRunner(sim.build_app(), access_log=None)
            await runner.setup()
            sock = _listen(self.host)
            await web.SockSite(runner, sock).start()
            hosts.rest_runner, hosts.rest_port = runner, sock.getsockname()[1]
        control = web.AppRunner(self._control_app(), access_log=None)
        await control.setup()
        sock = _listen(self.host)
        await web.SockSite(control, sock).start()
        self._control, self.control_port = control, sock.getsockname()[1]
        self._started = True
        for feed in self.feeds:
            if feed.task is None:
                feed.task = asyncio.create_task(feed._coro, name=f"feed {feed.name}")  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        for feed in self.feeds:
            if feed.task is not None:
                feed.task.cancel()
        for t in list(self._tasks):
            t.cancel()
        for sim in self.sims.values():
            sim.drop()
        for hosts in self._hosts.values():
            if hosts.ws_server is not None:
                hosts.ws_server.close()
                await hosts.ws_server.wait_closed()
            if hosts.rest_runner is not None:
                await hosts.rest_runner.cleanup()
        if self._control is not None:
            await self._control.cleanup()
        for feed in self.feeds:
            if feed.task is not None:
                try:
                    await feed.task
                except (asyncio.CancelledError, Exception):
                    pass
        self._started = False

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- addresses -------------------------------------------------------------------------------

    def ws_base(self, exchange: Exchange | str, market: Market | str) -> str:
        """Host-only base URL, as the adapters expect (they append the venue's paths)."""
        return f"ws://{self.host}:{self._hosts[sim_name(exchange, market)].ws_port}"

    def rest_base(self, exchange: Exchange | str, market: Market | str) -> str:
        return f"http://{self.host}:{self._hosts[sim_name(exchange, market)].rest_port}"

    def endpoints(self, exchange: Exchange | str, market: Market | str) -> Endpoints:
        return Endpoints(self.ws_base(exchange, market), self.rest_base(exchange, market))

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}/_emulator"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"control": self.control_url, "venues": {}}
        for (ex, mk), syms in self.catalog.items():
            ep = self.endpoints(ex, mk)
            out["venues"][f"{ex}:{mk}"] = {"ws": ep.ws, "rest": ep.rest, "symbols": list(syms)}
        return out

    # -- websocket side --------------------------------------------------------------------------

    async def _ws_handler(self, sim: VenueSim, ws: ServerConnection) -> None:
        peer = ws.remote_address[0] if ws.remote_address else ""
        client = Client(sim, ws, peer, ws.request.path if ws.request else "/")
        sim.on_open(client)
        err = sim.accept(client)
        if err:
            sim.on_close(client)
            await ws.close(1008, err[:120])
            return
        writer = asyncio.create_task(self._writer(client))
        pinger = (
            asyncio.create_task(self._app_ping_watch(client))
            if sim.app_ping_timeout_s and sim.app_pings_required
            else None
        )
        try:
            async for msg in ws:
                sim.on_message(client, msg if isinstance(msg, str) else msg.decode(errors="replace"))
        except ConnectionClosed:
            pass
        finally:
            sim.on_close(client)
            for t in (writer, pinger):
                if t is not None:
                    t.cancel()

    def _refusing(self, sim: VenueSim, conn: ServerConnection) -> Any:
        """Handshake answered 503 while the venue is "down" (refuse())."""
        if time.monotonic() < sim.refuse_until:
            sim.refused += 1
            return conn.respond(503, "Service Unavailable\n")
        return None

    async def _writer(self, client: Client) -> None:
        q, ws = client.queue, client.ws
        try:
            while True:
                msg = await q.get()
                await ws.send(msg)
                if not client.drained.is_set() and q.qsize() <= LOW_WATER:
                    client.drained.set()
        except ConnectionClosed:
            client.drained.set()

    async def _app_ping_watch(self, client: Client) -> None:
        """Bybit/OKX cut connections that stop pinging; so does the emulator when asked to."""
        limit = client.sim.app_ping_timeout_s or 0
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            if time.monotonic() - client.last_app_ping > limit:
                client.close_reason = f"no application ping for {limit}s"
                await client.ws.close(1000, "ping timeout")
                return

    # -- feeds -----------------------------------------------------------------------------------

    def _add_feed(self, feed: Feed, coro: Any) -> Feed:
        feed._coro = _guarded_feed(feed, coro)  # type: ignore[attr-defined]
        self.feeds.append(feed)
        if self._started:
            feed.task = asyncio.create_task(feed._coro, name=f"feed {feed.name}")  # type: ignore[attr-defined]
        return feed

    def _note(self, exchange: Exchange, market: Market, symbols: Iterable[str], channels: Iterable[str] = ()) -> None:
        self.catalog.setdefault((exchange, market), {}).update(dict.fromkeys(symbols))
        self.channels.setdefault((exchange, market), {}).update(dict.fromkeys(channels))

    def play_records(
        self,
        sim: VenueSim,
        records: Iterable[Any],
        *,
        speed: float | None = None,
        name: str = "records",
        gate: asyncio.Event | None | bool = None,
        hold: bool | None = None,
        keys: list[str | None] | None = None,
        required: set[str] | None = None,
    ) -> Feed:
        """Replay (recv_ts_us, kind, url, payload) records into ``sim`` (see capture.Record).

        ``gate``: the feed starts when this event is set; None = on the venue's first
        subscriber; False = at once.

        ``hold`` (default: on unless ``gate`` is False): a market-data frame whose subscription
        key is in ``required`` (default: every key the records carry) and has no subscriber
        is held, with the rest of the playback behind it, until a collector subscribes to it
        (or ``hold_timeout_s`` passes). So a replay delivers every event whatever the number
        of shards, the order and delay in which they connect, a reconnect in the middle, and
        the speed: the first subscriber of a venue no longer starts a playback that the other
        shards of that venue join late. ``keys``: each record's subscription key (None: not
        market data), if the caller has already parsed them."""
        records = list(records)
        if keys is None:
            keys = [self._route_key(sim, rec) for rec in records]
        if hold is None:
            hold = gate is not False
        if required is None:
            required = {k for k in keys if k}
        feed = Feed(name, sim)
        feed.keys = keys  # type: ignore[attr-defined]
        return self._add_feed(
            feed, self._run_records(feed, records, keys, required if hold else set(), speed, self._gate(sim, gate))
        )

    @staticmethod
    def _route_key(sim: VenueSim, rec: Any) -> str | None:
        if rec.kind != "ws":
            return None
        try:
            return sim.route_key(json.loads(rec.payload)) or None
        except ValueError:
            return None

    @staticmethod
    def _gate(sim: VenueSim, gate: asyncio.Event | None | bool) -> asyncio.Event | None:
        if gate is None or gate is True:
            return sim.first_subscriber
        return None if gate is False else gate

    @staticmethod
    def capture_keys(feed: Feed) -> set[str]:
        """Subscription keys of every market-data frame a capture feed will replay."""
        return {k for k in getattr(feed, "keys", ()) if k}

    async def wait_subscribed(self, venue: str, keys: Iterable[str] | int, timeout: float = 30.0) -> bool:
        """Until the venue has live subscribers for all ``keys`` (or for that many keys)."""
        sim = self.sim(venue)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = {k for k, subs in sim.subscribers.items() if subs}
            if (len(have) >= keys) if isinstance(keys, int) else set(keys) <= have:
                return True
            await asyncio.sleep(0.02)
        return False

    def play_capture(
        self,
        path: str | Path,
        *,
        speed: float | None = None,
        gate: asyncio.Event | None | bool = None,
        bybit_category: str | None = None,
    ) -> Feed:
        """Serve one capture file (format auto-detected by collectors/capture.py)."""
        from collectors import capture

        info = capture.detect(path)
        if info.exchange is None:
            raise ValueError(f"{path}: capture venue unknown ({info.format})")
        records = list(capture.read(info))
        ex = info.exchange
        flavor = (bybit_category if ex is Exchange.BYBIT else None) or info.flavor
        feed = registry.feed_of_flavor(ex, flavor)
        if feed is None:  # e.g. Bybit's legacy pre-v5 API
            raise ValueError(f"{path}: {ex} capture of the {flavor!r} feed cannot be served")
        market = feed.market
        sim = self.venue(ex, market)
        key_natives = self._catalog_records(sim, market, records)
        self._learn_instruments(sim, market, records)
        keys = [self._route_key(sim, rec) for rec in records]
        # Held for: every key of an instrument a collector shard can carry (shard_configs()
        # leaves out natives without a canonical symbol; nothing would ever subscribe them).
        required = {k for k in keys if k and _routable(*key_natives.get(k, (ex, market, "")))}
        feed = self.play_records(sim, records, speed=speed, name=str(path), gate=gate, keys=keys, required=required)
        feed.info = info  # type: ignore[attr-defined]
        feed.records = records  # type: ignore[attr-defined]
        return feed

    @staticmethod
    def _learn_instruments(sim: VenueSim, market: Market, records: list[Any]) -> None:
        """Read the capture ahead on a scratch copy of the venue so its exchange-info endpoints
        list every instrument (ticks and lots from the capture's first snapshots) before
        playback: collectors and the normalizer then get the same reference data whenever
        they ask, so scales (and event ids) do not depend on when a shard started."""
        shadow = make_sim(sim.exchange, market)
        shadow.shadow = True
        for rec in records:
            try:
                if rec.kind == "ws":
                    shadow.ingest_ws(rec.payload)
                elif rec.kind == "rest":
                    shadow.ingest_rest(rec.url, rec.payload)
            except (ValueError, KeyError, TypeError):
                continue
        for info in shadow.instruments.values():
            sim.add_instrument(info)

    def _catalog_records(
        self, sim: VenueSim, market: Market, records: list[Any]
    ) -> dict[str, tuple[Exchange, Market, str]]:
        """Which instruments and channels a capture carries, per market (OKX mixes markets);
        returns subscription key -> (exchange, market, native symbol)."""
        out: dict[str, tuple[Exchange, Market, str]] = {}
        for rec in records:
            if rec.kind != "ws":
                continue
            try:
                obj = json.loads(rec.payload)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            entry = sim.catalog_entry(obj, market)
            if entry is not None:
                key, mk, native, channel = entry
                self._note(sim.exchange, mk, [native], [channel])
                out[key] = (sim.exchange, mk, native)
        return out

    async def _run_records(
        self,
        feed: Feed,
        records: list[Any],
        keys: list[str | None],
        required: set[str],
        speed: float | None,
        gate: asyncio.Event | None,
    ) -> None:
        sim = feed.sim
        if gate is not None:
            await gate.wait()
        t0 = time.monotonic()
        ts0: int | None = None
        shift = 0.0
        n = 0
        for rec, key in zip(records, keys, strict=True):
            if rec.kind not in ("ws", "rest"):
                continue
            if feed.paused_until > time.monotonic():
                shift += await _sit_out_pause(feed)
            if key is not None and key in required and not sim.subscribed(key):
                # Nobody to hand this event to yet: hold the playback (like a pause, the
                # recorded pace resumes from here) until a collector subscribes it. A
                # stream that timed out is not waited for again (its frames go unserved).
                hold_start = time.monotonic()
                feed.waiting_for = key
                if not await sim.wait_subscriber(key, self.hold_timeout_s):
                    required = required - {key}
                feed.waiting_for = ""
                held = time.monotonic() - hold_start
                feed.held_s += held
                shift += held
            if speed is not None and rec.recv_ts_us:
                if ts0 is None:
                    ts0 = rec.recv_ts_us
                due = t0 + shift + (rec.recv_ts_us - ts0) / 1e6 / speed
                await _sleep_until(due)
            if key is not None:
                if sim.subscribed(key):
                    feed.served += 1
                else:
                    feed.unserved += 1
                    feed.unserved_keys[key] = feed.unserved_keys.get(key, 0) + 1
            try:
                if rec.kind == "ws":
                    sim.ingest_ws(rec.payload)
                else:
                    sim.ingest_rest(rec.url, rec.payload)
            except (ValueError, KeyError, TypeError):
                feed.errors += 1  # a capture line the emulator cannot interpret is skipped
            if sim.barrier and required:
                # A book the capture just installed: its subscribers fetch their snapshot
                # of exactly this state before the next diff plays (speed-independent sync).
                hold_start = time.monotonic()
                await sim.settle(self.sync_timeout_s)
                held = time.monotonic() - hold_start
                feed.held_s += held
                shift += held
            feed.items += 1
            n += 1
            await _yield_to_clients(sim, n)

    def play_synthetic(
        self,
        exchange: Exchange | str,
        market: Market | str,
        spec: SyntheticSpec | None = None,
        *,
        n_symbols: int = 10,
        rate: float | None = None,
        frames: int | None = None,
        gate: asyncio.Event | None | bool = None,
    ) -> Feed:
        ex, mk = Exchange(exchange), Market(market)
        spec = spec or SyntheticSpec(default_symbols(ex, mk, n_symbols), rate=rate, frames=frames)
        sim = self.venue(ex, mk)
        for s in spec.symbols:
            self._note(ex, sim.market_of(s, mk), [s], sim.synthetic_channels)
        feed = Feed(f"synthetic {sim.name} x{len(spec.symbols)}", sim)
        market_model = SyntheticMarket(sim, spec)
        market_model.start(int(time.time() * 1000))
        feed.model = market_model  # type: ignore[attr-defined]
        return self._add_feed(feed, self._run_synthetic(feed, market_model, spec, self._gate(sim, gate)))

    async def _run_synthetic(
        self, feed: Feed, model: SyntheticMarket, spec: SyntheticSpec, gate: asyncio.Event | None
    ) -> None:
        sim = feed.sim
        if gate is not None:
            await gate.wait()
        t0 = time.monotonic()
        shift = 0.0
        n = 0
        while spec.frames is None or n < spec.frames:
            if feed.paused_until > time.monotonic():
                shift += await _sit_out_pause(feed)
            if spec.rate is not None:
                due = t0 + shift + n / spec.rate
                await _sleep_until(due)
            model.step(time.time_ns() // 1_000_000)
            n += 1
            feed.items = n
            await _yield_to_clients(sim, n)

    async def wait_finished(self, timeout: float | None = None) -> bool:
        """True when every feed is exhausted (a finite capture or frames=N synthetic feed)."""
        try:
            await asyncio.wait_for(asyncio.gather(*(f.finished.wait() for f in self.feeds)), timeout)
            return True
        except TimeoutError:
            return False

    async def drained(self, timeout: float = 10.0) -> bool:
        """True once every queued frame has been written to the sockets."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.queue.empty() for sim in self.sims.values() for c in sim.clients.values()):
                return True
            await asyncio.sleep(0.02)
        return False

    # -- faults and control ----------------------------------------------------------------------

    def sim(self, venue: str) -> VenueSim:
        try:
            return self.sims[venue]
        except KeyError:
            raise KeyError(f"no venue {venue!r}; have {sorted(self.sims)}") from None

    def drop_connections(self, venue: str | None = None, ip: str | None = None) -> int:
        """Abort websocket connections (all, one venue's, or one source IP's)."""
        return sum(s.drop(ip) for name, s in self.sims.items() if venue in (None, name))

    def inject_gap(self, venue: str, native_symbol: str, count: int = 1) -> None:
        """The next ``count`` book updates of a symbol are withheld from every subscriber."""
        self.sim(venue).inject_gap(native_symbol, count)

    def inject_malformed(self, venue: str, count: int = 1, native_symbol: str | None = None) -> None:
        """Each of the next ``count`` frames is preceded by a truncated copy (invalid JSON)."""
        self.sim(venue).inject_malformed(count, native_symbol)

    def rest_faults(self, venue: str, ip: str, statuses: list[tuple[int, float]]) -> None:
        """Answer the next REST requests from ``ip`` with these (status, Retry-After) pairs."""
        self.sim(venue).ratelimiter.force(ip, statuses)

    def throttle(self, venue: str, ip: str, seconds: float) -> None:
        self.sim(venue).ratelimiter.throttle(ip, seconds, time.time())

    def ban(self, venue: str, ip: str, seconds: float) -> None:
        self.sim(venue).ratelimiter.ban(ip, seconds, time.time())

    def refuse(self, venue: str, seconds: float) -> None:
        """Drop every connection and refuse websocket handshakes (HTTP 503) for ``seconds``."""
        sim = self.sim(venue)
        sim.refuse_until = time.monotonic() + seconds
        sim.drop()

    def pause(self, seconds: float, venue: str | None = None) -> None:
        """Stop emitting data for ``seconds`` (connections stay open and answer pings)."""
        until = time.monotonic() + seconds
        for f in self.feeds:
            if venue in (None, f.sim.name):
                f.paused_until = until

    def server_shutdown(self, venue: str) -> None:
        sim = self.sim(venue)
        if hasattr(sim, "server_shutdown"):
            sim.server_shutdown()

    def stats(self) -> dict[str, Any]:
        """``finished``: every feed exhausted and every frame written to its socket (nothing
        left inside the emulator). ``complete``: finished, and every market-data frame of
        every capture was handed to a subscriber (``unserved`` counts the ones that were
        not); only then has a replay delivered the whole capture to the collectors.
        ``waiting_for``: keys playback is holding for, i.e. no collector subscribed yet."""
        exhausted = all(f.finished.is_set() for f in self.feeds) if self.feeds else False
        venues = {n: s.stats() for n, s in self.sims.items()}
        queued = sum(v["queued"] for v in venues.values())
        finished = exhausted and queued == 0
        return {
            "venues": venues,
            "feeds": [f.stats() for f in self.feeds],
            "exhausted": exhausted,
            "queued": queued,
            "finished": finished,
            "complete": finished and all(f.complete for f in self.feeds if hasattr(f, "keys")),
            "served": sum(f.served for f in self.feeds),
            "unserved": sum(f.unserved for f in self.feeds),
            "waiting_for": sorted({f"{f.sim.name} {f.waiting_for}" for f in self.feeds if f.waiting_for}),
        }

    def _control_app(self) -> web.Application:
        app = web.Application()

        async def handle(request: web.Request) -> web.Response:
            op = request.match_info["op"]
            q: dict[str, Any] = dict(request.query)
            if request.can_read_body:
                try:
                    q.update(await request.json())
                except ValueError:
                    return web.json_response({"error": "body must be JSON"}, status=400)
            try:
                if op == "stats":
                    return web.json_response(self.stats())
                if op == "drop":
                    return web.json_response({"dropped": self.drop_connections(q.get("venue"), q.get("ip"))})
                if op == "gap":
                    self.inject_gap(q["venue"], q["symbol"], int(q.get("count", 1)))
                elif op == "malformed":
                    self.inject_malformed(q["venue"], int(q.get("count", 1)), q.get("symbol"))
                elif op == "throttle":
                    self.throttle(q["venue"], q["ip"], float(q.get("seconds", 5)))
                elif op == "ban":
                    self.ban(q["venue"], q["ip"], float(q.get("seconds", 60)))
                elif op == "faults":
                    pairs = [(int(s.split(":")[0]), float(s.split(":")[1])) for s in str(q["statuses"]).split(",")]
                    self.rest_faults(q["venue"], q["ip"], pairs)
                elif op == "refuse":
                    self.refuse(q["venue"], float(q.get("seconds", 5)))
                elif op == "pause":
                    self.pause(float(q.get("seconds", 5)), q.get("venue"))
                elif op == "shutdown":
                    self.server_shutdown(q["venue"])
                else:
                    return web.json_response({"error": f"unknown operation {op!r}"}, status=404)
            except KeyError as exc:
                return web.json_response({"error": f"missing or unknown {exc}"}, status=400)
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"ok": True})

        app.router.add_route("*", "/_emulator/{op}", handle)
        return app

    # -- collector configuration -----------------------------------------------------------------

    def shard_configs(self, prefix: str = "replay", **overrides: Any) -> list[ShardConfig]:
        """One shard per (venue, market) the feeds carry, pointed at this emulator, subscribing
        the channels the capture recorded (so nothing is asked that the capture cannot answer)."""
        shards = []
        for (ex, mk), natives in sorted(self.catalog.items()):
            canon = []
            for n in natives:
                try:
                    canon.append(canonical_symbol(ex, mk, n))
                except (SymbolError, ValueError):
                    continue
            if not canon:
                continue
            ep = self.endpoints(ex, mk)
            opts = adapter_options_for(ex, mk, list(self.channels.get((ex, mk), {})))
            shards.append(
                ShardConfig(
                    name=f"{prefix}-{ex}-{mk}",
                    exchange=ex,
                    market=mk,
                    symbols=tuple(dict.fromkeys(canon)),
                    ws_url=ep.ws,
                    rest_url=ep.rest,
                    adapter_options={**opts, **overrides.pop("adapter_options", {})},
                    **overrides,
                )
            )
        return shards


def _routable(exchange: Exchange, market: Market, native: str) -> bool:
    """A native symbol shard_configs() gives a shard (it has a canonical spelling)."""
    try:
        canonical_symbol(exchange, market, native)
    except (SymbolError, ValueError):
        return False
    return bool(native)


def adapter_options_for(exchange: Exchange, market: Market, channels: list[str]) -> dict[str, Any]:
    """Adapter settings that subscribe exactly what a capture recorded (the venue declares how
    its adapter is told)."""
    channels = [c for c in channels if c]
    return registry.venue(exchange).channel_options(channels) if channels else {}


def capture_emulator(
    path: str | Path | Iterable[str | Path], speed: float | str | None = None, *, host: str = HOST, **emulator_kw: Any
) -> Emulator:
    """An emulator (not started) with a feed for one capture, or for every servable capture
    in a directory. ``speed``: replay-rate multiplier (1 = as recorded) or None / "max"."""
    from collectors import capture

    spd = None if speed in (None, "max") else float(speed)
    emu = Emulator(host, **emulator_kw)
    paths: list[Path] = []
    items = [path] if isinstance(path, (str, Path)) else list(path)
    for p in map(Path, items):
        if p.is_dir():
            paths += [f for f in sorted(p.rglob("*")) if f.is_file() and _servable(f, capture)]
        else:
            paths.append(p)
    if not paths:
        raise ValueError(f"no servable capture in {path}")
    for p in paths:
        emu.play_capture(p, speed=spd)
    return emu


async def serve_capture(
    path: str | Path | Iterable[str | Path], speed: float | str | None = None, *, host: str = HOST, **emulator_kw: Any
) -> Emulator:
    """Start an emulator serving one capture, or every capture in a directory.

    ``speed``: a replay-rate multiplier (1 = as recorded), or None / "max" for as fast as the
    collectors read. Returns the started Emulator: ``endpoints(exchange, market)`` gives the
    base URLs, ``shard_configs()`` collector shards pointed at it, ``wait_finished()`` (or
    ``stats()["finished"]`` / GET <control_url>/stats) tells when every capture is exhausted,
    so the platform can treat the hours they cover as complete. Stop it with ``stop()``.
    """
    return await capture_emulator(path, speed, host=host, **emulator_kw).start()


def _servable(path: Path, capture: Any) -> bool:
    """A file the emulator can serve: a known capture format with venue frames and times.
    Cryptofeed captures are served once, from their .ws file (the .http file rides along)."""
    if ".http." in path.name:
        return False
    try:
        info = capture.detect(path)
    except (capture.CaptureError, OSError, ValueError):
        return False
    if info.format == "tardis_fixture" or info.exchange is None:
        return False  # unordered single frames without receive times
    return registry.feed_of_flavor(info.exchange, info.flavor) is not None  # e.g. not Bybit pre-v5


# -- command line ------------------------------------------------------------------------------------


def _parse_synthetic(text: str) -> tuple[str, str, int, float | None]:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError("synthetic load is EXCHANGE:MARKET:N_SYMBOLS[:RATE]")
    rate = None if len(parts) == 3 or parts[3] in ("", "max") else float(parts[3])
    return parts[0], parts[1], int(parts[2]), rate


async def _serve_main(args: argparse.Namespace) -> int:
    emu_kw = {"server_ping_s": args.server_ping, "hold_timeout_s": args.hold_timeout}
    if args.paths:
        emu = capture_emulator(args.paths, args.speed, host=args.host, **emu_kw)
    else:
        emu = Emulator(args.host, **emu_kw)
    for ex, mk, n, rate in args.synthetic:
        emu.play_synthetic(ex, mk, n_symbols=n, rate=rate, frames=args.frames, gate=False if args.start_now else None)
    await emu.start()
    info = emu.describe()
    info["shards"] = [s.to_dict() for s in emu.shard_configs()]
    text = json.dumps(info, indent=2)
    if args.state_file:
        Path(args.state_file).write_text(text)
    print(text, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emu.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m collectors.replay", description="Serve exchange captures or synthetic load on 127.0.0.1"
    )
    ap.add_argument("paths", nargs="*", help="capture files or directories")
    ap.add_argument("--speed", default="max", help="replay speed multiplier, or 'max'")
    ap.add_argument(
        "--synthetic",
        action="append",
        type=_parse_synthetic,
        default=[],
        help="EXCHANGE:MARKET:N_SYMBOLS[:RATE] synthetic load (repeatable)",
    )
    ap.add_argument("--frames", type=int, default=None, help="stop synthetic feeds after N frames")
    ap.add_argument("--start-now", action="store_true", help="do not wait for a subscriber")
    ap.add_argument("--host", default=HOST)
    ap.add_argument("--server-ping", type=float, default=20.0)
    ap.add_argument(
        "--hold-timeout",
        type=float,
        default=None,
        help="seconds a capture frame waits for a subscriber of its stream before it is "
        "released to nobody (counted unserved); default: wait as long as it takes",
    )
    ap.add_argument("--state-file", help="write the endpoints JSON here too")
    args = ap.parse_args(argv)
    if not args.paths and not args.synthetic:
        ap.error("give capture paths and/or --synthetic")
    return asyncio.run(_serve_main(args))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Emulator", "Feed", "SyntheticSpec", "adapter_options_for", "capture_emulator", "serve_capture", "sim_name"]

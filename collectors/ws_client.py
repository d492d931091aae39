"""One websocket session to a venue, bound to an egress IP, with a silence watchdog.

The `websockets` library answers the venue's protocol pings (Binance pings every 20 s
and drops us after a minute without a pong) and sends its own, which catches a dead TCP
path. What it cannot see is a venue that keeps the socket open but stops sending data;
the watchdog closes such a session so the caller reconnects and resyncs. Application
pings (Bybit {"op":"ping"}, OKX "ping") are the adapter's business: they are just sends.

Reconnecting is the caller's loop (runner.py): a session is one attempt, so a fresh
adapter and fresh books go with every new session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


@dataclass(frozen=True, slots=True)
class WsSettings:
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    close_timeout_s: float = 2.0
    #: no frame at all for this long -> the session is closed as silent
    watchdog_s: float = 30.0
    #: frames buffered by the library before it stops reading the socket
    max_queue: int = 1024
    max_size: int | None = 16 * 1024 * 1024


class SessionEnded(Exception):
    """Why a session stopped; ``reason`` goes to logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def now_us() -> int:
    return time.time_ns() // 1000


class WsSession:
    def __init__(self, ws: ClientConnection, url: str, local_ip: str, settings: WsSettings) -> None:
        self.ws = ws
        self.url = url
        self.local_ip = local_ip
        self.settings = settings
        self.opened_at = time.monotonic()
        self.last_frame_at = self.opened_at
        self.frames_in = 0
        self.end_reason = ""
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer {url[:60]}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"ws-watchdog {url[:60]}")

    @classmethod
    async def open(cls, url: str, local_ip: str = "", settings: WsSettings | None = None) -> WsSession:
        settings = settings or WsSettings()
        kwargs = {"local_addr": (local_ip, 0)} if local_ip else {}
        ws = await connect(
            url,
            open_timeout=settings.open_timeout_s,
            ping_interval=settings.ping_interval_s,
            ping_timeout=settings.ping_timeout_s,
            close_timeout=settings.close_timeout_s,
            max_queue=settings.max_queue,
            max_size=settings.max_size,
            proxy=None,
            **kwargs,
        )
        return cls(ws, url, local_ip, settings)

    @property
    def local_address(self) -> tuple[str, int] | None:
        return self.ws.local_address

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.opened_at

    def send(self, payload: str) -> None:
        """Queue a message; sends keep their order (subscribe before ping)."""
        self._outbox.put_nowait(payload)

    async def _write_loop(self) -> None:
        while True:
            msg = await self._outbox.get()
            if msg is None:
                return
            try:
                await self.ws.send(msg)
            except ConnectionClosed:
                return
            except Exception as exc:  # noqa: BLE001 - a writer that died quietly would leave the
                # session up with its subscriptions unsent: end the session so the caller reconnects.
                self.end_reason = f"writer failed: {type(exc).__name__}: {exc}"[:300]
                self.ws.transport.abort()
                return

    async def _watch(self) -> None:
        period = max(0.05, min(1.0, self.settings.watchdog_s / 4))
        while True:
            await asyncio.sleep(period)
            if time.monotonic() - self.last_frame_at > self.settings.watchdog_s:
                self.end_reason = f"watchdog: no frame for {self.settings.watchdog_s:.1f}s"
                # Abort, not a polite close: a stalled peer may never answer the close.
                self.ws.transport.abort()
                return

    async def frames(self) -> AsyncIterator[tuple[str | bytes, int]]:
        """Yield (frame, recv_ts_us) until the session ends; then raise SessionEnded."""
        ws = self.ws
        try:
            while True:
                msg = await ws.recv()
                self.last_frame_at = time.monotonic()
                self.frames_in += 1
                yield msg, now_us()
        except ConnectionClosed as exc:
            reason = self.end_reason or f"closed: {exc.rcvd.code if exc.rcvd else 'no close frame'}"
            raise SessionEnded(reason) from None

    async def close(self, reason: str = "closing") -> None:
        if not self.end_reason:
            self.end_reason = reason
        self._watchdog.cancel()
        self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(self.ws.close(), self.settings.close_timeout_s + 1)
        except (TimeoutError, ConnectionClosed, OSError):
            self.ws.transport.abort()
        self._writer.cancel()
        for t in (self._writer, self._watchdog):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

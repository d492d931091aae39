"""The contract between venue adapters (pure protocol logic) and the transport/runner (I/O).

An adapter never touches a socket: it is fed frames and REST bodies and answers with
canonical events, dead letters and actions for the transport to perform (subscribe,
fetch a snapshot, pong, resync one symbol). That keeps every venue rule testable from a
capture file and lets the same adapter run behind a live socket, the replay emulator or
`ticklake capture verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import Exchange, Market


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A frame we refused, with why. Goes to dlq.collector; never crashes the shard."""

    reason: str
    raw: bytes
    native_symbol: str = ""


@dataclass(frozen=True, slots=True)
class RestRequest:
    """A REST call the transport must make (depth snapshot, exchange info)."""

    path: str  # e.g. "/api/v3/depth"
    params: tuple[tuple[str, str], ...]
    weight: int = 1  # request weight for per-IP rate limiting
    purpose: str = "snapshot"  # "snapshot" | "instruments"
    native_symbol: str = ""


@dataclass(frozen=True, slots=True)
class Send:
    """A websocket message to send (subscribe, pong, application ping)."""

    payload: str


@dataclass(frozen=True, slots=True)
class Resync:
    """Drop and rebuild the book of ONE symbol (gap, checksum failure, crossed book).

    A record of what happened, for metrics and logs: the adapter has already dropped the
    book and put the request (Binance REST snapshot) or sends (Bybit/OKX resubscribe) that
    rebuild it into the same FrameResult, so the transport performs no extra action.
    """

    native_symbol: str
    reason: str


@dataclass(slots=True, init=False)
class FrameResult:
    events: list[pb.Envelope]
    dead_letters: list[DeadLetter]
    requests: list[RestRequest]
    sends: list[Send]
    resyncs: list[Resync]
    #: non-empty = the venue announced this connection is going away (Binance serverShutdown,
    #: OKX service-upgrade notice); the transport should open a replacement connection now
    #: (make-before-break) rather than wait for the drop. The text is the reason.
    reconnect: str

    def __init__(
        self,
        events: list[pb.Envelope] | None = None,
        dead_letters: list[DeadLetter] | None = None,
        requests: list[RestRequest] | None = None,
        sends: list[Send] | None = None,
        resyncs: list[Resync] | None = None,
        reconnect: str = "",
    ) -> None:
        """Every list a new one unless given (one FrameResult per frame: written out, it costs
        half of the generated ``default_factory`` calls)."""
        self.events = [] if events is None else events
        self.dead_letters = [] if dead_letters is None else dead_letters
        self.requests = [] if requests is None else requests
        self.sends = [] if sends is None else sends
        self.resyncs = [] if resyncs is None else resyncs
        self.reconnect = reconnect

    def extend(self, other: FrameResult) -> None:
        self.events.extend(other.events)
        self.dead_letters.extend(other.dead_letters)
        self.requests.extend(other.requests)
        self.sends.extend(other.sends)
        self.resyncs.extend(other.resyncs)
        if other.reconnect and not self.reconnect:
            self.reconnect = other.reconnect


class VenueAdapter(Protocol):
    """One venue + market (e.g. Binance USD-M). Stateful: holds the books it maintains."""

    exchange: Exchange
    market: Market

    def ws_url(self, base_url: str, native_symbols: list[str]) -> str:
        """Websocket URL to connect to (Binance puts the streams in the URL)."""

    # Adapters in this repo also provide (compatible extension, see collectors/exchanges/):
    #   ws_urls(base_url, native_symbols) -> list[str]
    #       every connection the symbols need: Binance USD-M routes depth/bookTicker/trade to
    #       /public and aggTrade/markPrice/forceOrder to /market, and caps streams per
    #       connection; ws_url() is ws_urls()[0] for single-connection venues.
    #   book_stats() -> dict[native, BookStats]   sync counters per instrument
    #   snapshot_events(recv_ts_us)               periodic BOOK_SNAPSHOT of every synced book

    def on_open(self, native_symbols: list[str]) -> FrameResult:
        """Messages to send and requests to make right after connecting."""

    def on_frame(self, frame: bytes | str, recv_ts_us: int) -> FrameResult:
        """Parse one websocket text frame."""

    def on_rest(self, request: RestRequest, status: int, body: bytes, recv_ts_us: int) -> FrameResult:
        """Handle the response to a RestRequest the adapter asked for."""

    def keepalive(self, now_us: int) -> FrameResult:
        """Application-level pings due now (Bybit {"op":"ping"} every 20 s, OKX text "ping")."""

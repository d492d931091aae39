"""REST rate limiting per egress IP, driven by what the venue says.

Venues limit REST by source IP, so each egress IP carries its own budget. The local count
is only a first guess: the venue's own figure (Binance ``X-MBX-USED-WEIGHT-1M``) wins
whenever it arrives, because other processes may share the IP and the venue's window is
the one that bans us. A 429 means "stop until Retry-After or you will be banned"; a 418
(Binance) or 403 (Bybit "access too frequent") means the IP is banned. Either takes the
IP out of service, which is the signal sharding.py uses to move its symbols elsewhere.

Pure state machine with the clock passed in; rest_client.py does the awaiting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum


class IpState(StrEnum):
    HEALTHY = "healthy"
    THROTTLED = "throttled"  # 429: backing off to avoid a ban
    BANNED = "banned"  # 418 / 403: the venue refuses this IP until the ban ends


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """One venue's REST limit: ``limit`` weight per fixed ``window_s`` window per IP. Each
    venue declares its own (collectors/exchanges/<venue>_venue.py, one per feed)."""

    name: str
    window_s: float
    limit: int
    used_weight_header: str | None = None
    throttle_statuses: frozenset[int] = frozenset({429})
    ban_statuses: frozenset[int] = frozenset()
    default_throttle_s: float = 1.0
    default_ban_s: float = 120.0
    #: fraction of the limit we allow ourselves; the rest absorbs requests that other
    #: clients on the same IP make between our header readings.
    headroom: float = 0.9

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.limit <= 0 or not 0 < self.headroom <= 1:
            raise ValueError(f"invalid rate-limit policy {self}")

    @property
    def budget(self) -> int:
        return max(1, int(self.limit * self.headroom))


#: Longest Retry-After honoured: Binance's longest documented IP ban (bans escalate from 2
#: minutes to 3 days). A bigger value, "inf" or a date years ahead would bench the egress
#: IP for the life of the process; "nan" and other non-numbers fall back to the default.
MAX_RETRY_AFTER_S = 3 * 24 * 3600.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), at most
    MAX_RETRY_AFTER_S; None when absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            secs = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(secs) and secs != math.inf:
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, secs))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # HTTP header names are case-insensitive; aiohttp's CIMultiDict already is, plain
    # dicts (tests, emulator) are not.
    if name in headers:
        return headers[name]
    low = name.lower()
    for k, v in headers.items():
        if k.lower() == low:
            return v
    return None


@dataclass(slots=True)
class ResponseVerdict:
    """What a response did to the IP: usable as is, or the IP is now out of service."""

    state: IpState
    retry_after_s: float = 0.0


@dataclass(slots=True)
class IpRateLimiter:
    """Budget and ban state of one egress IP for one venue."""

    ip: str
    policy: RateLimitPolicy
    _window: int = -1
    _used: int = 0
    blocked_until: float = 0.0
    blocked_state: IpState = IpState.HEALTHY
    #: requests sent and not answered yet
    inflight: int = 0
    #: window of the venue's last used-weight reading (-1: none yet)
    _confirmed: int = -1
    #: per-status counters, for metrics and tests
    responses: dict[int, int] = field(default_factory=dict)

    def _roll(self, now: float) -> None:
        # Fixed windows aligned on the epoch, as the venues count them (Binance resets
        # the 1m weight on minute boundaries).
        w = math.floor(now / self.policy.window_s)
        if w != self._window:
            self._window = w
            self._used = 0

    def used(self, now: float) -> int:
        self._roll(now)
        return self._used

    def state(self, now: float) -> IpState:
        if now < self.blocked_until:
            return self.blocked_state
        return IpState.HEALTHY

    def wait_time(self, weight: int, now: float) -> float:
        """Seconds until a request of ``weight`` may be sent from this IP (0 = now)."""
        if now < self.blocked_until:
            return self.blocked_until - now
        self._roll(now)
        if self.policy.used_weight_header and self._confirmed != self._window and self.inflight:
            # Until the venue has told us this window's usage (others may share the IP),
            # probe with one request at a time instead of spending the budget blind.
            return 0.02
        if self._used + weight <= self.policy.budget or self._used == 0:
            # An empty window always admits one request, however heavy, or a request
            # heavier than the budget would wait forever.
            return 0.0
        window_end = (self._window + 1) * self.policy.window_s
        return max(window_end - now, 1e-3)

    def reserve(self, weight: int, now: float) -> None:
        self._roll(now)
        self._used += weight
        self.inflight += 1

    def release(self) -> None:
        """A request ended without an answer (transport error)."""
        self.inflight = max(0, self.inflight - 1)

    def on_response(self, status: int, headers: Mapping[str, str], now: float) -> ResponseVerdict:
        self.responses[status] = self.responses.get(status, 0) + 1
        self.release()
        self._roll(now)
        if self.policy.used_weight_header:
            raw = _header(headers, self.policy.used_weight_header)
            if raw is not None:
                try:
                    # The venue's count is authoritative; keep ours if it is higher
                    # because requests still in flight are not in the venue's figure.
                    self._used = max(self._used, int(raw))
                    self._confirmed = self._window
                except ValueError:
                    pass
        retry = parse_retry_after(_header(headers, "Retry-After"), now)
        if status in self.policy.ban_statuses:
            self._block(IpState.BANNED, retry if retry is not None else self.policy.default_ban_s, now)
            return ResponseVerdict(IpState.BANNED, self.blocked_until - now)
        if status in self.policy.throttle_statuses:
            self._block(IpState.THROTTLED, retry if retry is not None else self.policy.default_throttle_s, now)
            return ResponseVerdict(IpState.THROTTLED, self.blocked_until - now)
        return ResponseVerdict(IpState.HEALTHY)

    def _block(self, state: IpState, seconds: float, now: float) -> None:
        until = now + max(seconds, 0.0)
        if self.state(now) is IpState.HEALTHY:
            self.blocked_state, self.blocked_until = state, until
            return
        # Already blocked: never shorten, and a ban outranks a throttle.
        self.blocked_until = max(self.blocked_until, until)
        if state is IpState.BANNED:
            self.blocked_state = IpState.BANNED

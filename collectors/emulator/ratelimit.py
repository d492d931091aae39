"""The venue side of REST rate limiting: per source IP, as the venues enforce it.

Mirrors the documented behaviour so the collector's limiter is tested against the rules,
not against itself: a request that exceeds the window's weight gets 429 with Retry-After
(seconds to the window end); a request that arrives while the IP is still told to back
off is "failing to back off" and earns a 418 ban (Binance) — or, for venues that ban
straight away (Bybit), the over-limit request itself gets the ban status. Tests can also
force statuses for an IP (``force``) or throttle/ban it outright.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class VenueLimits:
    window_s: float
    limit: int
    weight_header: str | None  # e.g. X-MBX-USED-WEIGHT-1M
    throttle_status: int | None  # 429, or None when the venue bans at once
    ban_status: int  # 418 (Binance), 403 (Bybit), 429 (OKX has no ban tier)
    ban_s: float


@dataclass(slots=True)
class _IpRecord:
    window: int = -1
    used: int = 0
    throttled_until: float = 0.0
    banned_until: float = 0.0
    forced: deque = field(default_factory=deque)  # (status, retry_after_s)
    max_used: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    status: int  # 200 or the refusal
    headers: dict[str, str]
    retry_after_s: float = 0.0


class VenueRateLimiter:
    def __init__(self, limits: VenueLimits) -> None:
        self.limits = limits
        self.ips: dict[str, _IpRecord] = {}

    def record(self, ip: str) -> _IpRecord:
        rec = self.ips.get(ip)
        if rec is None:
            rec = self.ips[ip] = _IpRecord()
        return rec

    def force(self, ip: str, statuses: list[tuple[int, float]]) -> None:
        """The next requests from ``ip`` get these (status, Retry-After) answers, in order."""
        self.record(ip).forced.extend(statuses)

    def throttle(self, ip: str, seconds: float, now: float) -> None:
        self.record(ip).throttled_until = now + seconds

    def ban(self, ip: str, seconds: float, now: float) -> None:
        self.record(ip).banned_until = now + seconds

    def clear(self, ip: str | None = None) -> None:
        for key in [ip] if ip else list(self.ips):
            rec = self.ips.get(key)
            if rec:
                rec.throttled_until = rec.banned_until = 0.0
                rec.forced.clear()

    def _refuse(self, rec: _IpRecord, status: int, seconds: float, now: float) -> Decision:
        lim = self.limits
        if status == lim.ban_status and lim.ban_status != lim.throttle_status:
            rec.banned_until = max(rec.banned_until, now + seconds)
        else:
            rec.throttled_until = max(rec.throttled_until, now + seconds)
        rec.statuses[status] = rec.statuses.get(status, 0) + 1
        headers = {"Retry-After": str(max(1, math.ceil(seconds)))}
        if lim.weight_header:
            headers[lim.weight_header] = str(rec.used)
        return Decision(status, headers, seconds)

    def check(self, ip: str, weight: int, now: float) -> Decision:
        lim = self.limits
        rec = self.record(ip)
        w = math.floor(now / lim.window_s)
        if w != rec.window:
            rec.window, rec.used = w, 0
        if rec.forced:
            status, seconds = rec.forced.popleft()
            return self._refuse(rec, status, seconds, now)
        if now < rec.banned_until:
            return self._refuse(rec, lim.ban_status, rec.banned_until - now, now)
        if now < rec.throttled_until:
            # Told to back off and did not: that is what gets an IP banned.
            return self._refuse(rec, lim.ban_status, lim.ban_s, now)
        rec.used += weight
        rec.max_used = max(rec.max_used, rec.used)
        if rec.used > lim.limit:
            window_end = (w + 1) * lim.window_s
            status = lim.throttle_status if lim.throttle_status is not None else lim.ban_status
            seconds = window_end - now if status == lim.throttle_status else lim.ban_s
            return self._refuse(rec, status, max(seconds, 0.001), now)
        rec.statuses[200] = rec.statuses.get(200, 0) + 1
        headers = {lim.weight_header: str(rec.used)} if lim.weight_header else {}
        return Decision(200, headers)

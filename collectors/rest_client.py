"""REST client per egress IP: bound source address, venue rate limits, failover, retries.

Every request is made from a chosen egress IP (the aiohttp connector binds
``local_addr``), so the venue's per-IP limits apply to the IP we think they do. Each IP
has an IpRateLimiter; a 429/418/403 takes that IP out of service and the request moves
to the next healthy IP in the caller's preference order. Transport errors and 5xx are
retried with jittered backoff, forever: a book waiting for its snapshot must get one
eventually, and cancelling the task is how a caller gives up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from collectors.backoff import Backoff, BackoffPolicy
from collectors.exchanges.base import RestRequest
from collectors.ratelimit import IpRateLimiter, IpState, RateLimitPolicy

#: Key of the "no explicit egress IP" pool member: the OS picks the source address.
DEFAULT_IP = ""


@dataclass(frozen=True, slots=True)
class RestResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]
    ip: str
    recv_ts_us: int
    attempts: int = 1


@dataclass(slots=True)
class _Member:
    """One egress IP of the pool: its limiter (which holds the IP), its session, its count."""

    limiter: IpRateLimiter
    session: aiohttp.ClientSession | None = None
    requests: int = 0

    @property
    def ip(self) -> str:
        return self.limiter.ip


@dataclass(slots=True)
class RestStats:
    sent: int = 0
    retries: int = 0
    transport_errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    #: the last request's transport failure ('' once a request got an answer): shard status
    last_transport_error: str = ""


class RestPool:
    """One aiohttp session per egress IP, all against one venue base URL."""

    def __init__(
        self,
        base_url: str,
        ips: Sequence[str],
        policy: RateLimitPolicy,
        *,
        clock: Callable[[], float] = time.time,
        backoff: BackoffPolicy | None = None,
        timeout_s: float = 10.0,
        on_state_change: Callable[[str, IpState], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.clock = clock
        self.timeout_s = timeout_s
        self.backoff_policy = backoff or BackoffPolicy(base_s=0.2, cap_s=10.0)
        self.on_state_change = on_state_change
        ips = list(ips) or [DEFAULT_IP]
        self._members = {ip: _Member(IpRateLimiter(ip, policy)) for ip in ips}
        self._last_state = dict.fromkeys(ips, IpState.HEALTHY)
        self.stats = RestStats()

    @property
    def ips(self) -> list[str]:
        return list(self._members)

    async def start(self) -> None:
        for m in self._members.values():
            if m.session is None:
                connector = aiohttp.TCPConnector(local_addr=(m.ip, 0) if m.ip else None, limit=16, ttl_dns_cache=300)
                m.session = aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=True
                )

    async def close(self) -> None:
        for m in self._members.values():
            if m.session is not None:
                await m.session.close()
                m.session = None

    async def __aenter__(self) -> RestPool:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- health ----------------------------------------------------------------------------

    def limiter(self, ip: str) -> IpRateLimiter:
        return self._members[ip].limiter

    def state(self, ip: str) -> IpState:
        return self._members[ip].limiter.state(self.clock())

    def healthy_ips(self) -> list[str]:
        now = self.clock()
        return [ip for ip, m in self._members.items() if m.limiter.state(now) is IpState.HEALTHY]

    def next_change_in(self) -> float | None:
        """Seconds until the earliest blocked IP becomes usable again (None if none blocked)."""
        now = self.clock()
        waits = [m.limiter.blocked_until - now for m in self._members.values() if m.limiter.blocked_until > now]
        return min(waits) if waits else None

    def poll_states(self) -> dict[str, IpState]:
        """Current states; fires on_state_change for every IP whose state changed since the
        last poll (recoveries have no response to trigger them, so someone must look)."""
        now = self.clock()
        out = {}
        for ip, m in self._members.items():
            st = m.limiter.state(now)
            out[ip] = st
            if st is not self._last_state[ip]:
                self._last_state[ip] = st
                if self.on_state_change:
                    self.on_state_change(ip, st)
        return out

    # -- requests --------------------------------------------------------------------------

    def _pick(self, preferred: Iterable[str], weight: int) -> tuple[_Member | None, float]:
        """First usable IP in preference order and how long it must wait (0 = now).
        Prefers an IP that can send immediately over the first choice waiting for its
        window; a blocked (429/418) IP is never chosen while another exists."""
        now = self.clock()
        order = [ip for ip in preferred if ip in self._members]
        order += [ip for ip in self._members if ip not in order]
        best: tuple[_Member | None, float] = (None, float("inf"))
        for ip in order:
            m = self._members[ip]
            if m.limiter.state(now) is not IpState.HEALTHY:
                continue
            w = m.limiter.wait_time(weight, now)
            if w == 0.0:
                return m, 0.0
            if w < best[1]:
                best = (m, w)
        if best[0] is None:
            # Every IP is blocked: wait for the first to come back.
            soonest = min(self._members.values(), key=lambda m: m.limiter.blocked_until)
            return None, max(soonest.limiter.blocked_until - now, 0.01)
        return best

    async def get(self, request: RestRequest, preferred: Iterable[str] = ()) -> RestResponse:
        """GET ``request`` from the best egress IP; retries until it has a non-throttled,
        non-5xx answer (which may still be a 4xx for the adapter to judge)."""
        preferred = list(preferred)
        backoff = Backoff(self.backoff_policy)
        attempts = 0
        url = self.base_url + request.path
        params = list(request.params)
        while True:
            member, wait = self._pick(preferred, request.weight)
            if member is None or wait > 0:
                await asyncio.sleep(wait)
                continue
            if member.session is None:
                await self.start()
            member.limiter.reserve(request.weight, self.clock())
            attempts += 1
            self.stats.sent += 1
            member.requests += 1
            try:
                async with member.session.get(url, params=params) as resp:  # type: ignore[union-attr]
                    body = await resp.read()
                    status, headers = resp.status, dict(resp.headers)
            except asyncio.CancelledError:
                member.limiter.release()
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.stats.transport_errors += 1
                self.stats.last_transport_error = f"{type(exc).__name__}: {exc}"[:300]
                self.stats.retries += 1
                await asyncio.sleep(backoff.next_delay())
                continue
            now = self.clock()
            self.stats.last_transport_error = ""
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            verdict = member.limiter.on_response(status, headers, now)
            self.poll_states()
            if verdict.state is not IpState.HEALTHY:
                # This IP is out for retry_after; the next loop picks another one.
                self.stats.retries += 1
                continue
            if status >= 500:
                self.stats.retries += 1
                await asyncio.sleep(backoff.next_delay())
                continue
            return RestResponse(status, body, headers, member.ip, int(now * 1_000_000), attempts)

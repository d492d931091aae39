"""Streamed HTTP downloads of archive files: resume, bounded concurrency, retries, rate limit.

Archive days are large (a BTCUSDT trades day is hundreds of MB) and mirrors drop
connections, so a file is streamed to ``<dest>.part`` and a retry (or the next run) asks for
the rest with ``Range: bytes=<have>-``; a server that ignores the range (200) restarts the
file, a 206 whose Content-Range does not start where we are is refused. Only a complete
body is renamed to ``dest``. A 404 is an answer, not an error: the venue has no file for
that day (a listing that started later, a delisted symbol), reported as ``missing``.
Transient failures (connection errors, timeouts, 429, 5xx) are retried with equal-jitter
exponential backoff (collectors/backoff.py), and every request to one host waits for that
host's rate limit, shared by all threads of the downloader.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from collectors.backoff import BackoffPolicy

#: progress(url, bytes_done, total_bytes_or_None)
Progress = Callable[[str, int, int | None], None]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
USER_AGENT = "ticklake-bulk/1"


class DownloadError(RuntimeError):
    """A file that could not be fetched after every retry (or a non-retryable answer)."""


@dataclass(frozen=True, slots=True)
class DownloadResult:
    url: str
    status: str  # "ok" | "missing"
    path: Path | None
    size: int = 0
    resumed_from: int = 0  # bytes already on disk when the last successful request began
    attempts: int = 0


class HostRateLimiter:
    """At most `rate` request starts per second per host (0 disables), across threads."""

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, host: str) -> float:
        """Block until this host may be asked again; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self.clock()
            at = max(now, self._next.get(host, now))
            self._next[host] = at + self.interval
        wait = at - now
        if wait > 0:
            self.sleep(wait)
        return max(0.0, wait)


class _Retryable(Exception):
    pass


class Downloader:
    def __init__(
        self,
        *,
        max_concurrency: int = 4,
        per_host_rate: float = 10.0,
        retries: int = 5,
        backoff: BackoffPolicy | None = None,
        timeout_s: float = 60.0,
        chunk_bytes: int = 1 << 20,
        progress: Progress | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        headers: dict[str, str] | None = None,
    ) -> None:
        if max_concurrency < 1 or retries < 0:
            raise ValueError("max_concurrency must be >= 1 and retries >= 0")
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff = backoff or BackoffPolicy(base_s=0.5, cap_s=30.0)
        self.timeout_s = timeout_s
        self.chunk = chunk_bytes
        self.progress = progress
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.limiter = HostRateLimiter(per_host_rate, sleep=sleep)
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._slots = threading.BoundedSemaphore(max_concurrency)
        # No proxies from the environment for loopback mirrors; others use the default chain.
        self._opener = urllib.request.build_opener()
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- public --------------------------------------------------------------------------

    def fetch(self, url: str, dest: str | Path) -> DownloadResult:
        """Download `url` to `dest` (resuming `dest.part`); 404 -> status "missing"."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        attempt = 0
        while True:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            try:
                with self._slots:
                    self.limiter.acquire(urlparse(url).netloc)
                    outcome = self._once(url, part, have)
            except _Retryable as exc:
                if attempt > self.retries:
                    raise DownloadError(f"{url}: giving up after {attempt} attempts: {exc}") from None
                lo, hi = self.backoff.bounds(attempt - 1)
                self.sleep(lo + (hi - lo) * self.rng.random())
                continue
            if outcome == "missing":
                part.unlink(missing_ok=True)
                return DownloadResult(url, "missing", None, attempts=attempt)
            os.replace(part, dest)
            return DownloadResult(url, "ok", dest, dest.stat().st_size, resumed_from=have, attempts=attempt)

    def fetch_bytes(self, url: str) -> bytes | None:
        """A small file (CHECKSUM) in memory; None on 404. Same retries and rate limit."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._slots:
                    self.limiter.acquire(urlparse(url).netloc)
                    with self._open(url, {}) as resp:
                        return resp.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if not _retryable_status(exc.code) or attempt > self.retries:
                    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                if attempt > self.retries:
                    raise DownloadError(f"{url}: giving up after {attempt} attempts: {exc}") from None
            lo, hi = self.backoff.bounds(attempt - 1)
            self.sleep(lo + (hi - lo) * self.rng.random())

    def fetch_many(self, items: Sequence[tuple[str, str | Path]]) -> list[DownloadResult | Exception]:
        """Several files at once (at most max_concurrency in flight); one failure does not
        stop the others: its slot in the result holds the exception."""

        def one(item):
            try:
                return self.fetch(*item)
            except Exception as exc:  # noqa: BLE001 - reported per file
                return exc

        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(one, items))

    # -- one request -----------------------------------------------------------------------

    def _open(self, url: str, extra: dict[str, str]):
        req = urllib.request.Request(url, headers={**self.headers, **extra})
        host = urlparse(url).hostname or ""
        opener = self._direct if host in ("127.0.0.1", "localhost", "::1") else self._opener
        return opener.open(req, timeout=self.timeout_s)

    def _once(self, url: str, part: Path, have: int) -> str:
        extra = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp = self._open(url, extra)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return "missing"
            if exc.code == 416 and have:
                # Our partial file is at least as long as the resource: it is complete only if
                # the server says so, otherwise start again.
                total = _total_from_range(exc.headers.get("Content-Range"))
                if total is not None and total == have:
                    return "ok"
                part.unlink(missing_ok=True)
                raise _Retryable(f"HTTP 416 with {have} bytes on disk; restarting") from None
            if _retryable_status(exc.code):
                raise _Retryable(f"HTTP {exc.code}") from None
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise _Retryable(str(exc)) from None
        with resp:
            status = resp.status
            if status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    part.unlink(missing_ok=True)
                    raise _Retryable(
                        f"206 with Content-Range {resp.headers.get('Content-Range')!r} "
                        f"for a request from byte {have}; restarting"
                    )
                total = int(m.group(3)) if m.group(3) != "*" else None
                mode, done = "ab", have
            elif status == 200:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                mode, done = "wb", 0  # the server ignored the range: start over
            else:
                raise DownloadError(f"{url}: unexpected HTTP {status}")
            try:
                with open(part, mode) as f:
                    while block := resp.read(self.chunk):
                        f.write(block)
                        done += len(block)
                        if self.progress is not None:
                            self.progress(url, done, total)
            except (TimeoutError, http.client.HTTPException, OSError) as exc:
                raise _Retryable(f"connection lost after {done} bytes: {exc}") from None
        if total is not None and done != total:
            raise _Retryable(f"short body: {done} of {total} bytes")
        return "ok"


def _retryable_status(code: int) -> bool:
    return code == 429 or code == 408 or 500 <= code < 600


def _total_from_range(value: str | None) -> int | None:
    if not value:
        return None
    m = re.match(r"^bytes \*/(\d+)$", value.strip())
    return int(m.group(1)) if m else None

"""Jittered exponential backoff that never gives up.

A market-data feed that stops retrying is a silent outage: nobody is paged, the lake
just has a hole. So there is no "max attempts" here at all; the delay grows to a cap and
stays there until a connection has been healthy long enough to reset the counter.

Equal jitter (half the ceiling fixed, half random) rather than full jitter: full jitter
can draw ~0 s and hammer a venue that is refusing us, which is how an IP gets banned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 0.5
    cap_s: float = 60.0
    multiplier: float = 2.0
    #: a connection that stayed up this long counts as recovered: the next failure
    #: starts again from base_s instead of the cap.
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.multiplier < 1:
            raise ValueError(f"invalid backoff policy {self}")

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the delay before retry number ``attempt`` (0-based)."""
        # Cap the exponent so a feed that has been failing for days cannot overflow.
        exp = min(attempt, 64)
        return min(self.cap_s, self.base_s * self.multiplier**exp)

    def bounds(self, attempt: int) -> tuple[float, float]:
        hi = self.ceiling(attempt)
        return hi / 2.0, hi


class Backoff:
    """Stateful delay generator for one connection; ``next_delay`` never raises."""

    def __init__(self, policy: BackoffPolicy | None = None, rng: random.Random | None = None) -> None:
        self.policy = policy or BackoffPolicy()
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        lo, hi = self.policy.bounds(self.attempt)
        self.attempt += 1
        return lo + (hi - lo) * self._rng.random()

    def reset(self) -> None:
        self.attempt = 0

    def note_uptime(self, seconds_up: float) -> None:
        """Call when a connection ends; a long-lived one resets the schedule."""
        if seconds_up >= self.policy.reset_after_s:
            self.reset()

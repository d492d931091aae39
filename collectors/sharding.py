"""Which egress IP carries which symbol: rendezvous hashing with failover.

Venues limit REST (and count websocket connections) per source IP, so a shard spreads its
symbols over a list of egress IPs (10 EIPs in production, ARCHITECTURE §5) and binds each socket to one.
Rendezvous (highest-random-weight) hashing gives every symbol a *home* IP and a stable
preference order over the others, so:

* removing an IP (throttled, banned) moves only that IP's symbols, each to its next
  preference among the healthy IPs — spread evenly, nobody else moves;
* when the IP recovers exactly those symbols move back;
* adding an IP to the list takes ~1/(n+1) of the symbols and moves nothing else.

Connections are planned per (carrier IP, home IP) group, so the symbols an IP carries
for a failed neighbour ride a separate connection: failover and recovery open and close
only those, never the IP's own connections. Pure functions; the runner does the I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def _score(ip: str, symbol: str) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(ip.encode())
    h.update(b"\x00")
    h.update(symbol.encode())
    return int.from_bytes(h.digest(), "big")


def preference(symbol: str, ips: Iterable[str]) -> list[str]:
    """IPs in this symbol's order of preference (home first)."""
    return sorted(ips, key=lambda ip: (_score(ip, symbol), ip), reverse=True)


def home_ip(symbol: str, ips: Sequence[str]) -> str:
    if not ips:
        raise ValueError("no egress IPs configured")
    return max(ips, key=lambda ip: (_score(ip, symbol), ip))


def carrier_ip(symbol: str, ips: Sequence[str], healthy: Iterable[str] | None = None) -> str:
    """The IP that carries ``symbol`` now: its home if healthy, else its best healthy
    preference. With no healthy IP at all the home keeps it (waiting beats dropping)."""
    if not ips:
        raise ValueError("no egress IPs configured")
    ok = set(ips) if healthy is None else set(healthy) & set(ips)
    if not ok:
        return home_ip(symbol, ips)
    return max(ok, key=lambda ip: (_score(ip, symbol), ip))


def assign(symbols: Iterable[str], ips: Sequence[str], healthy: Iterable[str] | None = None) -> dict[str, str]:
    """symbol -> carrier IP."""
    ok = None if healthy is None else frozenset(healthy)
    return {s: carrier_ip(s, ips, ok) for s in symbols}


@dataclass(frozen=True, slots=True, order=True)
class ConnectionSpec:
    """One websocket connection to open: bound to ``ip``, carrying ``symbols`` whose home
    is ``home``. ``chunk`` numbers connections of one group that hit the per-connection
    symbol cap."""

    ip: str
    home: str
    chunk: int
    symbols: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.ip}/{self.home}/{self.chunk}"

    @property
    def is_failover(self) -> bool:
        return self.ip != self.home


def plan_connections(
    symbols: Iterable[str],
    ips: Sequence[str],
    healthy: Iterable[str] | None = None,
    max_symbols_per_connection: int = 200,
) -> list[ConnectionSpec]:
    """Connections needed to carry every symbol. Bounded concurrency: no connection
    carries more than ``max_symbols_per_connection`` symbols (Binance allows 1024 streams
    per connection, and a few streams per symbol)."""
    if max_symbols_per_connection < 1:
        raise ValueError("max_symbols_per_connection must be >= 1")
    ok = None if healthy is None else frozenset(healthy)
    groups: dict[tuple[str, str], list[str]] = {}
    for s in sorted(set(symbols)):
        home = home_ip(s, ips)
        groups.setdefault((carrier_ip(s, ips, ok), home), []).append(s)
    specs: list[ConnectionSpec] = []
    for (ip, home), syms in sorted(groups.items()):
        for i in range(0, len(syms), max_symbols_per_connection):
            specs.append(
                ConnectionSpec(
                    ip, home, i // max_symbols_per_connection, tuple(syms[i : i + max_symbols_per_connection])
                )
            )
    return specs


def moved(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Symbols whose carrier changed: symbol -> (old, new)."""
    return {s: (before[s], after[s]) for s in before.keys() & after.keys() if before[s] != after[s]}

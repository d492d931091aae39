"""Instrument catalog of the stream processors: fetching and caching venue reference data.

The normalizer enriches every record with it, so it must come from the venues' own
exchange-info endpoints, not from guesses: Binance /api/v3/exchangeInfo (spot) and
/fapi/v1/exchangeInfo (USD-M futures), Bybit /v5/market/instruments-info (spot, linear,
inverse) and OKX /api/v5/public/instruments (SPOT, SWAP, FUTURES). Which requests cover a
market, their hosts and parsers are the venue's own declaration (collectors/exchanges/
registry.py; the InstrumentRef row is schemas/instruments.py), shared with the collectors so
raw and processed scales come from one rule; this module only does the HTTP and the catalog, which
is cached to a JSON file so a processor restarts without network access and a test can feed
bodies it built in the documented shape.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from collectors.exchanges import registry
from schemas.instruments import InstrumentDataError, InstrumentRef
from schemas.model import Exchange, Market
from schemas.symbols import SymbolError, parse_native

log = logging.getLogger(__name__)

__all__ = ["InstrumentCatalog", "fetch_instruments", "http_get", "symbol_fallback"]


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def fetch_instruments(
    exchange: Exchange | str, market: Market | str, base_url: str | None = None, get: Callable[[str], bytes] = http_get
) -> list[InstrumentRef]:
    """Fetch and parse one venue+market's instruments (Bybit pages followed by cursor).

    An entry the venue lists in a shape we cannot use is logged and left out rather than
    failing the whole fetch: one odd listing must not leave every other instrument unknown."""
    ex, mk = Exchange(exchange), Market(market)
    root = (base_url or registry.endpoints(ex, mk).rest).rstrip("/")
    out: list[InstrumentRef] = []
    rejects: list[str] = []
    for req in registry.instrument_requests(ex, mk):
        query = dict(req.params)
        while True:
            body = get(f"{root}{req.path}?{urllib.parse.urlencode(query)}" if query else f"{root}{req.path}")
            out.extend(r for r in req.parse(body, rejects=rejects) if r.market == mk.value)
            cursor = req.next_cursor(body) if req.next_cursor is not None else ""
            if not cursor:
                break
            query["cursor"] = cursor
    if rejects:
        log.warning(
            "%s %s: %d exchange-info entries unusable, left out; first: %s",
            ex.value,
            mk.value,
            len(rejects),
            rejects[0],
        )
    return out


class InstrumentCatalog:
    """Lookup of InstrumentRef by venue symbol (and by canonical symbol)."""

    def __init__(self, refs: Iterable[InstrumentRef] = ()) -> None:
        self._by_native: dict[tuple[str, str, str], InstrumentRef] = {}
        self._by_canonical: dict[tuple[str, str, str], InstrumentRef] = {}
        #: Bumped by every add(): a reader that caches what it derived from the refs (the
        #: normalizer's per-symbol entries) compares it instead of looking each event up.
        self.revision = 0
        self.add(refs)

    def add(self, refs: Iterable[InstrumentRef]) -> int:
        self.revision += 1
        n = 0
        for r in refs:
            self._by_native[(r.exchange, r.market, r.native.upper())] = r
            self._by_canonical[(r.exchange, r.market, r.canonical)] = r
            n += 1
        return n

    def __len__(self) -> int:
        return len(self._by_native)

    def __iter__(self):
        return iter(sorted(self._by_native.values(), key=lambda r: (r.exchange, r.market, r.native)))

    def get(self, exchange: Exchange | str, market: Market | str, native: str) -> InstrumentRef | None:
        # Members skip Enum's call machinery (the normalizer asks once per event).
        ex = exchange.value if isinstance(exchange, Exchange) else Exchange(exchange).value
        mk = market.value if isinstance(market, Market) else Market(market).value
        return self._by_native.get((ex, mk, native.upper()))

    def by_canonical(self, exchange: Exchange | str, market: Market | str, canonical: str) -> InstrumentRef | None:
        return self._by_canonical.get((Exchange(exchange).value, Market(market).value, canonical))

    def load_exchange_info(
        self, exchange: Exchange | str, market: Market | str, body: bytes | str | dict, category: str | None = None
    ) -> int:
        """Parse one exchange-info body of (exchange, market) and add what it lists."""
        return self.add(registry.parse_exchange_info(exchange, market, body, category=category))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache atomically (a crash mid-write must not leave half a file)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "instruments": [asdict(r) for r in self]}, indent=0))
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InstrumentCatalog:
        data = json.loads(Path(path).read_text())
        if data.get("version") != 1:
            raise InstrumentDataError(f"unknown instrument cache version in {path}")
        return cls(InstrumentRef(**d) for d in data["instruments"])


def symbol_fallback(exchange: Exchange | str, market: Market | str, native: str) -> str | None:
    """Canonical symbol by the suffix rules when no reference data exists (for DLQ context)."""
    try:
        return parse_native(exchange, market, native).canonical
    except SymbolError:
        return None

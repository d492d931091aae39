"""Venue instrument reference data (tick, lot, scales, base/quote, canonical symbol): the
row every layer shares and the building blocks of the venues' exchange-info parsers.

One definition for both layers: the collectors fix the raw events' scales from it and the
normalizer enriches processed events from it, so if each had its own parser the raw and
processed scales could disagree (and did: the collectors once took Binance's stepSize as
the size scale and dead-lettered book quantities the normalizer accepted). Each venue's
parser lives with the venue (collectors/exchanges/<venue>_instruments.py, reached through
collectors/exchanges/registry.py) and builds its rows with ``instrument_ref`` under the
``Entries`` error policy here, so every venue validates a row the same way. Pure: bodies in,
rows out; fetching and caching live with the callers (streaming/processors/instruments.py,
the collectors' REST path).
"""

from __future__ import annotations

import functools
import json
import reprlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.model import Exchange, Market
from schemas.scaled import scale_of, to_scaled
from schemas.symbols import Instrument, validate_canonical


class InstrumentDataError(ValueError):
    """An exchange-info body (or one entry of it) without the venue's documented shape."""


@dataclass(frozen=True, slots=True)
class InstrumentRef:
    """One listed instrument as its venue describes it.

    Sizes are kept as the venue's decimal strings so nothing is lost; the scales are derived.
    Field order is the JSON cache's (streaming/processors/instruments.py), so new fields go last with defaults.
    """

    exchange: str
    market: str
    native: str
    canonical: str
    base: str
    quote: str
    tick_size: str  # decimal strings exactly as the venue publishes them
    lot_size: str
    status: str = ""
    expiry: str = ""  # YYMMDD for dated futures
    contract_value: str = ""  # OKX ctVal / inverse contract size; "" for spot
    size_decimals: int = 0  # venue-declared quantity precision when wider than the lot
    contract_type: str = ""  # venue's contract type (PERPETUAL, LinearFutures, linear, ...); "" for spot
    contract_value_ccy: str = ""  # currency of one contract's value (OKX ctValCcy; Bybit inverse: quote)

    @property
    def price_scale(self) -> int:
        return scale_of(self.tick_size)

    @property
    def size_scale(self) -> int:
        """The wider of the lot step and the declared quantity precision: books and trades
        carry quantities finer than the order lot (see parse_binance), and a scale that cannot
        hold a genuine quantity would turn market data into dead letters."""
        return max(scale_of(self.lot_size), self.size_decimals)

    def tick_units(self, price_scale: int) -> int:
        return to_scaled(self.tick_size, price_scale)

    def lot_units(self, size_scale: int) -> int:
        return to_scaled(self.lot_size, size_scale)


def by_native(refs: Iterable[InstrumentRef]) -> dict[str, InstrumentRef]:
    """Venue symbol -> reference (what an adapter looks instruments up by)."""
    return {r.native: r for r in refs}


# -- helpers -------------------------------------------------------------------------------------


def yymmdd_from_ms(ms: str | int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%y%m%d")


def instrument_ref(
    ex: Exchange,
    mk: Market,
    native: str,
    base: str,
    quote: str,
    tick: str,
    lot: str,
    status: str,
    expiry: str = "",
    ctval: str = "",
    size_decimals: int = 0,
    contract_type: str = "",
    ctval_ccy: str = "",
) -> InstrumentRef:
    for what, v in (
        ("symbol", native),
        ("base", base),
        ("quote", quote),
        ("tick size", tick),
        ("lot size", lot),
        ("status", status),
        ("contract value", ctval),
        ("contract type", contract_type),
        ("contract value currency", ctval_ccy),
    ):
        if type(v) is not str:
            raise InstrumentDataError(f"{what} is not a string: {v!r:.60}")
    base, quote = base.upper(), quote.upper()
    canonical = Instrument(ex, mk, native, base, quote, expiry).canonical
    validate_canonical(canonical)
    scale_of(tick)  # both must be positive decimals; raises ScaleError otherwise
    scale_of(lot)
    if type(size_decimals) is not int or not 0 <= size_decimals <= 18:
        raise InstrumentDataError(f"{native}: quantity precision {size_decimals!r} out of range")
    if ctval:
        scale_of(ctval)  # a positive decimal (ScaleError otherwise)
    return InstrumentRef(
        ex.value,
        mk.value,
        native,
        canonical,
        base,
        quote,
        tick,
        lot,
        status,
        expiry,
        ctval,
        size_decimals,
        contract_type,
        ctval_ccy.upper(),
    )


def load_body(body: bytes | str | dict) -> dict:
    if isinstance(body, dict):
        return body
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise InstrumentDataError(f"exchange info is not JSON: {exc}") from exc
    except RecursionError:
        # nested deeper than the parser's recursion limit: not a venue body
        raise InstrumentDataError("exchange info is nested too deep to parse") from None
    if not isinstance(data, dict):
        raise InstrumentDataError("exchange info must be a JSON object")
    return data


_SHORT = reprlib.Repr()  # str() of a deeply nested entry would recurse; this stops at depth 3
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 120, 120


class Entries:
    """Per-entry error policy: strict callers get the first bad entry as an exception;
    callers that pass a ``rejects`` list get the good entries and one reason per bad one
    (a venue listing one odd symbol must not take every other instrument down with it)."""

    def __init__(self, venue: str, rejects: list[str] | None) -> None:
        self.venue, self.rejects = venue, rejects

    def bad(self, entry: object, exc: Exception) -> None:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        reason = f"{self.venue} instrument entry unusable ({what}): {_SHORT.repr(entry)}"
        if self.rejects is None:
            raise InstrumentDataError(reason) from exc
        self.rejects.append(reason)


ENTRY_ERRORS = (LookupError, TypeError, ValueError, AttributeError, RecursionError)


def whole_body(parse):
    """A venue parser of one exchange-info body: it is handed the decoded JSON object
    (``load_body``), and a body whose envelope (not one entry) has an unexpected shape -- a
    category that is a number, an error code that is an object -- is refused as
    InstrumentDataError like any other bad body: callers handle that one exception, and a shard
    must start (with scales inferred from frames) rather than crash-loop on one bad reference
    body."""

    @functools.wraps(parse)
    def wrapped(body: bytes | str | dict, *args, **kw):
        try:
            return parse(load_body(body), *args, **kw)
        except InstrumentDataError:
            raise
        except ENTRY_ERRORS as exc:
            raise InstrumentDataError(f"exchange info unusable ({type(exc).__name__}: {exc})"[:300]) from exc

    return wrapped


def entry_rows(
    venue: str,
    entries: object,
    missing: str,
    entry: Callable[[Any], InstrumentRef | None],
    rejects: list[str] | None,
) -> list[InstrumentRef]:
    """The loop every venue parser shares: the body's entry list (refused with ``missing``
    when it is not a list), one row per entry ``entry`` maps to a row (None: a listed
    instrument that is not collected), each bad entry handled by the ``Entries`` policy."""
    if not isinstance(entries, list):
        raise InstrumentDataError(missing)
    errs = Entries(venue, rejects)
    out: list[InstrumentRef] = []
    for s in entries:
        try:
            row = entry(s)
        except ENTRY_ERRORS as exc:
            errs.bad(s, exc)
            continue
        if row is not None:
            out.append(row)
    return out


def opt_int(v: object) -> int:
    return 0 if v in (None, "") else int(v)  # type: ignore[arg-type]


__all__ = [
    "ENTRY_ERRORS",
    "Entries",
    "InstrumentDataError",
    "InstrumentRef",
    "by_native",
    "entry_rows",
    "instrument_ref",
    "load_body",
    "opt_int",
    "whole_body",
    "yymmdd_from_ms",
]

"""Canonical symbols and the venue-native spellings they come from.

Canonical forms: ``BASE-QUOTE`` (spot), ``BASE-QUOTE-PERP`` (perpetual swaps),
``BASE-QUOTE-YYMMDD`` (dated futures). One canonical name per instrument lets a user ask
for "BTC-USDT-PERP" on any venue, and keys Kafka records so per-instrument order holds.

Venue exchange-info (baseAsset/quoteAsset) is authoritative when the collectors have it;
the suffix rules here are the fallback for concatenated names such as Binance "BTCUSDT".
Every symbol is validated before it reaches a topic key, object key, path or SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.model import Exchange, Market

CANONICAL_RE = re.compile(r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,12}(?:-(?:PERP|\d{6}))?$")
_NATIVE_RE = re.compile(r"^[A-Za-z0-9_\-]{2,40}$")

# Longest first so "FDUSD" wins over "USD" and "USDT" over "USD".
KNOWN_QUOTES: tuple[str, ...] = tuple(
    sorted(
        {
            "USDT",
            "USDC",
            "FDUSD",
            "BUSD",
            "TUSD",
            "USDP",
            "DAI",
            "UST",
            "USD",
            "USDE",
            "BTC",
            "ETH",
            "BNB",
            "XRP",
            "TRX",
            "DOGE",
            "DOT",
            "SOL",
            "EUR",
            "GBP",
            "TRY",
            "BRL",
            "AUD",
            "RUB",
            "UAH",
            "NGN",
            "ZAR",
            "JPY",
            "IDRT",
            "BIDR",
            "PLN",
            "RON",
            "ARS",
            "MXN",
            "COP",
            "CZK",
            "BKRW",
            "VAI",
            "PAX",
            "AEUR",
        },
        key=len,
        reverse=True,
    )
)

_MONTHS = {
    m: i for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)
}
# Bybit inverse futures month codes (BTCUSDH25): CME letters.
_FUT_CODES = {c: i for i, c in enumerate("FGHJKMNQUVXZ", 1)}


class SymbolError(ValueError):
    """A symbol that does not map, or is not safe to use as a key or path component."""


@dataclass(frozen=True, slots=True)
class Instrument:
    exchange: Exchange
    market: Market
    native: str
    base: str
    quote: str
    expiry: str = ""  # YYMMDD for dated futures

    @property
    def canonical(self) -> str:
        if self.market is Market.SPOT:
            return f"{self.base}-{self.quote}"
        if self.market is Market.PERP:
            return f"{self.base}-{self.quote}-PERP"
        return f"{self.base}-{self.quote}-{self.expiry}"


def validate_canonical(symbol: str) -> str:
    """Return the symbol unchanged if it is a well-formed canonical symbol, else raise."""
    if not isinstance(symbol, str) or not CANONICAL_RE.fullmatch(symbol):
        raise SymbolError(f"not a canonical symbol: {symbol!r}")
    return symbol


def validate_native(native: str) -> str:
    if not isinstance(native, str) or not _NATIVE_RE.fullmatch(native):
        raise SymbolError(f"not a valid venue symbol: {native!r}")
    return native


def split_concatenated(pair: str) -> tuple[str, str]:
    """Split "BTCUSDT" into ("BTC", "USDT") by the longest known quote suffix."""
    pair = pair.upper()
    for q in KNOWN_QUOTES:
        if pair.endswith(q) and len(pair) > len(q):
            return pair[: -len(q)], q
    raise SymbolError(f"cannot split {pair!r} into base and quote; supply exchange info")


def parse_native(
    exchange: Exchange | str,
    market: Market | str,
    native: str,
    *,
    base: str | None = None,
    quote: str | None = None,
) -> Instrument:
    """Map a venue symbol to an Instrument. ``base``/``quote`` from exchange info win."""
    ex, mk = Exchange(exchange), Market(market)
    validate_native(native)
    n = native.upper()
    expiry = ""
    if ex is Exchange.OKX:
        parts = n.split("-")
        if len(parts) < 2:
            raise SymbolError(f"OKX instId {native!r} has no base-quote")
        b, q = parts[0], parts[1]
        if mk is Market.PERP and parts[2:] != ["SWAP"]:
            raise SymbolError(f"OKX perpetual instId must end in -SWAP: {native!r}")
        if mk is Market.FUTURE:
            if len(parts) != 3 or not parts[2].isdigit() or len(parts[2]) != 6:
                raise SymbolError(f"OKX futures instId must be BASE-QUOTE-YYMMDD: {native!r}")
            expiry = parts[2]
        if mk is Market.SPOT and len(parts) != 2:
            raise SymbolError(f"OKX spot instId must be BASE-QUOTE: {native!r}")
    elif ex is Exchange.BINANCE:
        core = n
        if mk is Market.PERP:
            core = n.removesuffix("_PERP")  # COIN-M BTCUSD_PERP
            if "_" in core:
                raise SymbolError(f"Binance perpetual {native!r} looks dated")
        elif mk is Market.FUTURE:
            core, _, exp = n.partition("_")
            if not (exp.isdigit() and len(exp) == 6):
                raise SymbolError(f"Binance futures symbol must be PAIR_YYMMDD: {native!r}")
            expiry = exp
        b, q = split_concatenated(core) if base is None else (base.upper(), (quote or "").upper())
    else:  # BYBIT
        core = n
        if mk is Market.FUTURE:
            m = re.match(r"^([A-Z0-9]+)-(\d{1,2})([A-Z]{3})(\d{2})$", n)  # BTC-27DEC24 (USDC)
            if m:
                core = m.group(1) + ("USDC" if quote is None else "")
                day, mon, yy = int(m.group(2)), _MONTHS.get(m.group(3)), m.group(4)
                if mon is None:
                    raise SymbolError(f"bad month in {native!r}")
                expiry = f"{yy}{mon:02d}{day:02d}"
            else:
                m = re.match(r"^([A-Z0-9]+)([FGHJKMNQUVXZ])(\d{2})$", n)  # BTCUSDH25 (inverse)
                if not m:
                    raise SymbolError(f"unrecognised Bybit futures symbol {native!r}")
                core = m.group(1)
                # Inverse futures settle on the last Friday; without exchange info only the
                # month is known, so the day is left as 00 rather than guessed.
                expiry = f"{m.group(3)}{_FUT_CODES[m.group(2)]:02d}00"
        elif mk is Market.PERP and n.endswith("PERP"):
            core = n.removesuffix("PERP") + "USDC"  # BTCPERP is the USDC-margined perpetual
        b, q = split_concatenated(core) if base is None else (base.upper(), (quote or "").upper())
    inst = Instrument(ex, mk, native, b, q, expiry)
    validate_canonical(inst.canonical)
    return inst


def canonical_symbol(exchange: Exchange | str, market: Market | str, native: str) -> str:
    return parse_native(exchange, market, native).canonical


def native_symbol(exchange: Exchange | str, market: Market | str, canonical: str) -> str:
    """The venue spelling of a canonical symbol (for subscriptions and REST calls)."""
    ex, mk = Exchange(exchange), Market(market)
    validate_canonical(canonical)
    parts = canonical.split("-")
    base, quote = parts[0], parts[1]
    tail = parts[2] if len(parts) == 3 else ""
    if (mk is Market.SPOT) != (tail == "") or (mk is Market.PERP) != (tail == "PERP"):
        raise SymbolError(f"{canonical!r} is not a {mk} symbol")
    if ex is Exchange.OKX:
        return {Market.SPOT: f"{base}-{quote}", Market.PERP: f"{base}-{quote}-SWAP"}.get(mk, f"{base}-{quote}-{tail}")
    if ex is Exchange.BINANCE:
        if mk is Market.FUTURE:
            return f"{base}{quote}_{tail}"
        if mk is Market.PERP and quote == "USD":
            return f"{base}USD_PERP"
        return f"{base}{quote}"
    if mk is Market.PERP and quote == "USDC":
        return f"{base}PERP"
    if mk is Market.FUTURE:
        raise SymbolError("Bybit futures names need exchange info to reverse-map")
    return f"{base}{quote}"

"""Venue instrument reference data (tick, lot, scales, base/quote, canonical symbol) and the
parsers of the venues' own exchange-info responses.

One definition for both layers: the collectors fix the raw events' scales from it and the
normalizer enriches processed events from it, so if each had its own parser the raw and
processed scales could disagree (and did: the collectors once took Binance's stepSize as
the size scale and dead-lettered book quantities the normalizer accepted). Pure: bodies in,
rows out; fetching and caching live with the callers (streaming/processors/instruments.py, the
collectors' REST path).

Response shapes: Binance /api/v3/exchangeInfo (spot) and /fapi/v1/exchangeInfo (USD-M),
Bybit /v5/market/instruments-info per category (spot, linear, inverse), OKX
/api/v5/public/instruments per instType (SPOT, SWAP, FUTURES).
"""

from __future__ import annotations

import functools
import json
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

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


def _yymmdd_from_ms(ms: str | int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%y%m%d")


def _ref(
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


def _load(body: bytes | str | dict) -> dict:
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


class _Entries:
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


_ENTRY_ERRORS = (LookupError, TypeError, ValueError, AttributeError, RecursionError)


def _whole_body(parse):
    """A body whose envelope (not one entry) has an unexpected shape -- a category that is a
    number, an error code that is an object -- is refused as InstrumentDataError like any
    other bad body: callers handle that one exception, and a shard must start (with scales
    inferred from frames) rather than crash-loop on one bad reference body."""

    @functools.wraps(parse)
    def wrapped(*args, **kw):
        try:
            return parse(*args, **kw)
        except InstrumentDataError:
            raise
        except _ENTRY_ERRORS as exc:
            raise InstrumentDataError(f"exchange info unusable ({type(exc).__name__}: {exc})"[:300]) from exc

    return wrapped


def _int(v: object) -> int:
    return 0 if v in (None, "") else int(v)  # type: ignore[arg-type]


# -- Binance -------------------------------------------------------------------------------------


@_whole_body
def parse_binance(body: bytes | str | dict, *, futures: bool, rejects: list[str] | None = None) -> list[InstrumentRef]:
    """/api/v3/exchangeInfo (futures=False) or /fapi/v1/exchangeInfo (futures=True).

    Price scale from PRICE_FILTER.tickSize. Size scale is the wider of LOT_SIZE.stepSize and
    the declared quantity precision (spot baseAssetPrecision, USD-M quantityPrecision): the
    lot step only constrains *orders*, while depth snapshots and diffs report resting
    quantities at the asset's full precision -- the genuine BTCUSDT book of 2024-08-08
    (stepSize 0.00001) carries quantities such as "25.42618900". Using the step alone would
    refuse those levels, the book would gap and wait for a snapshot. USD-M entries whose
    contractType is neither perpetual nor dated (settling, empty) are not collected and skipped.
    """
    data = _load(body)
    syms = data.get("symbols")
    if not isinstance(syms, list):
        raise InstrumentDataError("Binance exchangeInfo has no 'symbols' list")
    errs = _Entries("Binance", rejects)
    out: list[InstrumentRef] = []
    for s in syms:
        try:
            f = {x.get("filterType"): x for x in s.get("filters", []) if isinstance(x, dict)}
            tick, lot = f["PRICE_FILTER"]["tickSize"], f["LOT_SIZE"]["stepSize"]
            native, base, quote, status = s["symbol"], s["baseAsset"], s["quoteAsset"], s.get("status", "")
            if not futures:
                out.append(
                    _ref(
                        Exchange.BINANCE,
                        Market.SPOT,
                        native,
                        base,
                        quote,
                        tick,
                        lot,
                        status,
                        size_decimals=_int(s.get("baseAssetPrecision")),
                    )
                )
                continue
            ctype = s.get("contractType", "") or ""
            qp = _int(s.get("quantityPrecision"))
            if "PERPETUAL" in ctype:
                out.append(
                    _ref(
                        Exchange.BINANCE,
                        Market.PERP,
                        native,
                        base,
                        quote,
                        tick,
                        lot,
                        status,
                        size_decimals=qp,
                        contract_type=ctype,
                    )
                )
            elif ctype and "_" in native:  # CURRENT_QUARTER / NEXT_QUARTER: BTCUSDT_240927
                out.append(
                    _ref(
                        Exchange.BINANCE,
                        Market.FUTURE,
                        native,
                        base,
                        quote,
                        tick,
                        lot,
                        status,
                        expiry=native.rsplit("_", 1)[1],
                        size_decimals=qp,
                        contract_type=ctype,
                    )
                )
        except _ENTRY_ERRORS as exc:
            errs.bad(s, exc)
    return out


# -- Bybit ---------------------------------------------------------------------------------------


@_whole_body
def parse_bybit(
    body: bytes | str | dict, category: str | None = None, rejects: list[str] | None = None
) -> list[InstrumentRef]:
    """/v5/market/instruments-info for category spot, linear or inverse (one page).

    Spot lots are lotSizeFilter.basePrecision (spot has no qtyStep; books carry quantities at
    the base precision); derivatives use qtyStep. The category is the body's own
    result.category, else the one the caller asked for.
    """
    data = _load(body)
    if data.get("retCode", 0) != 0:
        raise InstrumentDataError(f"Bybit instruments-info error {data.get('retCode')}: {data.get('retMsg')}")
    result = data.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("list"), list):
        raise InstrumentDataError("Bybit instruments-info has no result.list")
    category = (result.get("category") or category or "").lower()
    if category not in ("spot", "linear", "inverse"):
        raise InstrumentDataError(f"Bybit instruments-info category unknown: {category!r}")
    errs = _Entries("Bybit", rejects)
    out: list[InstrumentRef] = []
    for s in result["list"]:
        try:
            native, base, quote = s["symbol"], s["baseCoin"], s["quoteCoin"]
            tick = s["priceFilter"]["tickSize"]
            lsf = s["lotSizeFilter"]
            lot = lsf["basePrecision"] if category == "spot" else lsf["qtyStep"]
            status = s.get("status", "")
            if category == "spot":
                out.append(_ref(Exchange.BYBIT, Market.SPOT, native, base, quote, tick, lot, status))
                continue
            ctype = s.get("contractType", "") or ""
            # inverse contracts are 1 USD (quote) each; linear sizes are the base asset
            unit = {"ctval": "1", "ctval_ccy": quote} if category == "inverse" or ctype.startswith("Inverse") else {}
            if ctype.endswith("Perpetual"):
                out.append(
                    _ref(
                        Exchange.BYBIT, Market.PERP, native, base, quote, tick, lot, status, contract_type=ctype, **unit
                    )
                )
            elif ctype.endswith("Futures") and str(s.get("deliveryTime", "0")) not in ("", "0"):
                out.append(
                    _ref(
                        Exchange.BYBIT,
                        Market.FUTURE,
                        native,
                        base,
                        quote,
                        tick,
                        lot,
                        status,
                        expiry=_yymmdd_from_ms(s["deliveryTime"]),
                        contract_type=ctype,
                        **unit,
                    )
                )
        except _ENTRY_ERRORS as exc:
            errs.bad(s, exc)
    return out


def bybit_next_cursor(body: bytes | str | dict) -> str:
    """The cursor of the next instruments-info page ("" on the last page)."""
    result = _load(body).get("result")
    return (result.get("nextPageCursor") or "") if isinstance(result, dict) else ""


# -- OKX -----------------------------------------------------------------------------------------


@_whole_body
def parse_okx(body: bytes | str | dict, rejects: list[str] | None = None) -> list[InstrumentRef]:
    """/api/v5/public/instruments for instType SPOT, SWAP or FUTURES.

    Derivatives have empty baseCcy/quoteCcy; their pair is instFamily (or the older uly).
    Sizes of SWAP/FUTURES are contracts, so lotSz is already the book's quantity step; one
    contract is ctVal of ctValCcy (schemas/units.py turns that into the record's unit).
    """
    data = _load(body)
    if str(data.get("code", "0")) != "0":
        raise InstrumentDataError(f"OKX instruments error {data.get('code')}: {data.get('msg')}")
    rows = data.get("data")
    if not isinstance(rows, list):
        raise InstrumentDataError("OKX instruments response has no 'data' list")
    errs = _Entries("OKX", rejects)
    out: list[InstrumentRef] = []
    for s in rows:
        try:
            inst_id, itype, tick, lot = s["instId"], s["instType"], s["tickSz"], s["lotSz"]
            status = s.get("state", "")
            if itype == "SPOT":
                out.append(_ref(Exchange.OKX, Market.SPOT, inst_id, s["baseCcy"], s["quoteCcy"], tick, lot, status))
                continue
            family = s.get("instFamily") or s.get("uly") or ""
            if family.count("-") != 1:
                continue  # options and odd instruments are not collected
            base, quote = family.split("-")
            ctype = s.get("ctType", "") or ""
            if itype == "SWAP":
                out.append(
                    _ref(
                        Exchange.OKX,
                        Market.PERP,
                        inst_id,
                        base,
                        quote,
                        tick,
                        lot,
                        status,
                        ctval=s.get("ctVal", ""),
                        contract_type=ctype,
                        ctval_ccy=s.get("ctValCcy", ""),
                    )
                )
            elif itype == "FUTURES":
                expiry = inst_id.rsplit("-", 1)[-1]
                if len(expiry) != 6 or not expiry.isdigit() or not expiry.isascii():
                    raise ValueError(f"FUTURES instId {inst_id!r} does not end in -YYMMDD")
                out.append(
                    _ref(
                        Exchange.OKX,
                        Market.FUTURE,
                        inst_id,
                        base,
                        quote,
                        tick,
                        lot,
                        status,
                        expiry=expiry,
                        ctval=s.get("ctVal", ""),
                        contract_type=ctype,
                        ctval_ccy=s.get("ctValCcy", ""),
                    )
                )
        except _ENTRY_ERRORS as exc:
            errs.bad(s, exc)
    return out


def parse_exchange_info(
    exchange: Exchange | str,
    market: Market | str,
    body: bytes | str | dict,
    *,
    category: str | None = None,
    rejects: list[str] | None = None,
) -> list[InstrumentRef]:
    """Any venue's exchange-info body fetched for (exchange, market). Every row the body
    lists is returned: Binance /fapi covers perpetuals and dated futures in one response,
    and callers key by venue symbol, whose market the row itself states."""
    ex, mk = Exchange(exchange), Market(market)
    if ex is Exchange.BINANCE:
        return parse_binance(body, futures=mk is not Market.SPOT, rejects=rejects)
    if ex is Exchange.BYBIT:
        return parse_bybit(body, category, rejects=rejects)
    return parse_okx(body, rejects=rejects)


__all__ = [
    "InstrumentDataError",
    "InstrumentRef",
    "by_native",
    "bybit_next_cursor",
    "parse_binance",
    "parse_bybit",
    "parse_exchange_info",
    "parse_okx",
]

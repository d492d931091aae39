"""Instrument reference data (tick size, lot size, scales, canonical symbol) per venue.

The normalizer enriches every record with it, so it must come from the venues' own
exchange-info endpoints, not from guesses: Binance /api/v3/exchangeInfo (spot) and
/fapi/v1/exchangeInfo (USD-M futures), Bybit /v5/market/instruments-info (spot, linear,
inverse) and OKX /api/v5/public/instruments (SPOT, SWAP, FUTURES). Each response is parsed
into InstrumentRef rows; the catalog is cached to a JSON file so a processor restarts
without network access and a test can feed bodies it built in the documented shape.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas.model import Exchange, Market
from schemas.scaled import scale_of, to_scaled
from schemas.symbols import Instrument, SymbolError, parse_native, validate_canonical


class InstrumentDataError(ValueError):
    """An exchange-info body that does not have the venue's documented shape."""


@dataclass(frozen=True, slots=True)
class InstrumentRef:
    exchange: str
    market: str
    native: str
    canonical: str
    base: str
    quote: str
    tick_size: str        # decimal strings exactly as the venue publishes them
    lot_size: str
    status: str = ""
    expiry: str = ""      # YYMMDD for dated futures
    contract_value: str = ""  # OKX ctVal / inverse contract size; "" for spot
    size_decimals: int = 0    # venue-declared quantity precision when wider than the lot

    @property
    def price_scale(self) -> int:
        return scale_of(self.tick_size)

    @property
    def size_scale(self) -> int:
        """Book and trade quantities can be finer than the order lot (Binance books carry
        baseAssetPrecision decimals), so the wider of the two."""
        return max(scale_of(self.lot_size), self.size_decimals)

    def tick_units(self, price_scale: int) -> int:
        return to_scaled(self.tick_size, price_scale)

    def lot_units(self, size_scale: int) -> int:
        return to_scaled(self.lot_size, size_scale)


def _yymmdd_from_ms(ms: str | int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%y%m%d")


def _ref(ex: Exchange, mk: Market, native: str, base: str, quote: str, tick: str, lot: str,
         status: str, expiry: str = "", ctval: str = "", size_decimals: int = 0) -> InstrumentRef:
    base, quote = base.upper(), quote.upper()
    canonical = Instrument(ex, mk, native, base, quote, expiry).canonical
    validate_canonical(canonical)
    scale_of(tick)  # both must be positive decimals; raises ScaleError otherwise
    scale_of(lot)
    if not 0 <= size_decimals <= 18:
        raise InstrumentDataError(f"{native}: quantity precision {size_decimals} out of range")
    return InstrumentRef(ex.value, mk.value, native, canonical, base, quote, tick, lot, status, expiry, ctval,
                         size_decimals)


def _load(body: bytes | str | dict) -> dict:
    if isinstance(body, dict):
        return body
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise InstrumentDataError(f"exchange info is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InstrumentDataError("exchange info must be a JSON object")
    return data


def _filters(sym: dict) -> dict[str, dict]:
    return {f.get("filterType"): f for f in sym.get("filters", []) if isinstance(f, dict)}


def parse_binance(body: bytes | str | dict, *, futures: bool) -> list[InstrumentRef]:
    """/api/v3/exchangeInfo (futures=False) or /fapi/v1/exchangeInfo (futures=True)."""
    data = _load(body)
    syms = data.get("symbols")
    if not isinstance(syms, list):
        raise InstrumentDataError("Binance exchangeInfo has no 'symbols' list")
    out: list[InstrumentRef] = []
    for s in syms:
        f = _filters(s)
        try:
            tick, lot = f["PRICE_FILTER"]["tickSize"], f["LOT_SIZE"]["stepSize"]
            native, base, quote, status = s["symbol"], s["baseAsset"], s["quoteAsset"], s.get("status", "")
        except (KeyError, TypeError) as exc:
            raise InstrumentDataError(f"Binance symbol entry lacks {exc}: {str(s)[:120]}") from exc
        if not futures:
            out.append(_ref(Exchange.BINANCE, Market.SPOT, native, base, quote, tick, lot, status,
                            size_decimals=int(s.get("baseAssetPrecision", 0))))
            continue
        ctype = s.get("contractType", "")
        qp = int(s.get("quantityPrecision", 0))
        if "PERPETUAL" in ctype:
            out.append(_ref(Exchange.BINANCE, Market.PERP, native, base, quote, tick, lot, status,
                            size_decimals=qp))
        elif ctype and "_" in native:  # CURRENT_QUARTER / NEXT_QUARTER: BTCUSDT_240927
            out.append(_ref(Exchange.BINANCE, Market.FUTURE, native, base, quote, tick, lot, status,
                            expiry=native.rsplit("_", 1)[1], size_decimals=qp))
    return out


def parse_bybit(body: bytes | str | dict, category: str | None = None) -> list[InstrumentRef]:
    """/v5/market/instruments-info for category spot, linear or inverse (one page)."""
    data = _load(body)
    if data.get("retCode", 0) != 0:
        raise InstrumentDataError(f"Bybit instruments-info error {data.get('retCode')}: {data.get('retMsg')}")
    result = data.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("list"), list):
        raise InstrumentDataError("Bybit instruments-info has no result.list")
    category = (result.get("category") or category or "").lower()
    out: list[InstrumentRef] = []
    for s in result["list"]:
        try:
            native, base, quote = s["symbol"], s["baseCoin"], s["quoteCoin"]
            tick = s["priceFilter"]["tickSize"]
            lsf = s["lotSizeFilter"]
            lot = lsf["basePrecision"] if category == "spot" else lsf["qtyStep"]
        except (KeyError, TypeError) as exc:
            raise InstrumentDataError(f"Bybit instrument lacks {exc}: {str(s)[:120]}") from exc
        status = s.get("status", "")
        if category == "spot":
            out.append(_ref(Exchange.BYBIT, Market.SPOT, native, base, quote, tick, lot, status))
            continue
        ctype = s.get("contractType", "")
        if ctype.endswith("Perpetual"):
            out.append(_ref(Exchange.BYBIT, Market.PERP, native, base, quote, tick, lot, status))
        elif ctype.endswith("Futures") and str(s.get("deliveryTime", "0")) not in ("", "0"):
            out.append(_ref(Exchange.BYBIT, Market.FUTURE, native, base, quote, tick, lot, status,
                            expiry=_yymmdd_from_ms(s["deliveryTime"])))
    return out


def parse_okx(body: bytes | str | dict) -> list[InstrumentRef]:
    """/api/v5/public/instruments for instType SPOT, SWAP or FUTURES."""
    data = _load(body)
    if str(data.get("code", "0")) != "0":
        raise InstrumentDataError(f"OKX instruments error {data.get('code')}: {data.get('msg')}")
    rows = data.get("data")
    if not isinstance(rows, list):
        raise InstrumentDataError("OKX instruments response has no 'data' list")
    out: list[InstrumentRef] = []
    for s in rows:
        try:
            inst_id, itype, tick, lot = s["instId"], s["instType"], s["tickSz"], s["lotSz"]
        except (KeyError, TypeError) as exc:
            raise InstrumentDataError(f"OKX instrument lacks {exc}: {str(s)[:120]}") from exc
        status = s.get("state", "")
        if itype == "SPOT":
            out.append(_ref(Exchange.OKX, Market.SPOT, inst_id, s["baseCcy"], s["quoteCcy"], tick, lot, status))
            continue
        family = s.get("instFamily") or s.get("uly") or ""
        if family.count("-") != 1:
            continue  # options and odd instruments are not collected
        base, quote = family.split("-")
        if itype == "SWAP":
            out.append(_ref(Exchange.OKX, Market.PERP, inst_id, base, quote, tick, lot, status,
                            ctval=s.get("ctVal", "")))
        elif itype == "FUTURES":
            expiry = inst_id.rsplit("-", 1)[1]
            out.append(_ref(Exchange.OKX, Market.FUTURE, inst_id, base, quote, tick, lot, status,
                            expiry=expiry, ctval=s.get("ctVal", "")))
    return out


#: (exchange, market) -> list of (path, query params, parser) requests that cover it.
ENDPOINTS: dict[tuple[Exchange, Market], list[tuple[str, dict[str, str], Callable]]] = {
    (Exchange.BINANCE, Market.SPOT): [("/api/v3/exchangeInfo", {}, lambda b: parse_binance(b, futures=False))],
    (Exchange.BINANCE, Market.PERP): [("/fapi/v1/exchangeInfo", {}, lambda b: parse_binance(b, futures=True))],
    (Exchange.BINANCE, Market.FUTURE): [("/fapi/v1/exchangeInfo", {}, lambda b: parse_binance(b, futures=True))],
    (Exchange.BYBIT, Market.SPOT): [("/v5/market/instruments-info", {"category": "spot"}, parse_bybit)],
    (Exchange.BYBIT, Market.PERP): [("/v5/market/instruments-info", {"category": "linear"}, parse_bybit),
                                    ("/v5/market/instruments-info", {"category": "inverse"}, parse_bybit)],
    (Exchange.BYBIT, Market.FUTURE): [("/v5/market/instruments-info", {"category": "linear"}, parse_bybit),
                                      ("/v5/market/instruments-info", {"category": "inverse"}, parse_bybit)],
    (Exchange.OKX, Market.SPOT): [("/api/v5/public/instruments", {"instType": "SPOT"}, parse_okx)],
    (Exchange.OKX, Market.PERP): [("/api/v5/public/instruments", {"instType": "SWAP"}, parse_okx)],
    (Exchange.OKX, Market.FUTURE): [("/api/v5/public/instruments", {"instType": "FUTURES"}, parse_okx)],
}

#: Live REST roots; tests and `--replay` point these at collectors/replay.py instead.
DEFAULT_BASE_URLS: dict[tuple[Exchange, Market], str] = {
    (Exchange.BINANCE, Market.SPOT): "https://api.binance.com",
    (Exchange.BINANCE, Market.PERP): "https://fapi.binance.com",
    (Exchange.BINANCE, Market.FUTURE): "https://fapi.binance.com",
    **{(Exchange.BYBIT, m): "https://api.bybit.com" for m in Market},
    **{(Exchange.OKX, m): "https://www.okx.com" for m in Market},
}


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def fetch_instruments(exchange: Exchange | str, market: Market | str, base_url: str | None = None,
                      get: Callable[[str], bytes] = http_get) -> list[InstrumentRef]:
    """Fetch and parse one venue+market's instruments (Bybit pages followed by cursor)."""
    ex, mk = Exchange(exchange), Market(market)
    root = (base_url or DEFAULT_BASE_URLS[(ex, mk)]).rstrip("/")
    out: list[InstrumentRef] = []
    for path, params, parser in ENDPOINTS[(ex, mk)]:
        query = dict(params)
        if ex is Exchange.BYBIT:
            query["limit"] = "1000"
        while True:
            body = get(f"{root}{path}?{urllib.parse.urlencode(query)}" if query else f"{root}{path}")
            out.extend(r for r in parser(body) if r.market == mk.value)
            cursor = ""
            if ex is Exchange.BYBIT:
                cursor = (_load(body).get("result") or {}).get("nextPageCursor") or ""
            if not cursor:
                break
            query["cursor"] = cursor
    return out


class InstrumentCatalog:
    """Lookup of InstrumentRef by venue symbol (and by canonical symbol)."""

    def __init__(self, refs: Iterable[InstrumentRef] = ()) -> None:
        self._by_native: dict[tuple[str, str, str], InstrumentRef] = {}
        self._by_canonical: dict[tuple[str, str, str], InstrumentRef] = {}
        self.add(refs)

    def add(self, refs: Iterable[InstrumentRef]) -> int:
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
        return self._by_native.get((Exchange(exchange).value, Market(market).value, native.upper()))

    def by_canonical(self, exchange: Exchange | str, market: Market | str, canonical: str) -> InstrumentRef | None:
        return self._by_canonical.get((Exchange(exchange).value, Market(market).value, canonical))

    def load_exchange_info(self, exchange: Exchange | str, market: Market | str,
                           body: bytes | str | dict, category: str | None = None) -> int:
        """Parse one exchange-info body of (exchange, market) and add what it lists."""
        ex, mk = Exchange(exchange), Market(market)
        if ex is Exchange.BINANCE:
            refs = parse_binance(body, futures=mk is not Market.SPOT)
        elif ex is Exchange.BYBIT:
            refs = parse_bybit(body, category)
        else:
            refs = parse_okx(body)
        return self.add(refs)

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

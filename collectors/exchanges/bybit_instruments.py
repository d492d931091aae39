"""Bybit exchange-info parsing: /v5/market/instruments-info per category (spot, linear,
inverse), one page at a time -> InstrumentRef rows (schemas/instruments.py).

Lives with the venue (reached through collectors/exchanges/registry.py); the adapter, the
normalizer's catalog and the bulk loaders all use this one parser.
"""

from __future__ import annotations

from typing import Any

from schemas.instruments import (
    InstrumentDataError,
    InstrumentRef,
    entry_rows,
    instrument_ref,
    load_body,
    whole_body,
    yymmdd_from_ms,
)
from schemas.model import Exchange, Market


@whole_body
def parse_bybit(data: dict, category: str | None = None, rejects: list[str] | None = None) -> list[InstrumentRef]:
    """/v5/market/instruments-info for category spot, linear or inverse (one page).

    Spot lots are lotSizeFilter.basePrecision (spot has no qtyStep; books carry quantities at
    the base precision); derivatives use qtyStep. The category is the body's own
    result.category, else the one the caller asked for.
    """
    if data.get("retCode", 0) != 0:
        raise InstrumentDataError(f"Bybit instruments-info error {data.get('retCode')}: {data.get('retMsg')}")
    result = data.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("list"), list):
        raise InstrumentDataError("Bybit instruments-info has no result.list")
    category = (result.get("category") or category or "").lower()
    if category not in ("spot", "linear", "inverse"):
        raise InstrumentDataError(f"Bybit instruments-info category unknown: {category!r}")

    def entry(s: Any) -> InstrumentRef | None:
        native, base, quote = s["symbol"], s["baseCoin"], s["quoteCoin"]
        tick = s["priceFilter"]["tickSize"]
        lsf = s["lotSizeFilter"]
        lot = lsf["basePrecision"] if category == "spot" else lsf["qtyStep"]
        status = s.get("status", "")
        if category == "spot":
            return instrument_ref(Exchange.BYBIT, Market.SPOT, native, base, quote, tick, lot, status)
        ctype = s.get("contractType", "") or ""
        # inverse contracts are 1 USD (quote) each; linear sizes are the base asset
        unit = {"ctval": "1", "ctval_ccy": quote} if category == "inverse" or ctype.startswith("Inverse") else {}
        ids = (native, base, quote, tick, lot, status)
        if ctype.endswith("Perpetual"):
            return instrument_ref(Exchange.BYBIT, Market.PERP, *ids, contract_type=ctype, **unit)
        if ctype.endswith("Futures") and str(s.get("deliveryTime", "0")) not in ("", "0"):
            expiry = yymmdd_from_ms(s["deliveryTime"])
            return instrument_ref(Exchange.BYBIT, Market.FUTURE, *ids, expiry=expiry, contract_type=ctype, **unit)
        return None

    return entry_rows("Bybit", result["list"], "Bybit instruments-info has no result.list", entry, rejects)


def bybit_next_cursor(body: bytes | str | dict) -> str:
    """The cursor of the next instruments-info page ("" on the last page)."""
    result = load_body(body).get("result")
    return (result.get("nextPageCursor") or "") if isinstance(result, dict) else ""

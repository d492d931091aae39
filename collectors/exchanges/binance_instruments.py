"""Binance exchange-info parsing: /api/v3/exchangeInfo (spot) and /fapi/v1/exchangeInfo
(USD-M perpetuals and dated futures) -> InstrumentRef rows (schemas/instruments.py).

Lives with the venue (reached through collectors/exchanges/registry.py); the adapter, the
normalizer's catalog and the bulk loaders all use this one parser.
"""

from __future__ import annotations

from typing import Any

from schemas.instruments import InstrumentRef, entry_rows, instrument_ref, opt_int, whole_body
from schemas.model import Exchange, Market


@whole_body
def parse_binance(data: dict, *, futures: bool, rejects: list[str] | None = None) -> list[InstrumentRef]:
    """/api/v3/exchangeInfo (futures=False) or /fapi/v1/exchangeInfo (futures=True).

    Price scale from PRICE_FILTER.tickSize. Size scale is the wider of LOT_SIZE.stepSize and
    the declared quantity precision (spot baseAssetPrecision, USD-M quantityPrecision): the
    lot step only constrains *orders*, while depth snapshots and diffs report resting
    quantities at the asset's full precision -- the genuine BTCUSDT book of 2024-08-08
    (stepSize 0.00001) carries quantities such as "25.42618900". Using the step alone would
    refuse those levels, the book would gap and wait for a snapshot. USD-M entries whose
    contractType is neither perpetual nor dated (settling, empty) are not collected and skipped.
    """

    def entry(s: Any) -> InstrumentRef | None:
        f = {x.get("filterType"): x for x in s.get("filters", []) if isinstance(x, dict)}
        tick, lot = f["PRICE_FILTER"]["tickSize"], f["LOT_SIZE"]["stepSize"]
        native, base, quote, status = s["symbol"], s["baseAsset"], s["quoteAsset"], s.get("status", "")
        ids = (native, base, quote, tick, lot, status)
        if not futures:
            return instrument_ref(
                Exchange.BINANCE, Market.SPOT, *ids, size_decimals=opt_int(s.get("baseAssetPrecision"))
            )
        ctype = s.get("contractType", "") or ""
        qp = opt_int(s.get("quantityPrecision"))
        if "PERPETUAL" in ctype:
            return instrument_ref(Exchange.BINANCE, Market.PERP, *ids, size_decimals=qp, contract_type=ctype)
        if ctype and "_" in native:  # CURRENT_QUARTER / NEXT_QUARTER: BTCUSDT_240927
            expiry = native.rsplit("_", 1)[1]
            return instrument_ref(
                Exchange.BINANCE, Market.FUTURE, *ids, expiry=expiry, size_decimals=qp, contract_type=ctype
            )
        return None

    return entry_rows("Binance", data.get("symbols"), "Binance exchangeInfo has no 'symbols' list", entry, rejects)

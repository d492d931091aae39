"""OKX exchange-info parsing: /api/v5/public/instruments per instType (SPOT, SWAP, FUTURES)
-> InstrumentRef rows (schemas/instruments.py).

Lives with the venue (reached through collectors/exchanges/registry.py); the adapter and the
normalizer's catalog both use this one parser.
"""

from __future__ import annotations

from typing import Any

from schemas.instruments import InstrumentDataError, InstrumentRef, entry_rows, instrument_ref, whole_body
from schemas.model import Exchange, Market


@whole_body
def parse_okx(data: dict, rejects: list[str] | None = None) -> list[InstrumentRef]:
    """/api/v5/public/instruments for instType SPOT, SWAP or FUTURES.

    Derivatives have empty baseCcy/quoteCcy; their pair is instFamily (or the older uly).
    Sizes of SWAP/FUTURES are contracts, so lotSz is already the book's quantity step; one
    contract is ctVal of ctValCcy (schemas/units.py turns that into the record's unit).
    """
    if str(data.get("code", "0")) != "0":
        raise InstrumentDataError(f"OKX instruments error {data.get('code')}: {data.get('msg')}")

    def entry(s: Any) -> InstrumentRef | None:
        inst_id, itype, tick, lot = s["instId"], s["instType"], s["tickSz"], s["lotSz"]
        status = s.get("state", "")
        if itype == "SPOT":
            return instrument_ref(Exchange.OKX, Market.SPOT, inst_id, s["baseCcy"], s["quoteCcy"], tick, lot, status)
        family = s.get("instFamily") or s.get("uly") or ""
        if family.count("-") != 1:
            return None  # options and odd instruments are not collected
        base, quote = family.split("-")
        ctype = s.get("ctType", "") or ""
        contract = {"ctval": s.get("ctVal", ""), "contract_type": ctype, "ctval_ccy": s.get("ctValCcy", "")}
        ids = (inst_id, base, quote, tick, lot, status)
        if itype == "SWAP":
            return instrument_ref(Exchange.OKX, Market.PERP, *ids, **contract)
        if itype == "FUTURES":
            expiry = inst_id.rsplit("-", 1)[-1]
            if len(expiry) != 6 or not expiry.isdigit() or not expiry.isascii():
                raise ValueError(f"FUTURES instId {inst_id!r} does not end in -YYMMDD")
            return instrument_ref(Exchange.OKX, Market.FUTURE, *ids, expiry=expiry, **contract)
        return None

    return entry_rows("OKX", data.get("data"), "OKX instruments response has no 'data' list", entry, rejects)

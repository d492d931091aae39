"""OKX exchange-info parsing: /api/v5/public/instruments per instType (SPOT, SWAP, FUTURES)
-> InstrumentRef rows (schemas/instruments.py).

Lives with the venue (reached through collectors/exchanges/registry.py); the adapter and the
normalizer's catalog both use this one parser.
"""

from __future__ import annotations

from schemas.instruments import (
    ENTRY_ERRORS,
    Entries,
    InstrumentDataError,
    InstrumentRef,
    instrument_ref,
    load_body,
    whole_body,
)
from schemas.model import Exchange, Market


@whole_body
def parse_okx(body: bytes | str | dict, rejects: list[str] | None = None) -> list[InstrumentRef]:
    """/api/v5/public/instruments for instType SPOT, SWAP or FUTURES.

    Derivatives have empty baseCcy/quoteCcy; their pair is instFamily (or the older uly).
    Sizes of SWAP/FUTURES are contracts, so lotSz is already the book's quantity step; one
    contract is ctVal of ctValCcy (schemas/units.py turns that into the record's unit).
    """
    data = load_body(body)
    if str(data.get("code", "0")) != "0":
        raise InstrumentDataError(f"OKX instruments error {data.get('code')}: {data.get('msg')}")
    rows = data.get("data")
    if not isinstance(rows, list):
        raise InstrumentDataError("OKX instruments response has no 'data' list")
    errs = Entries("OKX", rejects)
    out: list[InstrumentRef] = []
    for s in rows:
        try:
            inst_id, itype, tick, lot = s["instId"], s["instType"], s["tickSz"], s["lotSz"]
            status = s.get("state", "")
            if itype == "SPOT":
                out.append(
                    instrument_ref(Exchange.OKX, Market.SPOT, inst_id, s["baseCcy"], s["quoteCcy"], tick, lot, status)
                )
                continue
            family = s.get("instFamily") or s.get("uly") or ""
            if family.count("-") != 1:
                continue  # options and odd instruments are not collected
            base, quote = family.split("-")
            ctype = s.get("ctType", "") or ""
            contract = {"ctval": s.get("ctVal", ""), "contract_type": ctype, "ctval_ccy": s.get("ctValCcy", "")}
            if itype == "SWAP":
                out.append(
                    instrument_ref(Exchange.OKX, Market.PERP, inst_id, base, quote, tick, lot, status, **contract)
                )
            elif itype == "FUTURES":
                expiry = inst_id.rsplit("-", 1)[-1]
                if len(expiry) != 6 or not expiry.isdigit() or not expiry.isascii():
                    raise ValueError(f"FUTURES instId {inst_id!r} does not end in -YYMMDD")
                out.append(
                    instrument_ref(
                        Exchange.OKX, Market.FUTURE, inst_id, base, quote, tick, lot, status, expiry=expiry, **contract
                    )
                )
        except ENTRY_ERRORS as exc:
            errs.bad(s, exc)
    return out

"""Quantity units: what a size means, and its base-asset equivalent (docs/units.md).

Venues quote sizes in different units: spot, Binance USD-M and Bybit linear in the base
asset; OKX SWAP/FUTURES in contracts of `ctVal` (base asset for linear contracts, USD for
inverse ones); Bybit inverse in 1-USD contracts. Taken at face value, one contract of
BTC-USD-220527 (100 USD) would count as 1 BTC, so every processed record states its unit
(the envelope's qty_unit / contract_value / contract_value_ccy, from instrument data) and
every consumer that adds quantities across venues -- features, bars, pragma depth --
converts them to the base asset with the one function here.

Arithmetic is exact integer arithmetic on scaled integers:
  base (linear)   = qty * cv                 at scale size_scale + cv_scale (exact)
  base (inverse)  = qty * cv / px            at scale min(18, size_scale + cv_scale + INVERSE_EXTRA_DECIMALS),
                    rounded half to even (the only rounding on the market-data path; sums of
                    many rounded values stay unbiased); a nonzero size never rounds to 0 (it
                    becomes 1 unit), since 0 deletes a book level
where cv is the contract value as a scaled integer at its own decimal count.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import ProtoEnum
from schemas.scaled import INT64_MAX, ScaleError, scale_of, to_scaled

#: Decimals an inverse conversion adds beyond the contract's own: 1 contract of 100 USD at
#: 30 000 USD/BTC is 0.00333333 BTC (relative error below 1e-6 for prices under 1e6).
INVERSE_EXTRA_DECIMALS = 8
MAX_SCALE = 18


class QtyUnit(ProtoEnum, proto=pb.QtyUnit, prefix="QTY_UNIT_"):
    """Lower-case names of pb.QtyUnit, as stored in lake/ClickHouse columns."""

    BASE = "base"
    LINEAR_CONTRACT = "linear_contract"
    INVERSE_CONTRACT = "inverse_contract"


_FROM_PB = {u.pb: u for u in QtyUnit}


class UnitError(ValueError):
    """An instrument whose quantity unit cannot be determined (no silent guess)."""


@dataclass(frozen=True, slots=True)
class ContractUnit:
    """The unit of an instrument's quantities: `qty * contract_value` is in `ccy`."""

    unit: QtyUnit
    contract_value: str  # decimal string as published ("100", "0.01"); "1" for base units
    ccy: str

    @property
    def is_base(self) -> bool:
        return self.unit is QtyUnit.BASE

    @property
    def cv_scale(self) -> int:
        return scale_of(self.contract_value)

    @property
    def cv_units(self) -> int:
        return to_scaled(self.contract_value, self.cv_scale)

    def base_scale(self, size_scale: int) -> int:
        """Scale of the base-asset quantities derived from sizes at `size_scale`."""
        if self.unit is QtyUnit.BASE:
            return size_scale
        if self.unit is QtyUnit.LINEAR_CONTRACT:
            s = size_scale + self.cv_scale
            if s > MAX_SCALE:
                raise UnitError(f"base scale {s} of contract value {self.contract_value} exceeds {MAX_SCALE}")
            return s
        return min(MAX_SCALE, size_scale + self.cv_scale + INVERSE_EXTRA_DECIMALS)

    def to_base(self, qty: int, size_scale: int, px: int, price_scale: int) -> int:
        """`qty` (at size_scale) as base asset at base_scale(size_scale); px is needed for
        inverse contracts only (a level's or trade's own price; 0 -> 0)."""
        if self.unit is QtyUnit.BASE:
            return qty
        cv = self.cv_units
        if self.unit is QtyUnit.LINEAR_CONTRACT:
            return _checked(qty * cv)
        if px <= 0:
            return 0
        shift = self.base_scale(size_scale) - size_scale - self.cv_scale  # >= 0 unless clamped
        num = qty * cv * 10**price_scale
        if shift >= 0:
            num *= 10**shift
            den = px
        else:
            den = px * 10 ** (-shift)
        out = div_round_half_even(num, den)
        # a resting size must not round to 0: in a book delta 0 means "delete the level"
        return _checked(out if out or not qty else 1)

    def envelope_fields(self) -> dict:
        return {"qty_unit": self.unit.pb, "contract_value": self.contract_value, "contract_value_ccy": self.ccy}


def _checked(v: int) -> int:
    if v > INT64_MAX:
        raise UnitError(f"base quantity {v} overflows int64")
    return v


def div_round_half_even(num: int, den: int) -> int:
    """num / den rounded half to even (num >= 0, den > 0), exact integers."""
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2):
        q += 1
    return q


def base_unit(base: str) -> ContractUnit:
    return ContractUnit(QtyUnit.BASE, "1", base)


def unit_of(ref) -> ContractUnit:
    """The quantity unit of an InstrumentRef (schemas/instruments.py), by the venues' rules:
    a derivative with a contract value is in contracts -- linear when the value's currency
    is the base asset, inverse when it is the quote (OKX ctValCcy; Bybit inverse: 1 USD);
    OKX derivatives without a usable ctVal are refused rather than guessed; everything else
    (spot, Binance USD-M, Bybit linear) is the base asset."""
    cv, ccy = ref.contract_value, getattr(ref, "contract_value_ccy", "")
    if ref.market == "spot" or (not cv and ref.exchange != "okx"):
        return base_unit(ref.base)
    if not cv:
        raise UnitError(f"{ref.exchange} {ref.native}: derivative without a contract value")
    try:
        if to_scaled(cv, scale_of(cv)) <= 0:
            raise UnitError(f"{ref.native}: contract value {cv!r} not positive")
    except ScaleError as exc:
        raise UnitError(f"{ref.native}: contract value {cv!r}: {exc}") from None
    ctype = (ref.contract_type or "").lower()
    if not ccy:  # an older cache row without the currency: the venue's contract type says it
        ccy = ref.quote if "inverse" in ctype else ref.base
    ccy = ccy.upper()
    if ccy == ref.base:
        return ContractUnit(QtyUnit.LINEAR_CONTRACT, cv, ccy)
    if ccy == ref.quote or "inverse" in ctype:
        return ContractUnit(QtyUnit.INVERSE_CONTRACT, cv, ccy)
    raise UnitError(f"{ref.native}: contract value currency {ccy!r} is neither base {ref.base} nor quote {ref.quote}")


def unit_of_envelope(env: pb.Envelope) -> ContractUnit | None:
    """The envelope's stated unit; None when it states none (raw, or written before units):
    such sizes are read as base asset, as they always were."""
    u = _FROM_PB.get(env.qty_unit)
    if u is None or u is QtyUnit.BASE:
        return None
    return ContractUnit(u, env.contract_value, env.contract_value_ccy)


def unit_of_row(qty_unit: str | None, contract_value: str | None, ccy: str | None) -> ContractUnit | None:
    """Same from lake columns (None/"base" -> None: base asset)."""
    if not qty_unit or qty_unit == QtyUnit.BASE.value:
        return None
    return ContractUnit(QtyUnit(qty_unit), contract_value or "1", ccy or "")


def unit_name(value: int) -> str | None:
    """pb.QtyUnit number -> lake string (None when unspecified)."""
    u = _FROM_PB.get(value)
    return u.value if u is not None else None


def base_levels(
    levels, unit: ContractUnit | None, size_scale: int, price_scale: int
) -> tuple[list[tuple[int, int]], int]:
    """(px, qty) pairs of book levels with qty as base asset; and the base scale. Each
    level converts at its own price (an inverse level of N contracts at px holds N*cv/px)."""
    pairs = [(lv[0], lv[1]) if isinstance(lv, tuple) else (lv.px, lv.qty) for lv in levels]
    if unit is None or unit.is_base:
        return pairs, size_scale
    return [(px, unit.to_base(q, size_scale, px, price_scale)) for px, q in pairs], unit.base_scale(size_scale)


__all__ = [
    "INVERSE_EXTRA_DECIMALS",
    "ContractUnit",
    "QtyUnit",
    "UnitError",
    "base_levels",
    "base_unit",
    "div_round_half_even",
    "unit_name",
    "unit_of",
    "unit_of_envelope",
    "unit_of_row",
]

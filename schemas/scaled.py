"""Exact decimal-string <-> scaled-integer conversion.

Venues send prices and sizes as decimal strings. Going through float would silently
round (0.1 + 0.2 != 0.3) and make books and checksums disagree with the venue, so the
whole path is string and integer arithmetic only.
"""

from __future__ import annotations

import re

INT64_MAX = (1 << 63) - 1
#: Scale of funding rates (1e-12 resolves every venue's published precision).
RATE_SCALE = 12
#: Largest plausible |funding rate| per interval, at RATE_SCALE: 10 %. Venues cap rates far
#: below this (Binance/OKX/Bybit caps are a few percent), so anything beyond is a corrupt
#: value, refused by the collectors and the normalizer rather than landing in the lake.
MAX_ABS_FUNDING_RATE = 10**11

_POW10 = tuple(10**i for i in range(19))
_DECIMAL = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]{1,4}))?$")


class ScaleError(ValueError):
    """A decimal string that cannot be represented exactly at the requested scale."""


def to_scaled(text: str | bytes, scale: int, *, signed: bool = False) -> int:
    """Return ``text * 10**scale`` as an int, refusing anything that would lose digits.

    ``signed=False`` (the default) rejects negative values, because prices and sizes
    can't be negative; funding rates pass ``signed=True``.
    """
    if type(text) is str and 0 <= scale <= 18:
        # Fast path for what venues send almost always: plain unsigned "123.4500".
        whole, _, frac = text.partition(".")
        if whole.isdigit() and whole.isascii() and (not frac or (frac.isdigit() and frac.isascii())):
            lf = len(frac)
            if lf <= scale:
                n = int(whole + frac) * _POW10[scale - lf]
            else:
                if frac[scale:].strip("0"):
                    raise ScaleError(f"{text!r} has more precision than scale {scale}")
                n = int(whole + frac[:scale])
            if n > INT64_MAX:
                raise ScaleError(f"{text!r} overflows int64 at scale {scale}")
            return n
    if isinstance(text, bytes):
        text = text.decode("ascii", "strict")
    if not isinstance(text, str):
        raise ScaleError(f"expected a decimal string, got {type(text).__name__}")
    if scale < 0 or scale > 18:
        raise ScaleError(f"scale {scale} out of range 0..18")
    m = _DECIMAL.match(text.strip())
    if m is None or (not m.group(2) and not m.group(3)):
        raise ScaleError(f"not a decimal number: {text!r}")
    sign, whole, frac, exp = m.group(1), m.group(2) or "", m.group(3) or "", m.group(4)
    digits = whole + frac
    point = len(whole)  # position of the decimal point within digits
    if exp is not None:
        point += int(exp)
    # value = int(digits) * 10**(point - len(digits)); scaled = value * 10**scale
    shift = point - len(digits) + scale
    n = int(digits) if digits else 0
    if shift >= 0:
        n *= 10**shift
    else:
        div = 10 ** (-shift)
        n, rem = divmod(n, div)
        if rem:
            raise ScaleError(f"{text!r} has more precision than scale {scale}")
    if sign == "-" and n:
        if not signed:
            raise ScaleError(f"negative value not allowed: {text!r}")
        n = -n
    if n > INT64_MAX or n < -INT64_MAX - 1:
        raise ScaleError(f"{text!r} overflows int64 at scale {scale}")
    return n


def from_scaled(value: int, scale: int) -> str:
    """Render a scaled integer as the shortest exact decimal string ("65432.1", "0.0001")."""
    if scale < 0:
        raise ScaleError(f"scale {scale} out of range")
    sign = "-" if value < 0 else ""
    s = str(abs(value))
    if scale == 0:
        return sign + s
    s = s.rjust(scale + 1, "0")
    whole, frac = s[:-scale], s[-scale:].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def scale_of(step: str) -> int:
    """Number of decimals needed to represent multiples of a tick/lot size string ("0.010" -> 2)."""
    m = _DECIMAL.match(step.strip())
    if m is None:
        raise ScaleError(f"not a decimal number: {step!r}")
    whole, frac, exp = m.group(2) or "", (m.group(3) or "").rstrip("0"), int(m.group(4) or 0)
    if not whole.strip("0") and not frac:
        raise ScaleError(f"step must be positive: {step!r}")
    return max(0, len(frac) - exp)

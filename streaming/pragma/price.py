"""What "the price" of a pragma feed is: the one definition, chosen per feed.

- ``last_trade``: the price of the latest trade, exactly as the venue printed it.
  Published on every trade. Reflects what actually traded, but is stale between trades
  and bounces between bid and ask.
- ``mid``: (best bid + best ask) / 2 of the maintained L2 book. Published on every book
  change that moves it. Always exact: half of a price at scale s is a price at scale s+1.
- ``microprice``: the size-weighted mid (Stoikov's "weighted mid")
  ``(bid_px * ask_qty + ask_px * bid_qty) / (bid_qty + ask_qty)`` of the book top: it leans
  towards the side with less size, i.e. where the next trade is likelier to move the
  price. Same formula as the feature spec's ``microprice`` column
  (features/compute.py, which computes it as float64 for the lake); the contract needs a
  decimal string, so here it is exact integer arithmetic, rounded half-to-even to the
  instrument's price scale plus ``extra_decimals`` digits (a ratio has no finite
  decimal expansion in general).

Inputs are scaled integers (schemas.scaled): no float on the way to the published string.
Book-based prices are undefined (None) while a side is empty or the book is crossed.
"""

from __future__ import annotations

from enum import StrEnum

from schemas.scaled import from_scaled


class PriceDefinition(StrEnum):
    LAST_TRADE = "last_trade"
    MID = "mid"
    MICROPRICE = "microprice"

    @property
    def from_book(self) -> bool:
        return self is not PriceDefinition.LAST_TRADE


def trade_price(px: int, price_scale: int) -> str:
    return from_scaled(px, price_scale)


def _book_ok(bid_px: int | None, ask_px: int | None) -> bool:
    return bid_px is not None and ask_px is not None and bid_px < ask_px


def mid_price(bid_px: int | None, ask_px: int | None, price_scale: int) -> str | None:
    if not _book_ok(bid_px, ask_px):
        return None
    return from_scaled((bid_px + ask_px) * 5, price_scale + 1)


def _div_round_half_even(num: int, den: int) -> int:
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2 == 1):
        q += 1
    return q


def microprice(
    bid_px: int | None,
    bid_qty: int | None,
    ask_px: int | None,
    ask_qty: int | None,
    price_scale: int,
    extra_decimals: int = 4,
) -> str | None:
    if not _book_ok(bid_px, ask_px) or not bid_qty or not ask_qty:
        return None
    num = (bid_px * ask_qty + ask_px * bid_qty) * 10**extra_decimals
    return from_scaled(_div_round_half_even(num, bid_qty + ask_qty), price_scale + extra_decimals)


def book_price(
    definition: PriceDefinition,
    best_bid: tuple[int, int] | None,
    best_ask: tuple[int, int] | None,
    price_scale: int,
    extra_decimals: int = 4,
) -> str | None:
    """The book-derived price of ``definition`` from the top of book (px, qty) pairs."""
    bp, bq = best_bid if best_bid else (None, None)
    ap, aq = best_ask if best_ask else (None, None)
    if definition is PriceDefinition.MID:
        return mid_price(bp, ap, price_scale)
    if definition is PriceDefinition.MICROPRICE:
        return microprice(bp, bq, ap, aq, price_scale, extra_decimals)
    raise ValueError(f"{definition} is not a book price")

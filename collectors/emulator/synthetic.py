"""Synthetic market activity: valid venue frames for N symbols at a chosen rate.

The books live on integer ticks inside a fixed band around a mid price (bids below,
asks above), so they can never cross and never exceed ``levels`` per side — deep enough
for any subscribed depth, which keeps every venue's depth-N semantics exact. Each step
either changes 1–4 levels of one symbol (a book update, qty 0 deletes) or prints a trade
at the touch. The simulator (venues.py) renders the step in its venue's format, stamps
its sequence ids and checksums, and keeps its own book for snapshots.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from collectors.emulator.sim import InstrumentInfo, VenueSim
from schemas.model import Exchange, Market


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    symbols: tuple[str, ...]  # venue-native names
    rate: float | None = None  # frames per second over all symbols; None = as fast as read
    frames: int | None = None  # stop after this many steps; None = run until stopped
    trade_ratio: float = 0.25
    levels: int = 40  # price band per side, in ticks
    price_decimals: int = 2
    size_decimals: int = 3
    seed: int = 7

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("synthetic load needs at least one symbol")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive (or None for max)")
        if not 0 <= self.trade_ratio <= 1:
            raise ValueError("trade_ratio must be in [0, 1]")


def default_symbols(exchange: Exchange | str, market: Market | str, n: int) -> tuple[str, ...]:
    """N distinct, valid venue symbols (SYN0-USDT style bases)."""
    from collectors.emulator.venues import emulator_module

    spell = emulator_module(exchange).synthetic_symbol
    return tuple(spell(f"SYN{i}", Market(market)) for i in range(n))


def _fmt(value: int, decimals: int) -> str:
    if decimals == 0:
        return str(value)
    s = str(value).rjust(decimals + 1, "0")
    return f"{s[:-decimals]}.{s[-decimals:]}"


class SyntheticMarket:
    def __init__(self, sim: VenueSim, spec: SyntheticSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.books: dict[str, tuple[dict[int, int], dict[int, int], int]] = {}
        self.trade_ids: dict[str, int] = {}
        self.steps = 0
        self._i = 0

    def start(self, ts_ms: int) -> None:
        sp = self.spec
        market = getattr(self.sim, "market", Market.SPOT)
        for k, native in enumerate(sp.symbols):
            mid = (100 + 7 * k) * 10**sp.price_decimals
            bids = {mid - t: self.rng.randint(1, 5000) for t in range(1, sp.levels + 1)}
            asks = {mid + t: self.rng.randint(1, 5000) for t in range(1, sp.levels + 1)}
            self.books[native] = (bids, asks, mid)
            self.trade_ids[native] = 1_000_000
            base = native.split("-")[0].removesuffix("USDT")
            self.sim.add_instrument(
                InstrumentInfo(native, market, base, "USDT", _fmt(1, sp.price_decimals), _fmt(1, sp.size_decimals))
            )
            self.sim.synth_book(native, self._levels(bids, reverse=True), self._levels(asks), ts_ms, snapshot=True)

    def _levels(self, side: dict[int, int], reverse: bool = False) -> list[list[str]]:
        pd, sd = self.spec.price_decimals, self.spec.size_decimals
        return [[_fmt(p, pd), _fmt(q, sd)] for p, q in sorted(side.items(), reverse=reverse)]

    def step(self, ts_ms: int) -> None:
        sp = self.spec
        native = sp.symbols[self._i]
        self._i = (self._i + 1) % len(sp.symbols)
        bids, asks, mid = self.books[native]
        rng = self.rng
        pd, sd = sp.price_decimals, sp.size_decimals
        self.steps += 1
        if rng.random() < sp.trade_ratio and bids and asks:
            buyer_maker = rng.random() < 0.5
            px = max(bids) if buyer_maker else min(asks)
            self.trade_ids[native] += 1
            self.sim.synth_trade(
                native, _fmt(px, pd), _fmt(rng.randint(1, 500), sd), buyer_maker, ts_ms, self.trade_ids[native]
            )
            return
        b_chg: dict[int, int] = {}
        a_chg: dict[int, int] = {}
        for _ in range(rng.randint(1, 4)):
            off = rng.randint(1, sp.levels)
            qty = 0 if rng.random() < 0.3 else rng.randint(1, 5000)
            if rng.random() < 0.5:
                b_chg[mid - off] = qty
            else:
                a_chg[mid + off] = qty
        for side, chg in ((bids, b_chg), (asks, a_chg)):
            for px, qty in chg.items():
                if qty:
                    side[px] = qty
                else:
                    side.pop(px, None)
        self.sim.synth_book(
            native,
            [[_fmt(p, pd), _fmt(q, sd)] for p, q in b_chg.items()],
            [[_fmt(p, pd), _fmt(q, sd)] for p, q in a_chg.items()],
            ts_ms,
        )

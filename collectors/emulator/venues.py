"""Which simulator plays each venue host: the registry (collectors/exchanges/registry.py)
names each venue's emulator module (collectors/emulator/<venue>.py), which builds the
simulator of a market's host. One host per distinct endpoint pair of the venue: Binance
spot and USD-M are two hosts, every Bybit category shares one, OKX serves all markets on one.
"""

from __future__ import annotations

import importlib
from typing import Any

from collectors.emulator.sim import VenueSim
from collectors.exchanges import registry
from schemas.model import Exchange, Market


def emulator_module(exchange: Exchange | str) -> Any:
    """The venue's emulator module (host_name, make_sim, synthetic_symbol)."""
    return importlib.import_module(registry.venue(exchange).emulator)


def sim_name(exchange: Exchange | str, market: Market | str) -> str:
    """Name of the emulator host serving (exchange, market)."""
    return emulator_module(exchange).host_name(Market(market))


def make_sim(exchange: Exchange | str, market: Market | str = Market.SPOT, **kw: Any) -> VenueSim:
    """A new simulator of the host serving (exchange, market)."""
    return emulator_module(exchange).make_sim(Market(market), **kw)


__all__ = ["emulator_module", "make_sim", "sim_name"]

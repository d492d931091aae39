"""The L2 order book every layer shares (collectors, features, pragma); pure Python, no dependencies."""

from orderbook.book import L2Book, Level

__all__ = ["L2Book", "Level"]

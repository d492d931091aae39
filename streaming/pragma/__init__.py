"""The pragma v1 publishing contract: pragma-prices-v1 and pragma-orderbook-v1 (docs/pragma-contract.md)."""

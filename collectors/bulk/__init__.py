"""Historical bulk files (Binance public data, Bybit history files) -> canonical envelopes.

Plain Python: URL layouts, streamed downloads with resume, checksum verification, CSV and
book-history parsers, and the mapping to the same envelopes (scales, event_ids) the stream
produces after the normalizer, so the lake can hold both without doubling a day.
The Dagster assets that drive it live in assets/bulk_history.py.
"""

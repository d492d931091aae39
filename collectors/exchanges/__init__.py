"""Venues. Per venue: ``<venue>.py`` the adapter (wire frames -> canonical events, book sync
rules), ``<venue>_venue.py`` its declaration (hosts and paths per feed, rate limits, which
adapter and options serve a market, instrument requests, emulator module) and
``<venue>_instruments.py`` its exchange-info parser. ``registry.py`` maps each exchange to its
declaration; callers ask the registry, never a venue module by name. ``common.py`` and
``base.py`` are what every adapter shares; ``venue.py`` is the declaration's shape."""

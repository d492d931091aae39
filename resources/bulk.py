"""Dagster resource for bulk history: where the archives come from and how to fetch them.

Base URLs are configurable so a mirror, an S3 bucket front or a local test server can
stand in for data.binance.vision / public.bybit.com. Instrument reference data (scales,
tick, lot) comes from the same JSON cache the normalizer uses, refreshed from the venue's
exchange-info endpoint when a symbol is missing: bulk rows must carry the scales the
stream's rows carry, or their event_ids would differ.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from collectors.backoff import BackoffPolicy
from collectors.bulk.binance_vision import DEFAULT_BASE_URL
from collectors.bulk.bybit_history import BOOK_BASE_URL, TRADES_BASE_URL
from collectors.bulk.common import Target
from collectors.bulk.download import Downloader, Progress
from collectors.bulk.sources import BulkSource
from runtime.home import resolve_home
from schemas.instruments import InstrumentRef
from schemas.model import Exchange, Market
from schemas.units import unit_of
from streaming.processors.instruments import InstrumentCatalog, fetch_instruments


class BulkHistoryResource(dg.ConfigurableResource):
    binance_base_url: str = Field(default=DEFAULT_BASE_URL, description="data.binance.vision or a mirror")
    bybit_book_base_url: str = Field(default=BOOK_BASE_URL, description="Bybit order-book history root")
    bybit_trades_base_url: str = Field(default=TRADES_BASE_URL, description="Bybit trade history root")
    download_dir: str | None = Field(default=None, description="archive cache; default $TICKLAKE_HOME/bulk")
    max_concurrency: int = Field(default=4, description="downloads in flight at once")
    per_host_rate: float = Field(default=10.0, description="request starts per second per host (0: no limit)")
    retries: int = Field(default=5, description="retries of a transient failure per file")
    backoff_base_s: float = Field(default=0.5)
    backoff_cap_s: float = Field(default=30.0)
    timeout_s: float = Field(default=60.0)
    instruments_cache: str | None = Field(
        default=None, description="InstrumentCatalog JSON; default $TICKLAKE_HOME/instruments.json"
    )
    exchange_info_urls: dict[str, str] = Field(
        default_factory=dict, description="'<exchange>:<market>' -> exchange-info root (default: live venue)"
    )

    _catalog: InstrumentCatalog | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def cache_dir(self) -> Path:
        d = Path(self.download_dir) if self.download_dir else resolve_home().root / "bulk"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def downloader(self, progress: Progress | None = None) -> Downloader:
        return Downloader(
            max_concurrency=self.max_concurrency,
            per_host_rate=self.per_host_rate,
            retries=self.retries,
            timeout_s=self.timeout_s,
            progress=progress,
            backoff=BackoffPolicy(base_s=self.backoff_base_s, cap_s=self.backoff_cap_s),
        )

    def _cache_path(self) -> Path:
        return Path(self.instruments_cache) if self.instruments_cache else resolve_home().root / "instruments.json"

    def catalog(self) -> InstrumentCatalog:
        if self._catalog is None:
            p = self._cache_path()
            self._catalog = InstrumentCatalog.load(p) if p.exists() else InstrumentCatalog()
        return self._catalog

    def instrument(self, exchange: Exchange, market: Market, native: str) -> InstrumentRef:
        with self._lock:
            cat = self.catalog()
            ref = cat.get(exchange, market, native)
            if ref is None:
                url = self.exchange_info_urls.get(f"{exchange.value}:{market.value}")
                cat.add(fetch_instruments(exchange, market, url))
                cat.save(self._cache_path())
                ref = cat.get(exchange, market, native)
            if ref is None:
                raise LookupError(
                    f"{exchange} {market} {native}: not in the venue's exchange info; cannot know its scales"
                )
            return ref

    def target(self, source: BulkSource) -> Target:
        ref = self.instrument(source.exchange, source.lake_market, source.symbol)
        ps, ss = ref.price_scale, ref.size_scale
        return Target(
            source.exchange,
            source.lake_market,
            source.symbol,
            ref.canonical,
            ps,
            ss,
            ref.tick_units(ps),
            ref.lot_units(ss),
            source.shard,
            unit_of(ref),
        )

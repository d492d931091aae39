"""The normalizer and the feature processor as long-running Dagster jobs.

One run = one processor process. Runs carry `ticklake/service: normalizer` or
`ticklake/service: feature-processor`; dagster.yaml limits each tag value to one run, and
pipelines/services/supervisors_processors.py requests a run whenever none is alive, so a processor
that dies is restarted. Terminating a run from the UI interrupts the op; the op then asks
the processor loop (running in a worker thread) to stop, which finishes and commits the
micro-batch in flight before the run ends — nothing is left in an open transaction.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import os

import dagster as dg

from pipelines.k8s import FEATURE_PROCESSOR, NORMALIZER
from pipelines.services.builder import SERVICE_TAG, service
from resources.home import resolve_home
from schemas.model import Exchange, Market
from streaming.processors.feature_processor import FeatureProcessor, parse_pairs
from streaming.processors.normalizer import (
    DEFAULT_DEDUP_SPAN,
    Normalizer,
    NormalizerService,
    build_catalog,
    input_topics_for,
)

__all__ = ["FEATURE_PROCESSOR", "NORMALIZER", "SERVICE_TAG", "feature_processor_service", "normalizer_service"]


class NormalizerRunConfig(dg.Config):
    exchanges: list[str] = []
    """Limit to these exchanges (empty: all)."""
    markets: list[str] = []
    """Limit to these markets (empty: all)."""
    instruments_cache: str = ""
    """JSON instrument cache (default $TICKLAKE_HOME/instruments.json); refreshed on unknown symbols."""
    exchange_info_urls: list[str] = []
    """EXCHANGE:MARKET=URL roots for exchange-info (e.g. the replay emulator); default the live venues."""
    dedup_span: int = DEFAULT_DEDUP_SPAN
    """Offsets per partition the event_id dedup window spans (also what a restart re-reads)."""
    batch_max_ms: int = 200
    idle_exit_s: float | None = None
    """Stop after this long without input (tests, one-off catch-up); None = run until terminated."""
    max_seconds: float | None = None


#: Comma-separated EXCHANGE:MARKET=URL exchange-info roots used when the run config gives none.
EXCHANGE_INFO_ENV = "TICKLAKE_EXCHANGE_INFO_URLS"


def _urls(items: list[str]) -> dict:
    out = {}
    for item in items:
        venue, _, url = item.partition("=")
        ex, _, mk = venue.partition(":")
        out[(Exchange(ex), Market(mk))] = url
    return out


def _normalizer(context: dg.OpExecutionContext, config: NormalizerRunConfig) -> NormalizerService:
    cache = config.instruments_cache or str(resolve_home().ensure().root / "instruments.json")
    # `ticklake up --replay` points reference data at its emulator through the environment,
    # because the supervisor launches the normalizer without run config.
    urls = config.exchange_info_urls or [u for u in os.environ.get(EXCHANGE_INFO_ENV, "").split(",") if u]
    catalog, refresh = build_catalog(cache, _urls(urls))
    context.log.info(f"instrument catalog: {len(catalog)} instruments from {cache}")
    return NormalizerService(
        context.resources.kafka.connection(),
        Normalizer(catalog, dedup_span=config.dedup_span, refresh=refresh),
        input_topics_for(config.exchanges or None, config.markets or None),
        batch_max_ms=config.batch_max_ms,
    )


class FeatureProcessorRunConfig(dg.Config):
    pairs: list[str] = []
    """MARKET:EXCHANGE pairs to process (empty: all)."""
    name: str = "default"
    """Processor name: its state topic, consumer group and transactional id."""
    allowed_lateness_ms: int = 500
    idle_timeout_ms: int = 2000
    checkpoint_interval_s: float = 10.0
    batch_max_ms: int = 200
    idle_exit_s: float | None = None
    max_seconds: float | None = None


def _feature_processor(context: dg.OpExecutionContext, config: FeatureProcessorRunConfig) -> FeatureProcessor:
    return FeatureProcessor(
        context.resources.kafka.connection(),
        parse_pairs(config.pairs or None),
        processor_name=config.name,
        allowed_lateness_ms=config.allowed_lateness_ms,
        idle_timeout_ms=config.idle_timeout_ms,
        checkpoint_interval_s=config.checkpoint_interval_s,
        batch_max_ms=config.batch_max_ms,
    )


NORMALIZER_SERVICE = service(
    NORMALIZER,
    NormalizerRunConfig,
    _normalizer,
    job_name="normalizer_service",
    op_name="run_normalizer",
    report=lambda svc: (
        f"ok={svc.normalizer.ok} duplicates={svc.normalizer.duplicates} dlq={dict(svc.normalizer.counters.counts)}"
    ),
    description="Long-running normalizer: raw.* -> processed.* (+ dlq.normalize), exactly once.",
)
FEATURE_PROCESSOR_SERVICE = service(
    FEATURE_PROCESSOR,
    FeatureProcessorRunConfig,
    _feature_processor,
    job_name="feature_processor_service",
    op_name="run_feature_processor",
    report=lambda fp: f"late={fp.engine.late} dlq={dict(fp.engine.dlq.counts)}",
    description="Long-running feature processor: processed.* -> feature.*.signals.* (+ dlq.features).",
)
normalizer_service = NORMALIZER_SERVICE.job
feature_processor_service = FEATURE_PROCESSOR_SERVICE.job

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`);
#: both are supervised by pipelines/services/supervisors_processors.py.
defs = dg.Definitions(jobs=[normalizer_service, feature_processor_service])

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
import threading

import dagster as dg

from pipelines.k8s import k8s_tags
from resources.home import resolve_home
from resources.kafka import KafkaResource
from runtime.service_status import service_run
from schemas.model import Exchange, Market
from streaming.processors.feature_processor import FeatureProcessor, parse_pairs
from streaming.processors.normalizer import (
    DEFAULT_DEDUP_SPAN,
    Normalizer,
    NormalizerService,
    build_catalog,
    input_topics_for,
)
from streaming.processors.txn_loop import TransactionalLoop

SERVICE_TAG = "ticklake/service"
NORMALIZER = "normalizer"
FEATURE_PROCESSOR = "feature-processor"


def service_tags(name: str) -> dict[str, str]:
    return {SERVICE_TAG: name}


def run_until_stopped(
    context: dg.OpExecutionContext, loop: TransactionalLoop, *, idle_exit_s: float | None, max_seconds: float | None
) -> None:
    """Run `loop` in a worker thread; a run termination (interrupt in this thread) becomes a
    stop request, and we wait for the loop to commit its batch and close."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            loop.run(idle_exit_s=idle_exit_s, max_seconds=max_seconds)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the op's thread
            errors.append(exc)

    t = threading.Thread(target=work, name=f"{loop.name}-loop", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.5)
    except BaseException:
        context.log.info(f"{loop.name}: stop requested; draining and committing the current batch")
        loop.request_stop()
        t.join(120)
        raise
    if errors:
        raise errors[0]
    context.log.info(f"{loop.name} stopped: {loop.stats}")


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


@dg.op(tags={"kind": "kafka"})
def run_normalizer(context: dg.OpExecutionContext, config: NormalizerRunConfig, kafka: KafkaResource) -> dg.Nothing:
    with service_run(NORMALIZER, run_id=context.run_id, home=resolve_home().root):
        cache = config.instruments_cache or str(resolve_home().ensure().root / "instruments.json")
        # `ticklake up --replay` points reference data at its emulator through the environment,
        # because the supervisor launches the normalizer without run config.
        urls = config.exchange_info_urls or [u for u in os.environ.get(EXCHANGE_INFO_ENV, "").split(",") if u]
        catalog, refresh = build_catalog(cache, _urls(urls))
        context.log.info(f"instrument catalog: {len(catalog)} instruments from {cache}")
        normalizer = Normalizer(catalog, dedup_span=config.dedup_span, refresh=refresh)
        svc = NormalizerService(
            kafka.connection(),
            normalizer,
            input_topics_for(config.exchanges or None, config.markets or None),
            batch_max_ms=config.batch_max_ms,
        )
        run_until_stopped(context, svc, idle_exit_s=config.idle_exit_s, max_seconds=config.max_seconds)
        context.log.info(
            f"normalizer: ok={svc.normalizer.ok} duplicates={svc.normalizer.duplicates} "
            f"dlq={dict(svc.normalizer.counters.counts)}"
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


@dg.op(tags={"kind": "kafka"})
def run_feature_processor(
    context: dg.OpExecutionContext, config: FeatureProcessorRunConfig, kafka: KafkaResource
) -> dg.Nothing:
    with service_run(FEATURE_PROCESSOR, run_id=context.run_id, home=resolve_home().root):
        fp = FeatureProcessor(
            kafka.connection(),
            parse_pairs(config.pairs or None),
            processor_name=config.name,
            allowed_lateness_ms=config.allowed_lateness_ms,
            idle_timeout_ms=config.idle_timeout_ms,
            checkpoint_interval_s=config.checkpoint_interval_s,
            batch_max_ms=config.batch_max_ms,
        )
        run_until_stopped(context, fp, idle_exit_s=config.idle_exit_s, max_seconds=config.max_seconds)
        context.log.info(f"feature processor: late={fp.engine.late} dlq={dict(fp.engine.dlq.counts)}")


@dg.job(
    tags={**service_tags(NORMALIZER), **k8s_tags(NORMALIZER)},
    description="Long-running normalizer: raw.* -> processed.* (+ dlq.normalize), exactly once.",
    executor_def=dg.in_process_executor,
)  # in the run worker: no 20 ms step-event polling parent (~1 % of a core each)
def normalizer_service():
    run_normalizer()


@dg.job(
    tags={**service_tags(FEATURE_PROCESSOR), **k8s_tags(FEATURE_PROCESSOR)},
    description="Long-running feature processor: processed.* -> feature.*.signals.* (+ dlq.features).",
    executor_def=dg.in_process_executor,
)  # in the run worker: no 20 ms step-event polling parent (~1 % of a core each)
def feature_processor_service():
    run_feature_processor()


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(jobs=[normalizer_service, feature_processor_service])

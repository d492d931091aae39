"""The normalizer and the feature processor as long-running Dagster jobs.

One run = one processor process. Runs carry `ticklake/service: normalizer` or
`ticklake/service: feature-processor`; dagster.yaml limits each tag value to one run, and
`stream_processors_supervisor` (one sensor for both, its name unchanged) requests a run
whenever none is alive, so a processor that dies is restarted; the new process fences the
dead one's Kafka producer and resumes from the committed offsets and state. Terminating a run from the UI interrupts the op; the op then asks
the processor loop (running in a worker thread) to stop, which finishes and commits the
micro-batch in flight before the run ends — nothing is left in an open transaction.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
from collections.abc import Callable
from typing import Any

import dagster as dg

from pipelines.services.builder import SERVICE_TAG, Pod, Service, service, supervisor
from runtime.home import resolve_home
from streaming.processors.feature_processor import (
    FeatureProcessor,
    FeatureProcessorSettings,
    feature_processor_from_settings,
)
from streaming.processors.normalizer import (
    EXCHANGE_INFO_ENV,
    NormalizerService,
    NormalizerSettings,
    normalizer_from_settings,
)

#: Service names (run tag values, status and metrics labels).
NORMALIZER = "normalizer"
FEATURE_PROCESSOR = "feature-processor"

__all__ = [
    "EXCHANGE_INFO_ENV",
    "FEATURE_PROCESSOR",
    "NORMALIZER",
    "SERVICE_TAG",
    "feature_processor_service",
    "normalizer_service",
]


class NormalizerRunConfig(dg.Config, NormalizerSettings):
    """The normalizer's settings (streaming/processors/normalizer.py) as Dagster run config."""


class FeatureProcessorRunConfig(dg.Config, FeatureProcessorSettings):
    """The feature processor's settings (streaming/processors/feature_processor.py) as run config."""


def _normalizer(context: dg.OpExecutionContext, config: NormalizerRunConfig) -> NormalizerService:
    home_cache = str(resolve_home().ensure().root / "instruments.json")
    return normalizer_from_settings(context.resources.kafka.connection(), config, default_cache=home_cache)


def _feature_processor(context: dg.OpExecutionContext, config: FeatureProcessorRunConfig) -> FeatureProcessor:
    return feature_processor_from_settings(context.resources.kafka.connection(), config)


def _processor(name: str, loop: Callable[..., Any], pod: Pod, description: str) -> Service:
    """A stream processor's service: kept alive by the one stream_processors_supervisor
    below, not by a supervisor of its own."""
    return service(name, loop, pod=pod, own_supervisor=False, description=description)


NORMALIZER_SERVICE = _processor(
    NORMALIZER,
    _normalizer,
    Pod("1", "1Gi", "2Gi"),
    "Long-running normalizer: raw.* -> processed.* (+ dlq.normalize), exactly once.",
)
FEATURE_PROCESSOR_SERVICE = _processor(
    FEATURE_PROCESSOR,
    _feature_processor,
    Pod("1", "2Gi", "4Gi"),
    "Long-running feature processor: processed.* -> feature.*.signals.* (+ dlq.features).",
)
normalizer_service = NORMALIZER_SERVICE.job
feature_processor_service = FEATURE_PROCESSOR_SERVICE.job

stream_processors_supervisor = supervisor(
    "stream_processors_supervisor",
    [NORMALIZER_SERVICE, FEATURE_PROCESSOR_SERVICE],
    description="Keeps one normalizer and one feature processor run alive.",
)

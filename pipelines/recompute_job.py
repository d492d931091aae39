"""The recompute runbook as a job: launch it from the UI (Launchpad) with a time range.

Logic lives in streaming/processors/recompute.py; this op only parses the config, runs it and
reports counts, checksums and what (if anything) was promoted as output metadata.
"""

from datetime import UTC

import dagster as dg

from pipelines.op_job import op_job
from resources.kafka import KafkaResource
from runtime.home import resolve_home
from streaming.processors.feature_processor import parse_pairs
from streaming.processors.normalizer import build_catalog, input_topics_for
from streaming.processors.recompute import recompute_features, recompute_normalizer


class RecomputeConfig(dg.Config):
    start: str
    """Range start, ISO 8601 (e.g. 2024-08-09T13:00:00Z)."""
    end: str
    """Range end (exclusive), ISO 8601."""
    processor: str = "features"
    """Which processor to recompute: "features" or "normalizer"."""
    processor_name: str = "default"
    """Which feature processor's history to recompute (its state topic and group)."""
    pairs: list[str] = []
    """features: MARKET:EXCHANGE pairs whose rows to recompute, compare and promote (empty: all)."""
    promote: bool = False
    """Publish missing and corrected rows into the live feature topics when they differ."""
    tag: str = ""
    """Side topic suffix (default: the run id)."""
    exchanges: list[str] = []
    """normalizer: raw topics of these exchanges (empty: all)."""
    markets: list[str] = []
    """normalizer: raw topics of these markets (empty: all)."""
    instruments_cache: str = ""
    """normalizer: reference data cache (default $TICKLAKE_HOME/instruments.json)."""


def _iso_us(text: str) -> int:
    from datetime import datetime

    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


@dg.op(out=dg.Out(dict), tags={"kind": "kafka"})
def recompute_range(context: dg.OpExecutionContext, config: RecomputeConfig, kafka: KafkaResource):
    tag = config.tag or context.run_id[:8]
    if config.processor == "features":
        report = recompute_features(
            kafka.connection(),
            parse_pairs(config.pairs or None),
            _iso_us(config.start),
            _iso_us(config.end),
            processor_name=config.processor_name,
            promote=config.promote,
            tag=tag,
        )
    elif config.processor == "normalizer":
        cache = config.instruments_cache or str(resolve_home().root / "instruments.json")
        catalog, _ = build_catalog(cache)
        report = recompute_normalizer(
            kafka.connection(),
            catalog,
            input_topics_for(config.exchanges or None, config.markets or None),
            _iso_us(config.start),
            _iso_us(config.end),
            promote=config.promote,
            tag=tag,
        )
    else:
        raise dg.Failure(f"unknown processor {config.processor!r}; expected 'features' or 'normalizer'")
    d = report.as_dict()
    context.log.info(
        f"recompute {config.start}..{config.end}: recomputed {report.recomputed}, live {report.live}, "
        f"equal={report.equal}, promoted {len(report.promoted)}"
    )
    return dg.Output(
        d,
        metadata={
            "side_topic": report.side_topic,
            "recomputed": report.recomputed,
            "live": report.live,
            "live_copies": report.live_copies,
            "equal": report.equal,
            "complete": report.complete,
            "from_checkpoint": report.from_checkpoint,
            "recomputed_checksum": report.recomputed_checksum,
            "live_checksum": report.live_checksum,
            "missing_in_live": len(report.missing_in_live),
            "extra_in_live": len(report.extra_in_live),
            "differing": len(report.differing),
            "promoted": len(report.promoted),
        },
    )


recompute_job = op_job(
    recompute_range,
    "recompute_job",
    "Recompute runbook: recompute a processor's output (features or normalized records) for a "
    "time range into a side topic, compare with the live topic, optionally promote.",
    tags={"ticklake/runbook": "recompute"},
)


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(jobs=[recompute_job])

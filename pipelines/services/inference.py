"""Online inference as a long-running Dagster service (streaming/processors/inference.py).

Same shape as the other services (built by pipelines/services/builder.py): a one-op job tagged ``ticklake/service: inference``
(dagster.yaml allows one live run per service tag value), run in-process, whose op runs
the loops in a worker thread until the run is terminated (the loops then commit the batch
in flight), and a supervisor sensor, shipped STOPPED and switched on by `ticklake up`
with every other sensor, that requests a run whenever none is alive. The registry comes
from the `mlflow` resource, the broker from `kafka`.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg
from pydantic import Field

from ml.dataset import HORIZONS_S
from ml.registry import model_name
from pipelines.services.builder import Pod, service
from streaming.processors.feature_processor import parse_pairs
from streaming.processors.inference import InferenceLoop, InferenceService


class InferenceRunConfig(dg.Config):
    models: list[str] = Field(default_factory=list)
    """Registered models to serve (empty: one per horizon, mid_ret_<h>s)."""
    pairs: list[str] = Field(default_factory=list)
    """MARKET:EXCHANGE feature topics to score (empty: all)."""
    shadows: list[str] = Field(default_factory=list)
    """Extra loops serving another alias: MODEL:ALIAS[:SYMBOL,SYMBOL] (canary symbols optional),
    published as prediction.<market>.<MODEL>-<ALIAS> (see pipelines/ml_promotion.py)."""
    reload_interval_s: float = 10.0
    """How often the `champion` alias is checked for a new version."""
    batch_max_ms: int = 200
    idle_exit_s: float | None = None
    """Stop after this long without a committed batch (tests); None = run until terminated."""
    max_seconds: float | None = None


def _inference(context: dg.OpExecutionContext, config: InferenceRunConfig) -> InferenceService:
    kafka, mlflow = context.resources.kafka, context.resources.mlflow
    models = config.models or [model_name(h) for h in HORIZONS_S]
    pairs = parse_pairs(config.pairs or None)
    settings = mlflow.settings()
    loops = [
        InferenceLoop(
            kafka.connection(),
            settings,
            m,
            pairs,
            reload_interval_s=config.reload_interval_s,
            batch_max_ms=config.batch_max_ms,
        )
        for m in models
    ]
    for spec in config.shadows:
        model, alias, *syms = spec.split(":")
        loops.append(
            InferenceLoop(
                kafka.connection(),
                settings,
                model,
                pairs,
                alias=alias,
                symbols=[s for s in ",".join(syms).split(",") if s] or None,
                reload_interval_s=config.reload_interval_s,
                batch_max_ms=config.batch_max_ms,
            )
        )
    svc = InferenceService(loops)
    context.log.info(f"inference: serving {[lp.publish_name for lp in loops]} from {settings.tracking_uri}")
    return svc


def _report(svc: InferenceService) -> str:
    loops = svc.loops
    return (
        f"dlq={ {lp.publish_name: dict(lp.dlq.counts) for lp in loops} } versions="
        f"{ {lp.publish_name: lp.served.version if lp.served else None for lp in loops} }"
    )


#: Service name (run tag value, status and metrics label).
INFERENCE = "inference"

INFERENCE_SERVICE = service(
    INFERENCE,
    InferenceRunConfig,
    _inference,
    pod=Pod("500m", "1Gi", "2Gi"),
    resources=("kafka", "mlflow"),
    report=_report,
    description="Long-running online inference: feature.* -> prediction.<market>.<model> (+ dlq.inference), "
    "exactly once, serving each model's `champion` version.",
)
inference_service = INFERENCE_SERVICE.job
inference_supervisor = INFERENCE_SERVICE.sensor

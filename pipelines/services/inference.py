"""Online inference as a long-running Dagster service (streaming/processors/inference.py).

Same shape as the other services (built by pipelines/services/builder.py): a one-op job
tagged ``ticklake/service: inference`` (dagster.yaml allows one live run per service tag
value), run in-process, whose op runs the service (one loop per served model) in a worker
thread until the run is terminated (the loops then commit the batch in flight), and a
supervisor sensor, shipped STOPPED and switched on by `ticklake up` with every other
sensor, that requests a run whenever none is alive. The registry comes from the `mlflow`
resource, the broker from `kafka`; the settings class also feeds
`python -m streaming.processors.inference`.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from pipelines.services.builder import Pod, service
from streaming.processors.inference import InferenceService, InferenceSettings, inference_from_settings


class InferenceRunConfig(dg.Config, InferenceSettings):
    """The inference service's settings (streaming/processors/inference.py) as Dagster run config."""


def _inference(context: dg.OpExecutionContext, config: InferenceRunConfig) -> InferenceService:
    kafka, mlflow = context.resources.kafka, context.resources.mlflow
    return inference_from_settings(kafka.connection(), mlflow.settings(), config, describe=context.log.info)


INFERENCE_SERVICE = service(
    InferenceService.name,
    _inference,
    pod=Pod("500m", "1Gi", "2Gi"),
    resources=("kafka", "mlflow"),
    description="Long-running online inference: feature.* -> prediction.<market>.<model> (+ dlq.inference), "
    "exactly once, serving each model's `champion` version.",
)
inference_service = INFERENCE_SERVICE.job
inference_supervisor = INFERENCE_SERVICE.sensor

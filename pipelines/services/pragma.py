"""The pragma publisher as a managed long-running Dagster service.

`pragma_publisher` is a one-op job whose op runs streaming.pragma.publisher's loop in a worker
thread until the run is terminated (the interrupt becomes a stop request; the publisher
publishes the depth still due, flushes and closes); job, sensor and tags come from
pipelines/services/builder.py. `pragma_publisher_supervisor` keeps exactly one live run: when
no run tagged ``ticklake/service: pragma-publisher`` is queued or in progress it requests one,
and the instance's tag concurrency limit (dagster.yaml: one run per ticklake/service value)
stops a double-fire from starting a second consumer of the same group.

Configuration comes from a YAML file (streaming/pragma/config.py documents the keys): the
op's ``config_path``, else $TICKLAKE_PRAGMA_CONFIG, else $TICKLAKE_HOME/pragma.yaml when it
exists, else the defaults; the Kafka connection from the ``kafka`` resource. The same settings
class feeds `python -m streaming.pragma.publisher`.
"""

import dagster as dg

from pipelines.services.builder import SERVICE_TAG, Pod, service, service_tags
from streaming.pragma.config import PragmaConfig, resolve_config_path
from streaming.pragma.publisher import SERVICE_NAME as SERVICE
from streaming.pragma.publisher import PragmaPublisher, PragmaPublisherSettings, publisher_from_settings

JOB_NAME = "pragma_publisher"

__all__ = ["SERVICE", "SERVICE_TAG", "defs", "pragma_publisher", "pragma_publisher_supervisor"]


class PragmaPublisherOpConfig(dg.Config, PragmaPublisherSettings):
    """The publisher's settings (streaming/pragma/publisher.py) as Dagster run config."""


def _publisher(context: dg.OpExecutionContext, config: PragmaPublisherOpConfig) -> PragmaPublisher:
    return publisher_from_settings(context.resources.kafka.connection(), config, describe=context.log.info)


def _summary(_config: PragmaPublisherOpConfig, pub: PragmaPublisher) -> dict:
    stats = pub.stats
    return {
        "records_in": stats.records_in,
        "delivered": stats.delivered,
        "delivery_errors": stats.delivery_errors,
        "dead_letters": stats.dead_letters,
        "per_topic": dict(stats.per_topic),
    }


PRAGMA = service(
    SERVICE,
    _publisher,
    pod=Pod("250m", "512Mi", "1Gi"),
    job_name=JOB_NAME,
    op_tags=service_tags(SERVICE),
    output=_summary,
    metrics_port=lambda config: PragmaConfig.load(resolve_config_path(config.config_path)).metrics_port,
    description="Long-running: processed.* -> pragma-prices-v1 / pragma-orderbook-v1 (docs/pragma-contract.md)",
)
pragma_publisher = PRAGMA.job
pragma_publisher_supervisor = PRAGMA.sensor

#: This service's part of the code location (pipelines/services/registry.py collects it).
defs = PRAGMA.defs

"""The pragma publisher as a managed long-running Dagster service.

`pragma_publisher` is a one-op job whose op runs streaming.pragma.publisher in a worker
thread until the run is terminated (the interrupt becomes a stop request; the publisher
flushes and closes in its `finally`); job, sensor and tags come from
pipelines/services/builder.py. `pragma_publisher_supervisor` keeps exactly one live run: when no run tagged
``ticklake/service: pragma-publisher`` is queued or in progress it requests one, and the
instance's tag concurrency limit (dagster.yaml: one run per ticklake/service value) stops
a double-fire from starting a second consumer of the same group.

Configuration comes from a YAML file (streaming/pragma/config.py documents the keys):
the op's ``config_path``, else $TICKLAKE_PRAGMA_CONFIG, else $TICKLAKE_HOME/pragma.yaml when
it exists, else the defaults; the Kafka connection from the ``kafka`` resource.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from pipelines.services.builder import SERVICE_TAG, Pod, run_loop, service, service_tags
from runtime.home import resolve_home
from streaming.pragma.config import PragmaConfig
from streaming.pragma.publisher import SERVICE_NAME as SERVICE
from streaming.pragma.publisher import PragmaPublisher

CONFIG_ENV = "TICKLAKE_PRAGMA_CONFIG"
JOB_NAME = "pragma_publisher"

__all__ = ["SERVICE", "SERVICE_TAG", "defs", "pragma_publisher", "pragma_publisher_supervisor"]


def resolve_config_path(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    default = Path(resolve_home().root) / "pragma.yaml"
    return str(default) if default.is_file() else None


class PragmaPublisherOpConfig(dg.Config):
    config_path: str | None = Field(
        default=None,
        description=f"pragma YAML; default ${CONFIG_ENV} or $TICKLAKE_HOME/pragma.yaml, else built-in defaults",
    )
    max_records_in: int | None = Field(
        default=None,
        description="stop after this many input records (bounded replays and tests); unset = run until terminated",
    )


def _config(config: PragmaPublisherOpConfig) -> PragmaConfig:
    return PragmaConfig.load(resolve_config_path(config.config_path))


def _publisher(context: dg.OpExecutionContext, config: PragmaPublisherOpConfig) -> PragmaPublisher:
    path = resolve_config_path(config.config_path)
    cfg = PragmaConfig.load(path)
    context.log.info(
        f"pragma publisher: config {path or '(defaults)'}, producer {cfg.producer}, "
        f"encoding {cfg.encoding}, acks={cfg.producer_settings.acks}, "
        f"retries={cfg.producer_settings.retries}, depth {cfg.depth_levels} every "
        f"{cfg.depth_interval_ms} ms"
    )
    return PragmaPublisher(context.resources.kafka.connection(), cfg)


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
    PragmaPublisherOpConfig,
    _publisher,
    pod=Pod("250m", "512Mi", "1Gi"),
    job_name=JOB_NAME,
    op_tags=service_tags(SERVICE),
    run=lambda context, config, pub: run_loop(context, pub, run=lambda: pub.run(max_records_in=config.max_records_in)),
    output=_summary,
    metrics_port=lambda config: _config(config).metrics_port,
    description="Long-running: processed.* -> pragma-prices-v1 / pragma-orderbook-v1 (docs/pragma-contract.md)",
)
pragma_publisher = PRAGMA.job
pragma_publisher_supervisor = PRAGMA.sensor

#: This service's part of the code location (pipelines/services/registry.py collects it).
defs = PRAGMA.defs

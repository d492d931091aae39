"""The pragma publisher as a managed long-running Dagster service.

`pragma_publisher` is a one-op job whose op runs streaming.pragma.publisher until the run
is terminated (Dagster interrupts the op; the publisher flushes and closes in its
`finally`). `pragma_publisher_supervisor` keeps exactly one live run: when no run tagged
``ticklake/service: pragma-publisher`` is queued or in progress it requests one, and the
instance's tag concurrency limit (dagster.yaml: one run per ticklake/service value) stops
a double-fire from starting a second consumer of the same group.

Configuration comes from a YAML file (streaming/pragma/config.py documents the keys):
the op's ``config_path``, else $TICKLAKE_PRAGMA_CONFIG, else $TICKLAKE_HOME/pragma.yaml when
it exists, else the defaults; the Kafka connection from the ``kafka`` resource.

The lead wires ``jobs`` and ``sensors`` into pipelines/definitions.py.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from pipelines.k8s import k8s_tags
from resources.home import resolve_home
from resources.kafka import KafkaResource
from runtime.service_status import service_run
from streaming.pragma.config import PragmaConfig
from streaming.pragma.publisher import PragmaPublisher

SERVICE_TAG = "ticklake/service"
SERVICE = "pragma-publisher"
CONFIG_ENV = "TICKLAKE_PRAGMA_CONFIG"
JOB_NAME = "pragma_publisher"

#: Run states that hold the service slot (a run in any of them is "the live run").
LIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


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


@dg.op(tags={SERVICE_TAG: SERVICE})
def run_pragma_publisher(
    context: dg.OpExecutionContext, config: PragmaPublisherOpConfig, kafka: KafkaResource
) -> dg.Output[dict]:
    path = resolve_config_path(config.config_path)
    cfg = PragmaConfig.load(path)
    with service_run(SERVICE, run_id=context.run_id, home=resolve_home().root, port=cfg.metrics_port):
        context.log.info(
            f"pragma publisher: config {path or '(defaults)'}, producer {cfg.producer}, "
            f"encoding {cfg.encoding}, acks={cfg.producer_settings.acks}, "
            f"retries={cfg.producer_settings.retries}, depth {cfg.depth_levels} every "
            f"{cfg.depth_interval_ms} ms"
        )
        stats = PragmaPublisher(kafka.connection(), cfg).run(max_records_in=config.max_records_in)
        summary = {
            "records_in": stats.records_in,
            "delivered": stats.delivered,
            "delivery_errors": stats.delivery_errors,
            "dead_letters": stats.dead_letters,
            "per_topic": dict(stats.per_topic),
        }
        context.log.info(f"pragma publisher stopped: {summary}")
        return dg.Output(summary)


@dg.job(
    name=JOB_NAME,
    tags={SERVICE_TAG: SERVICE, **k8s_tags(SERVICE)},
    description="Long-running: processed.* -> pragma-prices-v1 / pragma-orderbook-v1 (docs/pragma-contract.md)",
    executor_def=dg.in_process_executor,
)  # in the run worker: no 20 ms step-event polling parent (~1 % of a core each)
def pragma_publisher() -> None:
    run_pragma_publisher()


@dg.sensor(
    job=pragma_publisher,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Keeps one live pragma_publisher run (restarts it after a failure or termination)",
)
def pragma_publisher_supervisor(context: dg.SensorEvaluationContext):
    live = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=JOB_NAME, tags={SERVICE_TAG: SERVICE}, statuses=LIVE_STATUSES), limit=1
    )
    if live:
        return dg.SkipReason(f"pragma publisher live in run {live[0].run_id} ({live[0].status.value})")
    return dg.RunRequest(tags={SERVICE_TAG: SERVICE})


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(jobs=[pragma_publisher], sensors=[pragma_publisher_supervisor])

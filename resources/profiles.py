"""The resource set for each deployment profile: ``local`` (laptop, tests) or ``aws``.

TICKLAKE_PROFILE picks the profile when the code location loads. Secrets and endpoints of
the aws profile are dg.EnvVar references: Dagster stores the variable *name* and resolves
it in the run worker, so no secret is in code, in run config or in the UI. Local values
all derive from $TICKLAKE_HOME (runtime/home.py).

aws environment (names are the contract with deploy/env.example):
  required: TICKLAKE_KAFKA_BOOTSTRAP, TICKLAKE_AWS_REGION, TICKLAKE_CATALOG_WAREHOUSE
            (S3 Tables: the table bucket ARN), TICKLAKE_CLICKHOUSE_DSN, TICKLAKE_ARTIFACTS
  optional: TICKLAKE_CATALOG_TYPE (rest | glue | sql; default rest = S3 Tables),
            TICKLAKE_CATALOG_URI (default: the S3 Tables endpoint of the region),
            TICKLAKE_CATALOG_GLUE_ID, TICKLAKE_KAFKA_SECURITY_PROTOCOL (default SASL_SSL),
            TICKLAKE_KAFKA_SASL_MECHANISM (default SCRAM-SHA-512), TICKLAKE_KAFKA_SASL_USERNAME and
            TICKLAKE_KAFKA_SASL_PASSWORD (required with SASL), TICKLAKE_KAFKA_SSL_CA_LOCATION,
            TICKLAKE_CLICKHOUSE_PASSWORD, TICKLAKE_SPARK_MASTER (default yarn),
            TICKLAKE_S3_ENDPOINT (S3-compatible stores and moto only),
            TICKLAKE_SECRETS_TAG (Secrets Manager tag: the SASL credentials and ClickHouse
            password come from the environment, else the tagged secret named like the variable)
AWS credentials come from the default chain (IRSA / instance role), never from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from resources.artifacts import ArtifactStoreResource
from resources.bulk import BulkHistoryResource
from resources.clickhouse import CLICKHOUSE_PASSWORD_ENV, ClickHouseResource
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.secrets import SECRETS_TAG_ENV, SecretsResource
from resources.spark import SparkResource
from runtime import kafka_config as kc
from runtime.home import resolve_home

PROFILE_ENV = "TICKLAKE_PROFILE"
PROFILES = ("local", "aws")

AWS_REGION_ENV = "TICKLAKE_AWS_REGION"
BULK_DIR_ENV = "TICKLAKE_BULK_DIR"
CATALOG_TYPE_ENV = "TICKLAKE_CATALOG_TYPE"
CATALOG_URI_ENV = "TICKLAKE_CATALOG_URI"
CATALOG_WAREHOUSE_ENV = "TICKLAKE_CATALOG_WAREHOUSE"
CATALOG_GLUE_ID_ENV = "TICKLAKE_CATALOG_GLUE_ID"
S3_ENDPOINT_ENV = "TICKLAKE_S3_ENDPOINT"
CLICKHOUSE_DSN_ENV = "TICKLAKE_CLICKHOUSE_DSN"
SPARK_MASTER_ENV = "TICKLAKE_SPARK_MASTER"
ARTIFACTS_ENV = "TICKLAKE_ARTIFACTS"

#: Resource keys assets and jobs declare; one name per concept.
KAFKA, LAKE, CLICKHOUSE, SPARK, ARTIFACTS, BULK = "kafka", "lake", "clickhouse", "spark", "artifacts", "bulk"

#: Target data-file size: small locally (tests, laptops), 256 MiB in production (ARCHITECTURE §3).
LOCAL_TABLE_PROPERTIES = {"write.target-file-size-bytes": str(32 * 1024 * 1024)}
AWS_TABLE_PROPERTIES = {"write.target-file-size-bytes": str(256 * 1024 * 1024)}


def resolve_profile(profile: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    chosen = (profile or env.get(PROFILE_ENV) or "local").strip().lower()
    if chosen not in PROFILES:
        raise ValueError(f"{PROFILE_ENV} must be one of {PROFILES}, got {chosen!r}")
    return chosen


def _optional_env(name: str, env: Mapping[str, str]) -> dg.EnvVar | None:
    """An EnvVar reference when the variable exists where the definitions load, else None
    (an unset optional feature, e.g. no SASL inside a private VPC)."""
    return dg.EnvVar(name) if env.get(name) else None


def local_resources() -> dict[str, Any]:
    home = resolve_home()
    return {
        # bootstrap unset: read from TICKLAKE_KAFKA_BOOTSTRAP at use time, which `ticklake up`
        # exports for the broker it started.
        KAFKA: KafkaResource(),
        LAKE: LakeResource(
            catalog_type="sql",
            name=home.catalog_name,
            uri=home.catalog_uri,
            warehouse=home.warehouse,
            table_properties=LOCAL_TABLE_PROPERTIES,
        ),
        # dsn unset: the local ClickHouse server's address, read from the home at use time
        # (`ticklake up` starts the server on a free port and records it there).
        CLICKHOUSE: ClickHouseResource(),
        SPARK: SparkResource(master="local[2]", shuffle_partitions=4),
        ARTIFACTS: ArtifactStoreResource(root=str(home.artifacts_dir)),
        BULK: BulkHistoryResource(),
    }


def aws_resources(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    protocol = env.get(kc.KAFKA_SECURITY_PROTOCOL_ENV) or "SASL_SSL"
    sasl = protocol.upper().startswith("SASL_")
    # With a Secrets Manager tag, credentials are read at use time (environment first, then the
    # tagged secret of the variable's name); without it they are required dg.EnvVar references.
    secrets = (
        SecretsResource(secrets_tag=env[SECRETS_TAG_ENV], region_name=dg.EnvVar(AWS_REGION_ENV))
        if env.get(SECRETS_TAG_ENV)
        else None
    )
    kafka = KafkaResource(
        bootstrap_servers=dg.EnvVar(kc.KAFKA_BOOTSTRAP_ENV),
        security_protocol=protocol,
        sasl_mechanism=(env.get(kc.KAFKA_SASL_MECHANISM_ENV) or "SCRAM-SHA-512") if sasl else None,
        sasl_username=dg.EnvVar(kc.KAFKA_SASL_USERNAME_ENV) if sasl and secrets is None else None,
        sasl_password=dg.EnvVar(kc.KAFKA_SASL_PASSWORD_ENV) if sasl and secrets is None else None,
        ssl_ca_location=_optional_env(kc.KAFKA_SSL_CA_LOCATION_ENV, env),
        client_id="ticklake",
        secrets=secrets,
    )
    lake = LakeResource(
        catalog_type=env.get(CATALOG_TYPE_ENV) or "rest",
        uri=_optional_env(CATALOG_URI_ENV, env),
        warehouse=dg.EnvVar(CATALOG_WAREHOUSE_ENV),
        region=dg.EnvVar(AWS_REGION_ENV),
        s3_endpoint=_optional_env(S3_ENDPOINT_ENV, env),
        glue_catalog_id=_optional_env(CATALOG_GLUE_ID_ENV, env),
        table_properties=AWS_TABLE_PROPERTIES,
    )
    return {
        KAFKA: kafka,
        LAKE: lake,
        CLICKHOUSE: ClickHouseResource(
            dsn=dg.EnvVar(CLICKHOUSE_DSN_ENV),
            password=None if secrets else _optional_env(CLICKHOUSE_PASSWORD_ENV, env),
            secrets=secrets,
        ),
        SPARK: SparkResource(
            master=_optional_env(SPARK_MASTER_ENV, env) or "yarn",
            shuffle_partitions=200,
            driver_memory=None,
            ui_enabled=True,
        ),
        ARTIFACTS: ArtifactStoreResource(
            root=dg.EnvVar(ARTIFACTS_ENV),
            endpoint_url=_optional_env(S3_ENDPOINT_ENV, env),
            region=dg.EnvVar(AWS_REGION_ENV),
        ),
        BULK: BulkHistoryResource(download_dir=_optional_env(BULK_DIR_ENV, env)),
    }


def build_resources(profile: str | None = None) -> dict[str, Any]:
    """Resources for `profile` (default: $TICKLAKE_PROFILE, else local)."""
    return aws_resources() if resolve_profile(profile) == "aws" else local_resources()


def build_executor(profile: str | None = None) -> dg.ExecutorDefinition | None:
    """The default executor of the code location's jobs for `profile`.

    local: the in-process executor. The multiprocess default starts one Python process per
    step, each importing the whole code location and initializing its resources again
    (measured in the acceptance replay: 15-25 s per step on a loaded 2-core machine for steps
    doing 1-5 s of work, ~10 steps per hourly chain run); a laptop's hourly run is a handful
    of small steps in sequence, and pools (``pool=``) are still honoured. aws: Dagster's
    default (multiprocess) inside each run's pod, whose steps may run side by side.
    Jobs that set their own executor (the services: pipelines/services/builder.py) keep it.
    """
    return None if resolve_profile(profile) == "aws" else dg.in_process_executor

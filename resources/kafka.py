"""Dagster resource for Kafka: connection settings in, librdkafka config dicts out.

The resource only holds *where* and *how to authenticate*; every producer/consumer
setting comes from runtime/kafka_config.py so a service launched by Dagster and the
same processor run from a test behave identically. Secrets reach the fields through
dg.EnvVar (see resources/profiles.py), or, with `secrets` set, from the environment or AWS
Secrets Manager at use time (resources/secrets.py); they are never part of run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from resources.fields import secret_field
from resources.secrets import SecretsResource
from runtime import kafka_config as kc


class KafkaResource(dg.ConfigurableResource):
    """Kafka cluster connection. Unset fields fall back to TICKLAKE_KAFKA_* environment
    variables at use time, so a local run picks up the embedded broker `ticklake up` started."""

    bootstrap_servers: str | None = Field(
        default=None, description=f"host:port list; default ${kc.KAFKA_BOOTSTRAP_ENV} or {kc.DEFAULT_BOOTSTRAP}"
    )
    security_protocol: str | None = Field(default=None, description="PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL")
    sasl_mechanism: str | None = Field(default=None, description="PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 | ...")
    sasl_username: str | None = Field(default=None, description="set through dg.EnvVar")
    sasl_password: str | None = secret_field()
    ssl_ca_location: str | None = Field(default=None, description="CA bundle path for SSL/SASL_SSL")
    client_id: str | None = Field(default=None, description="client.id prefix shown in broker logs")
    # Optional[...] rather than `| None`: Dagster resolves nested resource annotations at runtime.
    secrets: Optional[SecretsResource] = Field(  # noqa: UP045
        default=None, description="where unset SASL credentials come from (environment, then Secrets Manager)"
    )

    def _secret(self, value: str | None, name: str) -> str | None:
        return value or (self.secrets.get(name) if self.secrets is not None else None)

    def connection(self) -> kc.KafkaConnection:
        return kc.connection_from_env(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self._secret(self.sasl_username, kc.KAFKA_SASL_USERNAME_ENV),
            sasl_password=self._secret(self.sasl_password, kc.KAFKA_SASL_PASSWORD_ENV),
            ssl_ca_location=self.ssl_ca_location,
            client_id=self.client_id,
        )

    def producer_config(self, extra: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        return kc.producer_config(self.connection(), extra, **overrides)

    def transactional_producer_config(
        self, transactional_id: str, extra: Mapping[str, Any] | None = None, **overrides: Any
    ) -> dict[str, Any]:
        return kc.transactional_producer_config(self.connection(), transactional_id, extra, **overrides)

    def consumer_config(
        self,
        group_id: str,
        *,
        read_committed: bool = True,
        session_timeout_ms: int = kc.DEFAULT_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms: int | None = None,
        fetch_wait_max_ms: int = kc.DEFAULT_FETCH_WAIT_MAX_MS,
        auto_offset_reset: str = "earliest",
        extra: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        return kc.consumer_config(
            self.connection(),
            group_id,
            read_committed=read_committed,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_wait_max_ms=fetch_wait_max_ms,
            auto_offset_reset=auto_offset_reset,
            extra=extra,
            **overrides,
        )

    def admin_config(self, extra: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        return kc.admin_config(self.connection(), extra, **overrides)

"""Secrets by variable name: from the environment, else from AWS Secrets Manager.

One naming contract for every route a secret can take: a secret is known by the environment
variable that would carry it (TICKLAKE_KAFKA_SASL_PASSWORD, TICKLAKE_CLICKHOUSE_PASSWORD,
exchange keys, ...; deploy/env.example lists them). In Kubernetes the variable comes from the
`ticklake-secrets` secret; without it, the resource reads the Secrets Manager secret of the
same *name* among those carrying the configured tag, so rotating a value in Secrets Manager
needs no redeploy (the next run reads it). The environment wins, so an operator can
override one value without touching AWS.

Fetching is dagster-aws's SecretsManagerSecretsResource (list by tag, then get each value),
once per resource instance: one run, one read. Values never enter run config, logs or the UI.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field, PrivateAttr

#: Environment variable naming the Secrets Manager tag that marks ticklake's secrets.
SECRETS_TAG_ENV = "TICKLAKE_SECRETS_TAG"


class SecretsResource(dg.ConfigurableResource):
    """Secret values by variable name (environment first, then Secrets Manager by tag)."""

    secrets_tag: str | None = Field(
        default=None, description="Secrets Manager tag of ticklake's secrets; unset: environment only"
    )
    region_name: str | None = Field(default=None, description="AWS region of Secrets Manager")

    _fetched: dict[str, str] | None = PrivateAttr(default=None)

    def fetched(self) -> dict[str, str]:
        """Every tagged secret, name -> value (read once, then cached)."""
        if self._fetched is None:
            if not self.secrets_tag:
                self._fetched = {}
            else:
                # Imported here: only a run reading Secrets Manager needs it, and every process
                # loading the code location imports this module (dagster_aws took ~0.65 s of it).
                from dagster_aws.secretsmanager import SecretsManagerSecretsResource

                reader = SecretsManagerSecretsResource(secrets_tag=self.secrets_tag, region_name=self.region_name)
                self._fetched = dict(reader.fetch_secrets())
        return self._fetched

    def get(self, name: str) -> str | None:
        """The environment's non-empty value, else the tagged secret of that name, else None
        (Secrets Manager is only asked when the environment lacks the value)."""
        return os.environ.get(name) or self.fetched().get(name) or None

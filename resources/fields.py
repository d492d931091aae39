"""Config fields that several resources declare alike.

`secret_field()`: a secret (Kafka SASL password, S3 secret key and session token, ClickHouse
password), unset by default and set only through dg.EnvVar, so its value never enters run
config, code or the UI; an unset one is read at use time (resources/secrets.py). Kept apart
from resources/secrets.py, which imports dagster-aws and boto3, so the lake and artifact
resources can use it without importing them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

#: What a secret field's description says unless it names more.
SECRET_DESCRIPTION = "secret: only through dg.EnvVar"


def secret_field(description: str = SECRET_DESCRIPTION) -> Any:
    """A secret config field: None by default, set only through dg.EnvVar."""
    return Field(default=None, description=description)

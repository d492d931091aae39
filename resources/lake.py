"""Dagster resource for the Iceberg lake: which catalog, where the files live.

Three deployments share one code path and differ only in catalog properties:

* ``sql``  - pyiceberg SqlCatalog. Locally SQLite under $TICKLAKE_HOME with a ``file://``
  warehouse; the same catalog can put its files in S3 (or a moto server) through the
  ``s3.*`` endpoint properties.
* ``rest`` - Amazon S3 Tables through its Iceberg REST endpoint, signed with SigV4:
  ``uri = https://s3tables.<region>.amazonaws.com/iceberg``, ``warehouse`` = the table
  bucket ARN (``arn:aws:s3tables:<region>:<account>:bucket/<name>``),
  ``rest.sigv4-enabled = true``, ``rest.signing-name = s3tables``,
  ``rest.signing-region = <region>``. Credentials come from the default AWS chain
  (instance/IRSA role) unless ``client.access-key-id``/``client.secret-access-key`` are set.
* ``glue`` - AWS Glue Data Catalog (``glue.region``, optional ``glue.id`` for another
  account's catalog, ``warehouse`` = s3:// location for new tables).

`catalog_properties` is the pure builder (unit-tested without AWS); the resource only
adds caching and table creation. Table definitions come from schemas/ (never here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field, PrivateAttr
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.rest import SIGV4, SIGV4_REGION, SIGV4_SERVICE
from pyiceberg.io import (
    AWS_ACCESS_KEY_ID,
    AWS_REGION,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    S3_ACCESS_KEY_ID,
    S3_ENDPOINT,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    S3_SESSION_TOKEN,
)
from pyiceberg.table import Table

from resources.fields import secret_field
from runtime.home import CATALOG_NAME
from runtime.redact import redact_mapping
from schemas.iceberg import ensure_all_tables

CatalogType = Literal["sql", "rest", "glue"]
CATALOG_TYPES: tuple[str, ...] = ("sql", "rest", "glue")
S3_TABLES_SIGNING_NAME = "s3tables"
_TABLE_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3tables:[a-z0-9-]+:\d{12}:bucket/[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_SECRET_PROPERTIES = frozenset(
    {
        S3_SECRET_ACCESS_KEY,
        S3_SESSION_TOKEN,
        AWS_SECRET_ACCESS_KEY,
        AWS_SESSION_TOKEN,
        "glue.secret-access-key",
        "glue.session-token",
    }
)


def s3_tables_uri(region: str) -> str:
    return f"https://s3tables.{region}.amazonaws.com/iceberg"


@dataclass(frozen=True, slots=True)
class LakeSettings:
    """Everything that selects and reaches a catalog; secrets are plain values here
    because this is what the resource hands over after dg.EnvVar resolved them."""

    catalog_type: str = "sql"
    name: str = CATALOG_NAME
    uri: str | None = None
    warehouse: str | None = None
    region: str | None = None
    s3_endpoint: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_session_token: str | None = None
    signing_name: str = S3_TABLES_SIGNING_NAME
    glue_catalog_id: str | None = None
    glue_endpoint: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


def _present(props: Mapping[str, str | None]) -> dict[str, str]:
    """The properties that are set: an unset one is left out, never passed as empty."""
    return {k: v for k, v in props.items() if v}


def _s3_properties(s: LakeSettings) -> dict[str, str]:
    props = _present(
        {
            S3_ENDPOINT: s.s3_endpoint,
            # Without a region pyarrow asks AWS where the bucket is, which fails against
            # moto/MinIO and costs a request against S3.
            S3_REGION: s.region,
            S3_ACCESS_KEY_ID: s.s3_access_key_id,
            S3_SECRET_ACCESS_KEY: s.s3_secret_access_key,
            S3_SESSION_TOKEN: s.s3_session_token,
        }
    )
    if bool(s.s3_access_key_id) != bool(s.s3_secret_access_key):
        raise ValueError(
            "set both s3_access_key_id and s3_secret_access_key, or neither "
            "(then the default AWS credential chain is used)"
        )
    return props


def catalog_properties(s: LakeSettings) -> dict[str, str]:
    """pyiceberg `load_catalog` properties for one deployment; raises on incomplete settings."""
    if s.catalog_type not in CATALOG_TYPES:
        raise ValueError(f"catalog_type must be one of {CATALOG_TYPES}, got {s.catalog_type!r}")
    props: dict[str, str] = {"type": s.catalog_type}
    if s.catalog_type == "sql":
        if not s.uri:
            raise ValueError("a sql catalog needs uri (e.g. sqlite:////abs/catalog.db)")
        if not s.warehouse:
            raise ValueError("a sql catalog needs warehouse (file:///abs/dir or s3://bucket/prefix)")
        scheme = urlparse(s.warehouse).scheme
        if scheme not in ("file", "s3", "s3a"):
            raise ValueError(f"warehouse must be a file:// or s3:// URI, got {s.warehouse!r}")
        if scheme != "file" and not s.region:
            raise ValueError("an s3:// warehouse needs region (and s3_endpoint for moto/MinIO)")
        props |= {"uri": s.uri, "warehouse": s.warehouse, "init_catalog_tables": "true"}
        props |= _s3_properties(s)
    elif s.catalog_type == "rest":
        if not s.region:
            raise ValueError("a rest (S3 Tables) catalog needs region for SigV4 signing")
        if not s.warehouse:
            raise ValueError("a rest catalog needs warehouse (for S3 Tables: the table bucket ARN)")
        if s.signing_name == S3_TABLES_SIGNING_NAME and not _TABLE_BUCKET_ARN.fullmatch(s.warehouse):
            raise ValueError(
                "for S3 Tables the warehouse is the table bucket ARN "
                f"arn:aws:s3tables:<region>:<account>:bucket/<name>, got {s.warehouse!r}"
            )
        props |= {
            "uri": s.uri or s3_tables_uri(s.region),
            "warehouse": s.warehouse,
            SIGV4: "true",
            SIGV4_SERVICE: s.signing_name,
            SIGV4_REGION: s.region,
            AWS_REGION: s.region,
        }
        props |= _s3_properties(s)
        if s.s3_access_key_id:
            # The SigV4 adapter builds its boto3 session from the client.* keys only.
            props[AWS_ACCESS_KEY_ID] = s.s3_access_key_id
            props[AWS_SECRET_ACCESS_KEY] = s.s3_secret_access_key or ""
            if s.s3_session_token:
                props[AWS_SESSION_TOKEN] = s.s3_session_token
    else:  # glue
        if not s.region:
            raise ValueError("a glue catalog needs region")
        props |= {"glue.region": s.region, AWS_REGION: s.region}
        props |= _present({"warehouse": s.warehouse, "glue.id": s.glue_catalog_id, "glue.endpoint": s.glue_endpoint})
        props |= _s3_properties(s)
    props |= {str(k): str(v) for k, v in s.extra.items()}
    return props


def redacted_properties(props: Mapping[str, str]) -> dict[str, str]:
    """Catalog properties safe to log or put in asset metadata: secret keys masked whole, and
    credentials inside any value (a catalog URI's password, a DSN's password=) masked too."""
    return redact_mapping(props, _SECRET_PROPERTIES)


def open_catalog(s: LakeSettings) -> Catalog:
    props = catalog_properties(s)
    if s.catalog_type == "sql" and props["uri"].startswith("sqlite:///"):
        # SQLite creates the file but not its directory; a fresh $TICKLAKE_HOME has neither.
        Path(props["uri"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return load_catalog(s.name, **props)


class LakeResource(dg.ConfigurableResource):
    """The Iceberg catalog the platform writes to. Secrets only via dg.EnvVar."""

    catalog_type: CatalogType = Field(default="sql", description="sql (SQLite/Postgres) | rest (S3 Tables) | glue")
    name: str = Field(
        default=CATALOG_NAME,
        description="catalog name; SqlCatalog scopes tables by it, so keep it fixed per deployment",
    )
    uri: str | None = Field(
        default=None, description="sql: SQLAlchemy URL; rest: endpoint (default: S3 Tables of region)"
    )
    warehouse: str | None = Field(default=None, description="file:// or s3:// location; S3 Tables: table bucket ARN")
    region: str | None = Field(default=None, description="AWS region (SigV4, Glue, S3)")
    s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint (moto, MinIO); unset for AWS")
    s3_access_key_id: str | None = Field(default=None, description="only through dg.EnvVar; unset = AWS default chain")
    s3_secret_access_key: str | None = secret_field()
    s3_session_token: str | None = secret_field()
    signing_name: str = Field(default=S3_TABLES_SIGNING_NAME, description="SigV4 service name of the REST catalog")
    glue_catalog_id: str | None = Field(default=None, description="Glue catalog (account) id, if not the caller's")
    glue_endpoint: str | None = Field(default=None, description="Glue endpoint override (tests)")
    table_properties: dict[str, str] = Field(
        default_factory=dict, description="Iceberg table properties applied when tables are created"
    )

    _catalog: Catalog | None = PrivateAttr(default=None)

    def settings(self) -> LakeSettings:
        # Every settings field but `extra` is a field of this resource, by the same name.
        return LakeSettings(**{f.name: getattr(self, f.name) for f in fields(LakeSettings) if f.name != "extra"})

    def catalog_properties(self) -> dict[str, str]:
        return catalog_properties(self.settings())

    def load_catalog(self) -> Catalog:
        """The catalog, opened once per resource instance (SQLAlchemy engines and REST
        sessions are worth reusing across the tables of one step)."""
        if self._catalog is None:
            self._catalog = open_catalog(self.settings())
        return self._catalog

    def load_table(self, identifier: str) -> Table:
        return self.load_catalog().load_table(identifier)

    def ensure_tables(self) -> dict[str, Table]:
        """Create the namespace and every table of schemas/tables.py that is missing."""
        return ensure_all_tables(self.load_catalog(), dict(self.table_properties) or None)

    def describe(self) -> dict[str, Any]:
        return redacted_properties(self.catalog_properties())

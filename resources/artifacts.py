"""Artifact store for charts, models and reports: a local directory or an S3 prefix.

Keys are validated before they become a path or an object key, because parts of them
come from data (symbols, partition keys): no absolute paths, no '.'/'..' segments, no
empty segments, only [A-Za-z0-9._=-] in segments. The same key means the same object in
both backends, so assets never branch on where they run.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.fields import secret_field
from runtime.home import resolve_home

MAX_KEY_LENGTH = 512
#: An http(s) base URL under which the store's keys can be read (production: whatever serves
#: the S3 prefix); the local stack's artifact server records its own in the home instead.
ARTIFACTS_URL_ENV = "TICKLAKE_ARTIFACTS_URL"
_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")


class InvalidArtifactKey(ValueError):
    pass


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise InvalidArtifactKey."""
    if not isinstance(key, str) or not key:
        raise InvalidArtifactKey("artifact key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArtifactKey(f"artifact key longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/") or "\\" in key:
        raise InvalidArtifactKey(f"artifact key must be relative with '/' separators: {key!r}")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidArtifactKey(f"artifact key has an empty, '.' or '..' segment: {key!r}")
        if not _SEGMENT.fullmatch(seg):
            raise InvalidArtifactKey(f"artifact key segment {seg!r} has characters outside [A-Za-z0-9._=-]")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: '' (everything) or a valid key, optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix.removesuffix("/"))
    return prefix


class ArtifactStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def uri_for(self, key: str) -> str: ...
    def list(self, prefix: str = "") -> list[str]: ...


class LocalArtifactStore:
    """Files under `root`; writes go through a temp file + rename so readers never see half a chart."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside root pointing out
            raise InvalidArtifactKey(f"artifact key {key!r} resolves outside the store")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        return path.read_bytes()

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        if not self.root.is_dir():
            return []
        keys = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)


class S3ArtifactStore:
    """Objects under s3://bucket/prefix/; `endpoint_url` points at moto or MinIO in tests."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
    ):
        import boto3

        if not bucket:
            raise ValueError("S3 artifact store needs a bucket")
        self.bucket = bucket
        self.prefix = validate_key(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        self._s3 = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
        )

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._s3.exceptions.NoSuchKey as exc:
            raise KeyError(key) from exc

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        keys: list[str] = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            keys += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(keys)


def open_store(root: str, **s3_options: Any) -> ArtifactStore:
    """`root` is a local directory (or file:// URI) or s3://bucket/prefix."""
    parsed = urlparse(root)
    if parsed.scheme == "s3":
        return S3ArtifactStore(parsed.netloc, parsed.path, **s3_options)
    if parsed.scheme == "file":
        return LocalArtifactStore(parsed.path)
    if parsed.scheme:
        raise ValueError(f"artifact root must be a directory, file:// or s3:// URI, got {root!r}")
    return LocalArtifactStore(root)


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where charts and models go; default $TICKLAKE_HOME/artifacts."""

    root: str | None = Field(default=None, description="directory, file:// or s3://bucket/prefix")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (moto, MinIO); unset for AWS")
    region: str | None = Field(default=None)
    access_key_id: str | None = Field(default=None, description="only through dg.EnvVar; unset = AWS default chain")
    secret_access_key: str | None = secret_field()
    base_url: str | None = Field(
        default=None,
        description=(
            f"http(s) URL serving the store's keys (for previews in the UI); unset: ${ARTIFACTS_URL_ENV}, else "
            "the local stack's artifact server when the store is $TICKLAKE_HOME/artifacts"
        ),
    )

    _store: ArtifactStore | None = PrivateAttr(default=None)

    def store(self) -> ArtifactStore:
        if self._store is None:
            root = self.root or str(resolve_home().artifacts_dir)
            if urlparse(root).scheme == "s3":
                self._store = open_store(
                    root,
                    endpoint_url=self.endpoint_url,
                    region=self.region,
                    access_key_id=self.access_key_id,
                    secret_access_key=self.secret_access_key,
                )
            else:
                self._store = open_store(root)
        return self._store

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return self.store().put_bytes(key, data, content_type)

    def get_bytes(self, key: str) -> bytes:
        return self.store().get_bytes(key)

    def uri_for(self, key: str) -> str:
        return self.store().uri_for(key)

    def url_for(self, key: str) -> str | None:
        """An http(s) URL a browser can load `key` from, or None when nothing serves the store."""
        base = self.base_url or os.environ.get(ARTIFACTS_URL_ENV) or self._local_server_url()
        if not base:
            return None
        return f"{base.rstrip('/')}/{urllib.parse.quote(validate_key(key), safe='/=')}"

    def _local_server_url(self) -> str | None:
        from resources.artifact_server import recorded_url

        home = resolve_home()
        root = self.root or str(home.artifacts_dir)
        if urlparse(root).scheme == "s3":
            return None
        local = Path(urlparse(root).path if urlparse(root).scheme == "file" else root).expanduser().resolve()
        return recorded_url(home) if local == home.artifacts_dir else None

    def list(self, prefix: str = "") -> list[str]:
        return self.store().list(prefix)

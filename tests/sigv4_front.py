"""An S3 Tables-shaped front for a local Iceberg REST catalog, for tests: checks AWS SigV4.

Amazon S3 Tables' Iceberg endpoint authenticates every request with SigV4 (service
`s3tables`) and takes the table bucket ARN as the warehouse. The local REST catalog server (Lakana) knows bearer tokens
and named environments instead. This front lets the lake resource's production `rest`
properties (SigV4 on, signing name s3tables, a table bucket ARN) talk to it unchanged:

* every request's signature is recomputed with botocore from the known test credentials and
  the headers the client says it signed; a mismatch, a wrong service/region or an unknown
  access key is answered 403 and never forwarded;
* the warehouse ARN is mapped to the server's environment, and /v1/config gains a `prefix`
  override naming it (the client's properties set no prefix);
* the request goes on with the server's bearer token.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


def signature_error(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    service: str,
    region: str,
) -> str | None:
    """Why the request's SigV4 signature is not valid for these credentials, or None."""
    lower = {k.lower(): v for k, v in headers.items()}
    m = _AUTH.fullmatch(lower.get("authorization", ""))
    if m is None:
        return "no SigV4 Authorization header"
    key, _day, got_region, got_service, signed, signature = m.groups()
    if (key, got_region, got_service) != (access_key, region, service):
        return f"credential scope {key}/{got_region}/{got_service} is not {access_key}/{region}/{service}"
    parts = urlsplit(url)
    request = AWSRequest(
        method=method,
        url=f"{parts.scheme}://{parts.netloc}{parts.path}",
        params=dict(parse_qsl(parts.query, keep_blank_values=True)),
        data=body or None,
        headers={h: lower[h] for h in signed.split(";") if h in lower},
    )
    request.context["timestamp"] = lower.get("x-amz-date", "")
    auth = SigV4Auth(Credentials(access_key, secret_key), service, region)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return None if expected == signature else "signature mismatch"


class SigV4Front:
    """Serves on 127.0.0.1:<port>; forwards verified requests to `upstream` with `token`."""

    def __init__(
        self,
        upstream: str,
        token: str,
        environment: str,
        *,
        warehouse_arn: str,
        access_key: str,
        secret_key: str,
        region: str,
        service: str = "s3tables",
    ) -> None:
        self.upstream, self.token, self.environment = upstream.rstrip("/"), token, environment
        self.warehouse_arn = warehouse_arn
        self.creds = {"access_key": access_key, "secret_key": secret_key, "service": service, "region": region}
        self.verified = 0
        self.refused: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sigv4-front", daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = f"http://{self.headers['Host']}{self.path}"
                why = signature_error(self.command, url, dict(self.headers.items()), body, **front.creds)
                if why is not None:
                    front.refused.append(why)
                    self._reply(
                        403,
                        {"Content-Type": "application/json"},
                        json.dumps({"error": {"message": why, "type": "ForbiddenException", "code": 403}}).encode(),
                    )
                    return
                front.verified += 1
                parts = urlsplit(self.path)
                query = [
                    (k, front.environment if (k, v) == ("warehouse", front.warehouse_arn) else v)
                    for k, v in parse_qsl(parts.query, keep_blank_values=True)
                ]
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in _HOP_BY_HOP | {"host", "authorization"} and not k.lower().startswith("x-amz-")
                }
                headers["Authorization"] = f"Bearer {front.token}"
                target = f"{front.upstream}{parts.path}" + (f"?{urlencode(query)}" if query else "")
                resp = requests.request(self.command, target, data=body or None, headers=headers, timeout=120)
                content = resp.content
                if parts.path.endswith("/v1/config") and resp.ok:
                    config = resp.json()
                    config.setdefault("overrides", {})["prefix"] = front.environment
                    content = json.dumps(config).encode()
                self._reply(
                    resp.status_code, {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}, content
                )

            def _reply(self, status: int, headers: dict[str, str], content: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

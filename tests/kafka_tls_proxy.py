"""A TLS-terminating Kafka front door that authenticates clients with SASL/PLAIN, for tests.

Why: production Kafka (MSK) is reached over SASL_SSL, and the embedded broker (Tansu 0.6)
cannot serve it: it ignores its --cert option (no TLS on the listener), offers only
SCRAM-SHA-256 with --authentication, and its users can only be created through a broker
that does not require authentication, in memory, lost on the restart that turns it on.
So a test puts this in front of a plain broker: the client's TLS session ends here (with a
certificate the test made and the client verifies), the SASL exchange (SaslHandshake +
SaslAuthenticate, PLAIN) is answered here against one username/password, and only an
authenticated connection is piped, unchanged, to the broker. ApiVersions is forwarded, so
the client sees the broker's own API versions.

The broker must advertise this proxy's address (its advertised listener), so the client's
connections after metadata also come through here. Real SCRAM is not exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # server certificate, also the client's CA (self-signed)
    key: Path


def make_self_signed(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A self-signed certificate for `host` (an IP SAN, so librdkafka's hostname check passes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "tls-cert.pem", directory / "tls-key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _request_header(frame: bytes) -> tuple[int, int, int, int]:
    """(api_key, api_version, correlation_id, offset of the body) for header v1 (no tagged
    fields: SaslHandshake and SaslAuthenticate v0-1 are not flexible)."""
    api_key, api_version, correlation_id, client_id_len = struct.unpack(">hhih", frame[:10])
    return api_key, api_version, correlation_id, 10 + max(client_id_len, 0)


def _kafka_string(data: bytes, at: int) -> str:
    (n,) = struct.unpack(">h", data[at : at + 2])
    return data[at + 2 : at + 2 + n].decode()


def _handshake_response(correlation_id: int, error: int) -> bytes:
    mechanism = b"PLAIN"
    return _frame(struct.pack(">ihi", correlation_id, error, 1) + struct.pack(">h", len(mechanism)) + mechanism)


def _authenticate_response(correlation_id: int, version: int, error: int, message: str | None) -> bytes:
    body = struct.pack(">ih", correlation_id, error)
    body += struct.pack(">h", -1) if message is None else struct.pack(">h", len(message)) + message.encode()
    body += struct.pack(">i", 0)  # auth_bytes: empty
    if version >= 1:
        body += struct.pack(">q", 0)  # session_lifetime_ms: 0 = no re-authentication
    return _frame(body)


class SaslPlainTlsProxy:
    """Listens on (host, port) with TLS; after SASL/PLAIN as (username, password), pipes the
    connection to the broker at upstream. Runs its own event loop in a thread."""

    def __init__(
        self,
        tls: TlsFiles,
        upstream: tuple[str, int],
        username: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tls, self.upstream, self.username, self.password = tls, upstream, username, password
        self.host, self.port = host, port
        self.authenticated = 0
        self.rejected = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="sasl-tls-proxy", daemon=True)

    def __enter__(self) -> Self:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self.host, self.port, ssl=context), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader = up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            if await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _authenticate(self, reader, writer, up_reader, up_writer) -> bool:
        mechanism_ok = False
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation_id, body = _request_header(frame)
            if api_key == API_VERSIONS:
                up_writer.write(_frame(frame))
                await up_writer.drain()
                writer.write(_frame(await _read_frame(up_reader)))
            elif api_key == SASL_HANDSHAKE:
                mechanism_ok = _kafka_string(frame, body) == "PLAIN"
                writer.write(_handshake_response(correlation_id, 0 if mechanism_ok else UNSUPPORTED_SASL_MECHANISM))
            elif api_key == SASL_AUTHENTICATE and mechanism_ok and version <= 1:
                (n,) = struct.unpack(">i", frame[body : body + 4])
                _authzid, user, password = frame[body + 4 : body + 4 + n].split(b"\0")
                ok = (user.decode(), password.decode()) == (self.username, self.password)
                if ok:
                    self.authenticated += 1
                else:
                    self.rejected += 1
                writer.write(
                    _authenticate_response(
                        correlation_id,
                        version,
                        0 if ok else SASL_AUTHENTICATION_FAILED,
                        None if ok else "Authentication failed: invalid credentials",
                    )
                )
                await writer.drain()
                return ok
            else:  # anything else before authentication: drop the connection, as a SASL listener does
                return False
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            writer.write_eof() if writer.can_write_eof() else writer.close()

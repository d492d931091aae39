"""The local ClickHouse: one process owns the chdb engine of a data path and serves
ClickHouse's HTTP interface on 127.0.0.1.

Why a process of our own: chdb runs one embedded engine per process and one process per
data path, so with the engine inside the live consumer (or inside a step) every other
writer and reader of the local ClickHouse had to wait for it -- forever, in the case of a
long-running service -- and no user client could connect while the stack ran. Here the
engine lives in exactly one process, and the live consumer, the hourly loads, the parity
check and a user's own `clickhouse_connect.get_client(dsn="http://127.0.0.1:<port>")` are
all plain HTTP clients of it: the same client code path as against a production ClickHouse
server, and nobody ever waits on a pool slot.

What is served (what an unmodified clickhouse-connect needs, after ClickHouse's
HTTPHandler): `GET/POST /?query=...`; the query in the URL, in the body, or its start in
the URL and the rest in the body (joined by a newline); `multipart/form-data` queries
(clickhouse-connect's form encoding of long bind parameters); `param_<name>` server-side
query parameters; every other non-reserved URL parameter as a setting of that query;
`database` / `default_format` (or the X-ClickHouse-Database / X-ClickHouse-Format
headers); `INSERT ... FORMAT <fmt>` with the data in the body (Native, Arrow, CSV, ...,
streamed or not), request bodies compressed with Content-Encoding lz4, zstd, gzip, deflate
or br; `session_id` sessions that remember `SET` and `USE`; GET (and `readonly`) queries
refused when they would write (READONLY, 164); errors as ClickHouse sends them: non-200
status chosen from the exception code, `X-ClickHouse-Exception-Code`, and the
"Code: N. DB::Exception: ..." text as body, so clickhouse-connect raises its usual
DatabaseError with code and name; `X-ClickHouse-Summary`/`-Query-Id`/`-Format`/`-Timezone`
response headers; `/ping` and `/replicas_status`.

Not served: responses are never compressed (the client accepts identity; this is
loopback), the `compress`/`decompress` ClickHouse-internal block compression, external
tables (form files), `client_protocol_version` (ignored: clickhouse-connect's probe then
falls back to protocol 0, which it reads fine), transactions, multi-statement queries
(refused, as ClickHouse does), authentication (anyone who can reach 127.0.0.1 may query,
which is why the default and documented bind address is loopback).

Concurrency: chdb runs one query at a time per connection (a second concurrent one
deadlocks inside the engine), so requests are served by one thread each but enter the
engine one after another under a lock. Bodies are read and decompressed, and results
written back, outside that lock, so a slow client never holds the engine. Results are
buffered whole, which also gives every error a proper status line. The engine's
connection state (current database, settings) is shared by all requests, so before each
query the server switches it to what that request (or its session) asked for and undoes
what the previous request set; a `SET`/`USE` statement is never run raw against the
shared connection (it is recorded in the session instead).
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import fcntl
import gzip
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from runtime.child_process import ChildServer

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
DEFAULT_FORMAT = "TabSeparated"
SERVER_NAME = "ticklake-chdb"
LOCK_FILE = ".ticklake-server.lock"

# ClickHouse error codes this server raises itself (names as ClickHouse spells them).
SYNTAX_ERROR = 62
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
UNKNOWN_SETTING = 115
READONLY = 164
INVALID_SESSION_TIMEOUT = 374
STD_EXCEPTION = 1001
_CODE_NAMES = {
    SYNTAX_ERROR: "SYNTAX_ERROR",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    READONLY: "READONLY",
    INVALID_SESSION_TIMEOUT: "INVALID_SESSION_TIMEOUT",
    STD_EXCEPTION: "STD_EXCEPTION",
}

#: URL parameters that are not settings (ClickHouse's HTTPHandler reserved names, plus
#: `query`, `database` and `default_format`, which it handles separately).
RESERVED_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "query_id",
        "stacktrace",
        "buffer_size",
        "wait_end_of_query",
        "session_id",
        "session_timeout",
        "session_check",
        "client_protocol_version",
        "close_session",
    }
)
#: Settings that only steer ClickHouse's HTTP layer; applying them to the engine would
#: change nothing but would churn the shared connection's settings between clients.
HTTP_ONLY_SETTINGS = frozenset(
    {
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "http_write_exception_in_output_format",
    }
)
DEFAULT_SESSION_TIMEOUT_S = 60
MAX_SESSION_TIMEOUT_S = 3600

#: ClickHouse's exception code -> HTTP status, as HTTPHandler's exceptionCodeToHTTPStatus maps
#: them (codes checked against this engine's system.errors).
_BAD_REQUEST = frozenset(
    {
        36,
        427,
        6,
        25,
        26,
        38,
        41,
        72,
        441,
        675,
        676,
        27,
        376,  # BAD_ARGUMENTS, CANNOT_COMPILE_REGEXP, CANNOT_PARSE_*
        15,
        44,
        37,
        123,
        8,
        167,
        168,
        223,
        62,
        117,
        53,
        321,
    }
)  # DUPLICATE_COLUMN ... SYNTAX_ERROR, TYPE_MISMATCH, ...
_NOT_FOUND = frozenset({60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78})  # UNKNOWN_TABLE, UNKNOWN_FUNCTION, ...
_STATUS = {194: 401, 192: 403, 193: 403, 516: 403, 229: 413, 48: 501, 209: 503, 76: 503, 381: 411, 159: 408}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)\.")
_LEADING_NOISE = re.compile(rb"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_INSERT_HEAD = re.compile(rb"INSERT\s+INTO\s", re.IGNORECASE)
_INSERT_FORMAT = re.compile(rb"\sFORMAT\s+([A-Za-z][A-Za-z0-9_]*)", re.IGNORECASE)
_NOT_RAW_DATA = re.compile(rb"\b(?:VALUES|SELECT|WITH)\b", re.IGNORECASE)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
_USE = re.compile(
    r"^USE\s+(`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"|[A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE | re.DOTALL
)
_SET = re.compile(r"^SET\s+(.*?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_ASSIGNMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^,'=\s]+)\s*(,|$)", re.DOTALL)
_TRANSACTION = re.compile(r"^(?:BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\b", re.IGNORECASE)
_INTO_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)
_HEAD_SCAN = 1 << 16  # an INSERT's statement text (before its data) is searched for in this many bytes
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
}


class ClickHouseError(Exception):
    """A query failed; carries ClickHouse's exception code and message text."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def ours(cls, code: int, text: str) -> ClickHouseError:
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({_CODE_NAMES.get(code, 'UNKNOWN')})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        text = str(exc)
        at = text.find("Code: ")
        text = text[at:] if at >= 0 else text
        m = _CODE.match(text)
        return cls(int(m.group(1)), text.strip()) if m else cls.ours(STD_EXCEPTION, text.strip() or type(exc).__name__)


def http_status(code: int) -> int:
    """The HTTP status ClickHouse answers an exception code with."""
    if code in _STATUS:
        return _STATUS[code]
    if code in _BAD_REQUEST:
        return 400
    if code in _NOT_FOUND:
        return 404
    return 500


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _unquote_ident(text: str) -> str:
    if text[:1] in ("`", '"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


# --------------------------------------------------------------------------- requests (pure)


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One HTTP request, decoded: what the engine needs and nothing about the socket."""

    sql: bytes
    """The whole query: URL `query` + newline + body (or the form's `query`), decompressed."""
    database: str | None = None
    default_format: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    session_timeout_s: int = DEFAULT_SESSION_TIMEOUT_S
    query_id: str = ""
    readonly: bool = False

    @property
    def empty(self) -> bool:
        """Nothing but whitespace and comments (checked without copying a large body)."""
        return _LEADING_NOISE.match(self.sql).end() >= len(self.sql)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false")


def decompress(data: bytes, encoding: str | None) -> bytes:
    """A request body by its Content-Encoding. Several concatenated frames are one body
    (clickhouse-connect compresses each insert block as its own lz4/zstd frame)."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return data
    try:
        if enc == "gzip":
            return gzip.decompress(data)
        if enc == "deflate":
            return zlib.decompress(data)
        if enc == "zstd":
            try:
                from compression import zstd  # Python 3.14+
            except ImportError:
                from backports import zstd  # clickhouse-connect's own dependency
            return zstd.decompress(data)
        if enc == "lz4":
            import lz4.frame

            out, rest = bytearray(), data
            while rest:
                d = lz4.frame.LZ4FrameDecompressor()
                out += d.decompress(rest)
                if not d.eof:
                    raise ValueError("truncated lz4 frame")
                rest = d.unused_data
            return bytes(out)
        if enc == "br":
            import brotli  # optional, as in clickhouse-connect

            return brotli.decompress(data)
    except ImportError as exc:
        raise ClickHouseError.ours(NOT_IMPLEMENTED, f"Content-Encoding {enc}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any codec failure is the client's bad body
        raise ClickHouseError.ours(BAD_ARGUMENTS, f"cannot decompress the {enc} request body: {exc}") from None
    raise ClickHouseError.ours(BAD_ARGUMENTS, f"unknown Content-Encoding {encoding!r}")


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The plain fields of a multipart/form-data body; files are external tables, which this
    server does not support."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise ClickHouseError.ours(BAD_ARGUMENTS, "malformed multipart/form-data body")
    fields: dict[str, str] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise ClickHouseError.ours(
                NOT_IMPLEMENTED,
                f"external table {name!r}: external data is not supported by the local ClickHouse server",
            )
        if name:
            payload = part.get_payload(decode=True) or b""
            fields[str(name)] = payload.decode(part.get_content_charset() or "utf-8")
    return fields


def parse_request(method: str, query_string: str, headers: Any, body: bytes) -> QueryRequest:
    """Decode one HTTP request the way ClickHouse's HTTPHandler does (see module doc)."""
    params: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query_string, keep_blank_values=True):
        params[key] = value
    if _truthy(params.get("decompress")) or _truthy(params.get("compress")):
        raise ClickHouseError.ours(
            NOT_IMPLEMENTED,
            "ClickHouse-internal block compression (compress/decompress) "
            "is not supported by the local ClickHouse server; use Content-Encoding",
        )
    content_type = headers.get("Content-Type", "") or ""
    body = decompress(body, headers.get("Content-Encoding"))
    if content_type.startswith("multipart/form-data"):
        fields = _form_fields(content_type, body)
        sql = fields.pop("query", "").encode()
        params.update(fields)
    else:
        head = params.get("query", "")
        sql = head.encode() + b"\n" + body if head else body
    settings = {
        k: v
        for k, v in params.items()
        if k and k not in RESERVED_PARAMS and not k.startswith("param_") and k not in HTTP_ONLY_SETTINGS
    }
    readonly = method == "GET" or _truthy(settings.pop("readonly", None))
    timeout = params.get("session_timeout")
    if timeout is None:
        session_timeout = DEFAULT_SESSION_TIMEOUT_S
    elif not timeout.isdigit() or int(timeout) > MAX_SESSION_TIMEOUT_S:
        raise ClickHouseError.ours(
            INVALID_SESSION_TIMEOUT, f"Invalid session timeout: {timeout!r} (at most {MAX_SESSION_TIMEOUT_S})"
        )
    else:
        session_timeout = int(timeout)
    return QueryRequest(
        sql=sql,
        database=headers.get("X-ClickHouse-Database") or params.get("database") or None,
        default_format=headers.get("X-ClickHouse-Format") or params.get("default_format") or None,
        settings=settings,
        params={k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")},
        session_id=params.get("session_id") or None,
        session_timeout_s=session_timeout,
        query_id=params.get("query_id") or headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4()),
        readonly=readonly,
    )


@dataclass(frozen=True, slots=True)
class InsertData:
    """`INSERT ... FORMAT fmt` followed by its data: the statement (without FORMAT) and the bytes."""

    statement: str
    fmt: str
    data: bytes


def split_insert(sql: bytes) -> InsertData | None:
    """Separate an `INSERT INTO ... FORMAT <fmt>` statement from the data that follows it.

    As in ClickHouse, the data starts after the format name, spaces/tabs and at most one
    line break -- binary data may itself begin with whitespace bytes (a Native block of 9
    or 10 columns starts with a tab or a newline). INSERT ... VALUES / SELECT are not split
    (they are plain SQL).
    """
    lead = len(_LEADING_NOISE.match(sql).group(0))
    if not _INSERT_HEAD.match(sql, lead):
        return None
    m = _INSERT_FORMAT.search(sql, lead, min(len(sql), lead + _HEAD_SCAN))
    if m is None or _NOT_RAW_DATA.search(sql, lead, m.start()):
        return None
    pos = m.end()
    while pos < len(sql) and sql[pos : pos + 1] in (b" ", b"\t", b"\f"):
        pos += 1
    if sql[pos : pos + 1] == b"\r":
        pos += 1
    if sql[pos : pos + 1] == b"\n":
        pos += 1
    try:
        statement = sql[lead : m.start()].decode()
    except UnicodeDecodeError:
        raise ClickHouseError.ours(SYNTAX_ERROR, "the INSERT statement is not valid UTF-8") from None
    return InsertData(statement, m.group(1).decode(), sql[pos:])


def parse_set(sql: str) -> dict[str, str] | None:
    """`SET a = 1, b = 'x'` -> {name: SQL literal}; None if `sql` is not a SET of settings.

    Raises SYNTAX_ERROR for a SET this server cannot take apart (it never runs SET raw:
    the engine's connection is shared by every client)."""
    m = _SET.match(sql)
    if m is None or re.match(r"^SET\s+(ROLE|DEFAULT\s+ROLE)\b", sql, re.IGNORECASE):
        return None
    text, out, pos = m.group(1), {}, 0
    while pos < len(text):
        a = _ASSIGNMENT.match(text, pos)
        if a is None or a.end() == pos:
            raise ClickHouseError.ours(
                SYNTAX_ERROR,
                f"cannot parse SET {text!r}: the local ClickHouse server takes `SET name = literal[, ...]`",
            )
        out[a.group(1)] = a.group(2).strip()
        pos = a.end()
    if not out:
        raise ClickHouseError.ours(SYNTAX_ERROR, "SET without assignments")
    return out


def parse_use(sql: str) -> str | None:
    m = _USE.match(sql)
    return _unquote_ident(m.group(1)) if m else None


def strip_leading(sql: str) -> str:
    """The statement without leading whitespace and comments."""
    raw = sql.encode()
    return raw[len(_LEADING_NOISE.match(raw).group(0)) :].decode()


# --------------------------------------------------------------------------- the engine


@dataclass(slots=True)
class QueryReply:
    body: bytes
    fmt: str | None
    """X-ClickHouse-Format: set when the statement produced a result set."""
    summary: dict[str, str]


@dataclass(slots=True)
class _Session:
    database: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    expires: float = 0.0


class ChdbEngine:
    """The one chdb connection of a data path, used by one request at a time."""

    def __init__(self, path: str | os.PathLike[str]):
        import chdb

        self.path = os.path.realpath(path)
        os.makedirs(self.path, exist_ok=True)
        self._conn = chdb.connect(self.path)
        self._raw = self._conn._conn  # classify_query lives on the C extension's connection
        if not hasattr(self._raw, "classify_query"):
            raise RuntimeError("the local ClickHouse server needs chdb-core >= 26.7.3 (classify_query)")
        self._lock = threading.Lock()
        self._database = "default"
        self._applied: dict[str, str] = {}  # settings currently changed on the connection: name -> literal
        self._sessions: dict[str, _Session] = {}
        self.version, self.timezone = (
            self._conn.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().strip().split("\t")
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = self._raw = None

    # -- connection state, always under the lock

    def _run(self, sql: str, fmt: str = DEFAULT_FORMAT, params: dict[str, str] | None = None):
        try:
            return self._conn.query(sql, fmt, params=params or {})
        except Exception as exc:  # noqa: BLE001 - chdb raises ChdbError/RuntimeError with ClickHouse's text
            raise ClickHouseError.from_engine(exc) from None

    def _use(self, database: str) -> None:
        if database != self._database:
            self._run(f"USE {quote_ident(database)}")
            self._database = database

    def _apply_settings(self, desired: dict[str, str]) -> None:
        """Make the connection's changed settings exactly `desired` (name -> SQL literal)."""
        for name in [n for n in self._applied if n not in desired]:
            self._run(f"SET {name} = DEFAULT")
            del self._applied[name]
        for name, literal in desired.items():
            if not _IDENT.match(name):
                raise ClickHouseError.ours(UNKNOWN_SETTING, f"Unknown setting {name!r}")
            if self._applied.get(name) != literal:
                self._run(f"SET {name} = {literal}")
                self._applied[name] = literal

    def _session(self, req: QueryRequest) -> _Session | None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]
        if req.session_id is None:
            return None
        session = self._sessions.setdefault(req.session_id, _Session())
        session.expires = now + req.session_timeout_s
        return session

    def _prepare(self, req: QueryRequest, session: _Session | None) -> None:
        database = req.database or (session.database if session else None) or "default"
        settings = dict(session.settings) if session else {}
        settings.update({k: quote_string(v) for k, v in req.settings.items()})
        self._apply_settings(settings)
        self._use(database)

    def _summary(self, result: Any, result_bytes: int = 0, result_rows: int | None = None) -> dict[str, str]:
        get = lambda name: int(getattr(result, name)()) if result is not None and hasattr(result, name) else 0
        return {
            "read_rows": str(get("rows_read")),
            "read_bytes": str(get("bytes_read")),
            "written_rows": str(get("rows_written")),
            "written_bytes": str(get("bytes_written")),
            "total_rows_to_read": "0",
            "result_rows": str(result_rows or 0),
            "result_bytes": str(result_bytes),
            "elapsed_ns": str(int(float(result.elapsed()) * 1e9)) if result is not None else "0",
        }

    # -- requests

    def execute(self, req: QueryRequest) -> QueryReply:
        if req.empty:
            raise ClickHouseError.ours(SYNTAX_ERROR, "Empty query")
        insert = split_insert(req.sql)
        with self._lock:
            if self._conn is None:
                raise ClickHouseError.ours(STD_EXCEPTION, "the server is shutting down")
            session = self._session(req)
            if insert is not None:
                return self._insert(req, session, insert)
            try:
                sql = req.sql.decode()
            except UnicodeDecodeError:
                raise ClickHouseError.ours(SYNTAX_ERROR, "the query is not valid UTF-8") from None
            return self._query(req, session, sql)

    def _insert(self, req: QueryRequest, session: _Session | None, insert: InsertData) -> QueryReply:
        if req.readonly:
            raise ClickHouseError.ours(
                READONLY, "Cannot execute query in readonly mode (an INSERT over GET or with readonly set)"
            )
        self._prepare(req, session)
        started = time.perf_counter()
        try:
            inserter = self._conn.send_insert(insert.statement, insert.fmt)
        except Exception as exc:  # noqa: BLE001
            raise ClickHouseError.from_engine(exc) from None
        try:
            if insert.data:
                inserter.append(insert.data)
            done = inserter.finish()
        except Exception as exc:  # noqa: BLE001
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise ClickHouseError.from_engine(exc) from None
        summary = self._summary(None)
        summary.update(
            written_rows=str(done.rows_written),
            written_bytes=str(done.bytes_written),
            elapsed_ns=str(int((time.perf_counter() - started) * 1e9)),
        )
        return QueryReply(b"", None, summary)

    def _query(self, req: QueryRequest, session: _Session | None, sql: str) -> QueryReply:
        kind = self._raw.classify_query(sql)
        if kind["statement_count"] > 1:
            raise ClickHouseError.ours(SYNTAX_ERROR, "Multi-statements are not allowed")
        query_class = kind["query_class"].name
        statement = strip_leading(sql)
        if query_class == "CONTROL":
            use = parse_use(statement)
            if use is not None:
                return self._use_statement(req, session, use)
            assignments = parse_set(statement)
            if assignments is not None:
                return self._set_statement(req, session, assignments)
            if (
                _TRANSACTION.match(statement)
                or _INTO_OUTFILE.search(statement)
                or re.match(r"^SET\b", statement, re.IGNORECASE)
            ):
                raise ClickHouseError.ours(
                    NOT_IMPLEMENTED,
                    "transactions, SET ROLE and INTO OUTFILE are not supported by the local ClickHouse server",
                )
        if req.readonly and query_class not in ("READ_ONLY", "UNKNOWN"):
            raise ClickHouseError.ours(
                READONLY,
                "Cannot execute query in readonly mode (a GET request, or readonly set, allows only reading queries)",
            )
        self._prepare(req, session)
        default_format = req.default_format or DEFAULT_FORMAT
        result = self._run(sql, default_format, req.params)
        body = result.bytes() or b""
        trailing = _TRAILING_FORMAT.search(sql)
        fmt = trailing.group(1) if trailing else (default_format if query_class == "READ_ONLY" or body else None)
        return QueryReply(body, fmt, self._summary(result, len(body)))

    def _use_statement(self, req: QueryRequest, session: _Session | None, database: str) -> QueryReply:
        self._use(database)  # fails (UNKNOWN_DATABASE) if it does not exist
        if session is not None:
            session.database = database
        return QueryReply(b"", None, self._summary(None))

    def _set_statement(self, req: QueryRequest, session: _Session | None, assignments: dict[str, str]) -> QueryReply:
        current = dict(session.settings) if session else {}
        for name, literal in assignments.items():
            if literal.upper() == "DEFAULT":
                current.pop(name, None)
            else:
                current[name] = literal
        # Applied once so an unknown setting or a bad value fails here, as in ClickHouse.
        self._apply_settings(current)
        if session is not None:
            session.settings = current
        return QueryReply(b"", None, self._summary(None))


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    #: Headers and body go out as two writes; with Nagle on, the second waits for the
    #: client's delayed ACK (~40 ms per keep-alive request).
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                line = self.rfile.readline(1 << 16)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(1 << 16)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError) as exc:
            self.close_connection = True
            self._send_error(ClickHouseError.ours(BAD_ARGUMENTS, f"unreadable request body: {exc}"), "")
            return
        if url.path in ("/ping", "/replicas_status") or (
            url.path in ("/", "") and method == "GET" and "query" not in url.query
        ):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if url.path not in ("/", ""):
            self._send(404, f"There is no handle {url.path}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
            return
        query_id = ""
        try:
            req = parse_request(method, url.query, self.headers, body)
            query_id = req.query_id
            reply = self.server.engine.execute(req)
        except ClickHouseError as exc:
            log.info("query %s failed: %s", query_id, exc.message.splitlines()[0][:300])
            self._send_error(exc, query_id)
            return
        except Exception as exc:
            log.exception("query %s: unexpected error", query_id)
            self._send_error(ClickHouseError.ours(STD_EXCEPTION, f"{type(exc).__name__}: {exc}"), query_id)
            return
        headers = {
            "Content-Type": _CONTENT_TYPES.get(
                reply.fmt or "", "application/octet-stream" if reply.fmt else "text/plain; charset=UTF-8"
            ),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(reply.summary, separators=(",", ":")),
        }
        if reply.fmt:
            headers["X-ClickHouse-Format"] = reply.fmt
        self._send(200, reply.body, headers)

    def _send_error(self, exc: ClickHouseError, query_id: str) -> None:
        text = exc.message if "(version " in exc.message else f"{exc.message} (version {self.server.engine.version})"
        self._send(
            http_status(exc.code),
            (text.rstrip("\n") + "\n").encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(exc.code),
                "X-ClickHouse-Query-Id": query_id,
            },
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("X-ClickHouse-Server-Display-Name", SERVER_NAME)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (timeout, Ctrl-C); the query itself already ran or failed.
            log.info("client %s disconnected before the response was sent", self.address_string())
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    engine: ChdbEngine


def _lock_data_path(path: str) -> BinaryIO:
    """Own the data path for this process's lifetime: a second server on it fails at once
    with a message, instead of inside chdb."""
    os.makedirs(path, exist_ok=True)
    fh = open(os.path.join(path, LOCK_FILE), "ab")  # noqa: SIM115 - held (locked) until the server stops
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"another process already serves the ClickHouse data in {path}") from None
    return fh


def write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def serve(
    path: str,
    host: str = LOCAL_HOST,
    port: int = 0,
    state_file: Path | None = None,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT when run as the main program)."""
    lock = _lock_data_path(path)
    engine = ChdbEngine(path)
    server = _Server((host, port), _Handler)
    server.engine = engine
    stop = stop or threading.Event()
    url = f"http://{host}:{server.server_address[1]}"
    worker = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="clickhouse-http", daemon=True
    )
    worker.start()
    log.info("ClickHouse %s (chdb) on %s serving %s", engine.version, url, engine.path)
    try:
        if state_file is not None:
            write_state(
                state_file,
                {
                    "url": url,
                    "host": host,
                    "port": server.server_address[1],
                    "pid": os.getpid(),
                    "path": engine.path,
                    "version": engine.version,
                },
            )
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        engine.close()
        if state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                state = json.loads(state_file.read_text())
                if state.get("pid") == os.getpid():
                    state_file.unlink()
        lock.close()
        log.info("ClickHouse server on %s stopped", url)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streaming.clickhouse.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", required=True, help="ClickHouse data directory (the chdb engine's path)")
    ap.add_argument("--host", default=LOCAL_HOST, help="bind address (no authentication: keep it loopback)")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (see --state-file)")
    ap.add_argument("--state-file", type=Path, help="written once serving: url, port, pid, path")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(a.path, a.host, a.port, a.state_file, stop=stop)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


# --------------------------------------------------------------------------- clients of it


def answers(url: str, timeout: float = 3.0) -> bool:
    """One real query (`SELECT 1`) answered correctly over HTTP; False on any failure."""
    try:
        req = urllib.request.Request(f"{url.rstrip('/')}/?query=SELECT%201", method="GET")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200 and resp.read() == b"1\n"
    except (urllib.error.URLError, OSError, ValueError):
        return False


class LocalClickHouse(ChildServer):
    """Start, check and stop a server process (the stack's service and the tests' fixture).

    Ready means: the server wrote its state file (it listens, the engine is open) and it
    answered a real query. By default it dies with the starting process, even on SIGKILL
    (the broker's PR_SET_PDEATHSIG shim); `die_with_parent=False` plus detach() lets it
    outlive `ticklake up`, after which it is stopped by PID.
    """

    kind = "ClickHouse server"
    stop_timeout = 20.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        state_file: str | os.PathLike[str],
        log_path: str | os.PathLike[str],
        host: str = LOCAL_HOST,
        port: int = 0,
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
        startup_timeout: float = 60.0,
    ):
        self.path = os.path.realpath(path)
        self.state_file = Path(state_file)
        self.log_path = Path(log_path)
        self.url: str | None = None
        super().__init__(
            host=host, port=port, startup_timeout=startup_timeout, env=env, die_with_parent=die_with_parent
        )

    @property
    def dsn(self) -> str:
        return self.started(self.url)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streaming.clickhouse.server",
            "--path",
            self.path,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--state-file",
            str(self.state_file),
        ]

    def start(self) -> LocalClickHouse:
        from streaming.kafka.broker import log_tail

        if self._proc is not None:
            raise RuntimeError("ClickHouse server already started")
        self.state_file.unlink(missing_ok=True)
        env = dict(os.environ, **self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
        )
        self._spawn(self.log_path, env)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.state_file.exists():
                try:
                    state = json.loads(self.state_file.read_text())
                except ValueError:
                    state = {}
                if state.get("pid") == self._proc.pid and answers(state["url"]):
                    self.url = state["url"]
                    return self
            if not self.is_running() or time.monotonic() > deadline:
                why = "exited" if not self.is_running() else f"not ready after {self.startup_timeout:.0f}s"
                self.stop()
                raise RuntimeError(
                    f"ClickHouse server {why}; log {self.log_path} ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())

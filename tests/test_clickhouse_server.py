"""The local ClickHouse server against an unmodified clickhouse-connect client (and raw HTTP
where the client hides what ClickHouse sends): handshake, Native/Arrow/JSON results, inserts
(Native compressed with every codec the client offers, Arrow, pandas), server-side and
client-side parameters, per-query settings that do not leak into other requests, sessions
(SET/USE), database selection, errors with ClickHouse's code/status/header, readonly GET,
form-encoded queries, and many clients at once. The pure request-decoding functions are
checked directly. One server for the session (the `clickhouse_server` fixture)."""

from __future__ import annotations

import gzip
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from datetime import UTC, datetime

import clickhouse_connect
import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from streaming.clickhouse.server import (
    ClickHouseError,
    LocalClickHouse,
    decompress,
    http_status,
    parse_request,
    parse_set,
    split_insert,
)

pytestmark = pytest.mark.chdb


@pytest.fixture
def db(clickhouse_server) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    clickhouse_connect.get_client(dsn=clickhouse_server.dsn).command(f"CREATE DATABASE {name}")
    return name


def _client(server, **kw):
    return clickhouse_connect.get_client(dsn=server.dsn, **kw)


def _http(server, query: str | None = None, body: bytes | None = None, headers: dict | None = None, **params):
    """(status, headers, body) of one raw request (POST when there is a body)."""
    if query is not None:
        params["query"] = query
    url = f"{server.dsn}/?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_handshake_types_and_result_formats(clickhouse_server, db):
    c = _client(clickhouse_server)
    assert c.server_version.count(".") >= 2 and c.server_tz == UTC
    c.command(
        f"CREATE TABLE {db}.t (id UInt64, sym LowCardinality(String), ts DateTime64(6, 'UTC'), "
        "px Decimal(38, 8), f Float64, tags Array(String), n Nullable(Int32)) ENGINE = MergeTree ORDER BY id"
    )
    rows = [
        [1, "BTC-USDT", datetime(2024, 8, 8, 23, 59, 59, 123456, tzinfo=UTC), 1.5, 0.1, ["a"], None],
        [2, "ETH-USDT", datetime(2024, 8, 9, tzinfo=UTC), 2.25, float("inf"), [], -7],
    ]
    assert c.insert(f"{db}.t", rows).written_rows == 2
    got = c.query(f"SELECT * FROM {db}.t ORDER BY id").result_rows
    assert [(r[0], r[1], r[2].replace(tzinfo=UTC), float(r[3]), r[4], r[5], r[6]) for r in got] == [
        (1, "BTC-USDT", rows[0][2], 1.5, 0.1, ["a"], None),
        (2, "ETH-USDT", rows[1][2], 2.25, float("inf"), [], -7),
    ]
    arrow = c.query_arrow(f"SELECT id, sym FROM {db}.t ORDER BY id")
    assert arrow.column("sym").to_pylist() == ["BTC-USDT", "ETH-USDT"]
    assert c.query_df(f"SELECT id FROM {db}.t ORDER BY id")["id"].tolist() == [1, 2]
    assert c.query(f"SELECT * FROM {db}.t LIMIT 0").column_names == ("id", "sym", "ts", "px", "f", "tags", "n")
    assert c.raw_query(f"SELECT id FROM {db}.t ORDER BY id FORMAT JSONEachRow") == b'{"id":1}\n{"id":2}\n'
    assert c.command("SELECT 1 WHERE 0") == ""  # an empty result set is still a result set
    status, headers, body = _http(clickhouse_server, f"SELECT count() FROM {db}.t")
    assert (status, body, headers["X-ClickHouse-Format"], headers["X-ClickHouse-Timezone"]) == (
        200,
        b"2\n",
        "TabSeparated",
        "Etc/UTC",
    )


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])  # deflate: the client cannot write it
def test_native_inserts_in_every_compression_the_client_offers(clickhouse_server, db, compress):
    c = _client(clickhouse_server, compress=compress)
    c.command(f"CREATE TABLE {db}.t (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
    rows = [[i, f"row {i} " * (i % 7)] for i in range(20_000)]
    summary = c.insert(f"{db}.t", rows, settings={"max_insert_block_size": 4096})
    assert summary.written_rows == 20_000
    assert c.query(f"SELECT count(), sum(id), sum(length(s)) FROM {db}.t").result_rows[0] == (
        20_000,
        sum(range(20_000)),
        sum(len(r[1]) for r in rows),
    )


def test_arrow_and_pandas_inserts(clickhouse_server, db):
    c = _client(clickhouse_server)
    c.command(f"CREATE TABLE {db}.t (id Int64, ts DateTime64(6, 'UTC'), v Float64) ENGINE = MergeTree ORDER BY id")
    t = pa.table(
        {"id": pa.array([1, 2], pa.int64()), "ts": pa.array([1, 2_000_000], pa.timestamp("us", "UTC")), "v": [0.5, 1.5]}
    )
    assert c.insert_arrow(f"{db}.t", t).written_rows == 2
    c.insert_df(f"{db}.t", pd.DataFrame({"id": [3], "ts": [pd.Timestamp("2024-01-01", tz="UTC")], "v": [2.5]}))
    assert c.query(f"SELECT id, toUnixTimestamp64Micro(ts) FROM {db}.t ORDER BY id").result_rows == [
        (1, 1),
        (2, 2_000_000),
        (3, 1_704_067_200_000_000),
    ]


def test_parameters_settings_sessions_and_databases(clickhouse_server, db):
    c = _client(clickhouse_server)
    nasty = "it's a\ttab\\ and {braces}"
    assert c.query("SELECT {s:String}, {n:UInt8}", parameters={"s": nasty, "n": 7}).result_rows == [(nasty, 7)]
    assert c.query("SELECT %(s)s", parameters={"s": nasty}).result_rows == [(nasty,)]
    form = _client(clickhouse_server, form_encode_query_params=True)
    assert form.query("SELECT {s:String}", parameters={"s": "x" * 50_000}).result_rows == [("x" * 50_000,)]

    setting = "SELECT getSetting('max_block_size')"
    default = c.query(setting).result_rows[0][0]
    assert c.query(setting, settings={"max_block_size": 1234}).result_rows == [(1234,)]
    assert c.query(setting).result_rows == [(default,)]  # a query's settings end with it
    c.command("SET max_block_size = 777")  # a session's last for the session
    other = _client(clickhouse_server)
    assert c.query(setting).result_rows == [(777,)] and other.query(setting).result_rows == [(default,)]
    c.command("SET max_block_size = DEFAULT")
    assert c.query(setting).result_rows == [(default,)]
    with pytest.raises(DatabaseError) as err:
        c.command("SET no_such_setting_here = 1")
    assert err.value.code == 115
    assert c.query(setting).result_rows == [(default,)]

    c.command(f"CREATE TABLE {db}.t (a Int8) ENGINE = Memory")
    c.command(f"USE {db}")  # the session's database
    assert c.command("SELECT currentDatabase()") == db and other.command("SELECT currentDatabase()") == "default"
    c.command("INSERT INTO t VALUES (1), (2)")
    scoped = clickhouse_connect.get_client(dsn=f"{clickhouse_server.dsn}/{db}")  # DSN path = database param
    assert scoped.query("SELECT sum(a) FROM t").result_rows == [(3,)]
    assert other.query(f"SELECT count() FROM {db}.t").result_rows == [(2,)]
    with pytest.raises(DatabaseError) as err:
        other.query("SELECT count() FROM t")  # not in `default`
    assert err.value.code == 60


def test_errors_come_back_as_clickhouse_sends_them(clickhouse_server, db):
    c = _client(clickhouse_server)
    with pytest.raises(DatabaseError) as err:
        c.query("SELECT * FROM no_such_table_anywhere")
    assert err.value.code == 60 and "UNKNOWN_TABLE" in str(err.value)
    status, headers, body = _http(clickhouse_server, "SELEC 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62") and body.startswith(
        b"Code: 62. DB::Exception"
    )
    status, headers, _ = _http(clickhouse_server, f"SELECT * FROM {db}.nope")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "60")
    status, headers, body = _http(clickhouse_server, f"CREATE TABLE {db}.x (a Int8) ENGINE = Memory")  # GET
    assert headers["X-ClickHouse-Exception-Code"] == "164" and b"readonly" in body and status == 500
    status, headers, _ = _http(clickhouse_server, "SELECT 1; SELECT 2", body=b"")
    assert headers["X-ClickHouse-Exception-Code"] == "62"
    status, headers, _ = _http(clickhouse_server, f"INSERT INTO {db}.x FORMAT CSV", body=b"1\n", compress="1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (501, "48")
    c.command(f"CREATE TABLE {db}.n (a UInt8) ENGINE = Memory")
    with pytest.raises(DatabaseError) as err:
        c.raw_insert(f"{db}.n", ["a"], b"x\n", fmt="CSV")  # bad data in the body
    assert err.value.code in (6, 27, 117) and "CSV" in str(err.value)
    assert c.query("SELECT 1").result_rows == [(1,)]  # the engine is fine afterwards
    assert _http(clickhouse_server, None)[2] == b"Ok.\n"
    assert urllib.request.urlopen(f"{clickhouse_server.dsn}/ping").read() == b"Ok.\n"


def test_query_and_data_split_between_url_and_body(clickhouse_server, db):
    c = _client(clickhouse_server)
    c.command(f"CREATE TABLE {db}.t (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
    # the statement in the URL, the data in the body, gzip-compressed (curl's usual form)
    status, _, _ = _http(
        clickhouse_server,
        f"INSERT INTO {db}.t FORMAT CSV",
        body=gzip.compress(b"1,x\n2,y\n"),
        headers={"Content-Encoding": "gzip"},
    )
    assert status == 200
    # statement and data both in the body, Values (plain SQL, not split)
    assert _http(clickhouse_server, body=f"INSERT INTO {db}.t VALUES (3, 'z')".encode())[0] == 200
    # the start of a SELECT in the URL, the rest in the body
    assert _http(clickhouse_server, f"SELECT sum(a) FROM {db}.t", body=b"WHERE a > 1")[2] == b"5\n"


def test_split_insert_finds_where_the_data_starts():
    assert split_insert(b"INSERT INTO db.t (a, b) FORMAT Native\n\n\x02rest") == split_insert(
        b"  -- c\nINSERT INTO db.t (a, b) FORMAT Native\n\n\x02rest"
    )
    got = split_insert(b"INSERT INTO db.t (a, b) FORMAT Native\n\n\x02rest")
    assert (got.statement, got.fmt, got.data) == ("INSERT INTO db.t (a, b)", "Native", b"\n\x02rest")  # 10 columns
    got = split_insert(b"insert into t SETTINGS async_insert=0 format CSV 1,2\n")
    assert (got.statement, got.fmt, got.data) == ("insert into t SETTINGS async_insert=0", "CSV", b"1,2\n")
    assert split_insert(b"INSERT INTO t VALUES ('FORMAT CSV')") is None
    assert split_insert(b"INSERT INTO t SELECT 1 FORMAT Native") is None
    assert split_insert(b"SELECT 1 FORMAT Native") is None


def test_request_decoding():
    headers = {"Content-Encoding": "deflate"}
    req = parse_request(
        "POST",
        "query=SELECT&database=d&param_x=1&max_threads=2&session_id=s&readonly=1"
        "&enable_http_compression=1&wait_end_of_query=1",
        headers,
        zlib.compress(b"1"),
    )
    assert (req.sql, req.database, req.params, req.settings, req.session_id, req.readonly) == (
        b"SELECT\n1",
        "d",
        {"x": "1"},
        {"max_threads": "2"},
        "s",
        True,
    )
    assert parse_request("GET", "query=SELECT+1", {}, b"").readonly
    assert parse_set("SET a = 1, b = 'x, y', c=DEFAULT") == {"a": "1", "b": "'x, y'", "c": "DEFAULT"}
    assert parse_set("SET ROLE NONE") is None
    with pytest.raises(ClickHouseError):
        parse_set("SET a = 1 b = 2")
    with pytest.raises(ClickHouseError):
        decompress(b"not gzip", "gzip")
    assert (http_status(60), http_status(62), http_status(48), http_status(241)) == (404, 400, 501, 500)


def test_many_clients_at_once(clickhouse_server, db):
    """Threads, each with its own client, insert and read concurrently; every row lands once
    and every read is consistent (requests are serialized inside the server, not refused)."""
    _client(clickhouse_server).command(f"CREATE TABLE {db}.t (w UInt8, i UInt32) ENGINE = MergeTree ORDER BY (w, i)")
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            c = _client(clickhouse_server)
            for batch in range(10):
                c.insert(f"{db}.t", [[w, batch * 100 + i] for i in range(100)], column_names=["w", "i"])
                n = c.query(f"SELECT count() FROM {db}.t WHERE w = {w}").result_rows[0][0]
                assert n == (batch + 1) * 100
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _client(clickhouse_server).query(f"SELECT count(), uniqExact(w, i) FROM {db}.t").result_rows == [
        (6000, 6000)
    ]


def test_one_server_per_data_path(clickhouse_server, tmp_path):
    with pytest.raises(RuntimeError, match="another process already serves"):
        LocalClickHouse(
            clickhouse_server.path, state_file=tmp_path / "s.json", log_path=tmp_path / "l.log", startup_timeout=30
        ).start()

"""The lake's own write paths on an S3 warehouse (a local moto server), and the S3 Tables
REST catalog configuration against a local endpoint that checks the SigV4 signature.

Same code as the local file:// lake, only the catalog properties differ (resources/lake.py):
the real lake sink on a real broker writes and commits to s3://, restarts without
duplicating, an hour is sealed and rebuilt (staging branch on S3), and orphan cleanup
lists and deletes S3 objects.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import boto3
import pytest
from moto.server import ThreadedMotoServer

from resources.lake import (
    LakeResource,
    LakeSettings,
    catalog_properties,
    open_catalog,
    redacted_properties,
)
from runtime import kafka_config as kc
from streaming.kafka.broker import EmbeddedBroker
from streaming.lake.checks import duplicate_check
from streaming.lake.maintenance import delete_orphan_files
from streaming.lake.rebuild import checksum, rebuild_hour, table_schema
from streaming.lake.seal import hour_layout, read_hour, seal_hour
from streaming.lake.sink import LakeSink, SinkConfig, hour_filter
from streaming.lake.state import latest_sink_state
from tests.support.lake import create_sink_topics, produce, sink_topics, unique_counts
from workloads.synthetic import BASE_TS, SyntheticMarket

BUCKET = "lake"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
H0_US = BASE_TS - BASE_TS % 3_600_000_000


@pytest.fixture(scope="module")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_lake(tmp_path, moto_endpoint):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **CREDS)
    bucket = f"{BUCKET}-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    client.create_bucket(Bucket=bucket)
    lake = LakeResource(
        catalog_type="sql",
        name="s3",
        uri=f"sqlite:///{tmp_path}/catalog.db",
        warehouse=f"s3://{bucket}/wh",
        region="us-east-1",
        s3_endpoint=moto_endpoint,
        s3_access_key_id=CREDS["aws_access_key_id"],
        s3_secret_access_key=CREDS["aws_secret_access_key"],
        table_properties={"write.target-file-size-bytes": str(1 << 20)},
    )
    return lake, client, bucket


def _keys(client, bucket: str, prefix: str = "wh/") -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _drain(sink: LakeSink, n: int) -> None:
    deadline = time.monotonic() + 120  # a hang becomes a failure, never a pass
    while sink.stats.records_in < n:
        assert time.monotonic() < deadline, f"sink stuck at {sink.stats}"
        sink.run_once()


@pytest.mark.broker
def test_sink_seal_rebuild_and_orphans_on_an_s3_warehouse(tmp_path, s3_lake):
    lake, client, bucket = s3_lake
    catalog = lake.load_catalog()
    events = SyntheticMarket(seed=21).events(1200, spacing_us=4_000_000)  # ~80 min
    topics = sink_topics()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        create_sink_topics(b.bootstrap, topics, partitions=2)
        produce(b.bootstrap, events + events[:50])  # 50 redelivered copies: dedup on S3 too
        conn = kc.KafkaConnection(bootstrap_servers=b.bootstrap)
        cfg = SinkConfig(topics=topics, batch_max_records=200, batch_max_ms=200, allowed_lateness_us=5_000_000)
        sink = LakeSink(conn, catalog, cfg)
        sink.start()
        _drain(sink, len(events) + 50)
        sink.close()
        assert sink.stats.duplicates == 50

        counts = unique_counts(events)
        for name, n in counts.items():
            rows = catalog.load_table(f"market.{name}").scan().to_arrow()
            assert rows.num_rows == n and duplicate_check(rows).passed, name
        keys = _keys(client, bucket)
        assert any(k.endswith(".parquet") and "/exchange=binance/market=spot/" in k for k in keys)
        assert any(k.endswith(".metadata.json") for k in keys)

        # A restarted sink resumes from the offsets in the S3-held snapshot: nothing re-read.
        trades = catalog.load_table("market.trades")
        snap = trades.current_snapshot().snapshot_id
        again = LakeSink(conn, lake.load_catalog(), cfg)
        start = again.start()
        state = latest_sink_state(trades)
        assert state.offsets
        assert all(start[(t, p)] == o for t, ps in state.offsets.items() for p, o in ps.items())
        assert again.run_once() == 0
        again.close()
        assert catalog.load_table("market.trades").current_snapshot().snapshot_id == snap

        # Seal the first hour on S3: fewer, larger files, same rows.
        trades = catalog.load_table("market.trades")
        schema = table_schema(trades)
        before = read_hour(trades, H0_US)
        res = seal_hour(trades, H0_US)
        assert res.files_before > res.files >= 1 and res.rows == before.num_rows
        trades = trades.refresh()
        assert hour_layout(trades, H0_US).is_sealed
        assert checksum(read_hour(trades, H0_US), schema) == checksum(before, schema)

        # Rebuild the hour from processed.* through a staging branch on S3.
        rep = rebuild_hour(trades, H0_US, conn=conn)
        assert rep.source == "kafka" and rep.checksum == rep.staged_checksum == checksum(before, schema)
        trades = trades.refresh()
        assert set(trades.metadata.refs) == {"main"}
        assert trades.scan(row_filter=hour_filter(H0_US)).to_arrow().num_rows == before.num_rows

    # Orphans on S3: a file nobody references goes, referenced files stay.
    trades = catalog.load_table("market.trades")
    orphan = f"{trades.location()}/data/orphan-test.parquet"
    with trades.io.new_output(orphan).create(overwrite=True) as fh:
        fh.write(b"not referenced")
    deleted = delete_orphan_files(trades, min_age=timedelta(0))
    assert [p for p in deleted.orphans_deleted if p.endswith("orphan-test.parquet")] == [orphan]
    keys = _keys(client, bucket)
    assert not any(k.endswith("orphan-test.parquet") for k in keys)
    for task in trades.scan().plan_files():
        assert task.file.file_path.split(f"s3://{bucket}/", 1)[1] in keys
    assert trades.scan().to_arrow().num_rows == unique_counts(events)["trades"]


# ---------------------------------------------------------------- S3 Tables: REST + SigV4


class _RestRecorder(BaseHTTPRequestHandler):
    """A stand-in for the S3 Tables Iceberg REST endpoint: records each request's path and
    headers and answers the two calls a catalog makes first."""

    requests: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def do_GET(self):
        type(self).requests.append(("GET", self.path, dict(self.headers)))
        if self.path.startswith("/v1/config"):
            body = {"defaults": {}, "overrides": {"prefix": "arn-prefix"}}
        elif "/namespaces" in self.path:
            body = {"namespaces": [["market"]]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_s3_tables_rest_catalog_signs_requests_with_sigv4(monkeypatch):
    arn = "arn:aws:s3tables:eu-central-1:123456789012:bucket/ticklake-lake"
    _RestRecorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RestRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    try:
        settings = LakeSettings(
            catalog_type="rest",
            uri=f"http://127.0.0.1:{server.server_port}",
            warehouse=arn,
            region="eu-central-1",
            s3_access_key_id="AKIDEXAMPLE",
            s3_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        )
        props = catalog_properties(settings)
        assert props["rest.sigv4-enabled"] == "true" and props["rest.signing-name"] == "s3tables"
        assert props["rest.signing-region"] == "eu-central-1" and props["warehouse"] == arn
        assert props["client.access-key-id"] == "AKIDEXAMPLE"
        assert "wJalr" not in json.dumps(redacted_properties(props))
        catalog = open_catalog(settings)
        assert catalog.list_namespaces() == [("market",)]
    finally:
        server.shutdown()
    config = [r for r in _RestRecorder.requests if r[1].startswith("/v1/config")]
    assert config and "warehouse=arn%3Aaws%3As3tables" in config[0][1]
    ns = [r for r in _RestRecorder.requests if "/namespaces" in r[1]]
    assert ns and ns[0][1].startswith("/v1/arn-prefix/namespaces")
    for _, path, headers in config + ns:
        auth = headers.get("Authorization", "")
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), (path, headers)
        assert "/eu-central-1/s3tables/aws4_request" in auth and "Signature=" in auth
        assert "X-Amz-Date" in headers or "x-amz-date" in {k.lower() for k in headers}


def test_s3_tables_resource_without_static_keys_uses_the_default_chain():
    lake = LakeResource(
        catalog_type="rest", warehouse="arn:aws:s3tables:us-east-1:123456789012:bucket/lake", region="us-east-1"
    )
    props = lake.catalog_properties()
    assert props["uri"] == "https://s3tables.us-east-1.amazonaws.com/iceberg"
    assert not any(k.endswith(("access-key-id", "secret-access-key", "session-token")) for k in props)
    assert lake.describe() == redacted_properties(props)

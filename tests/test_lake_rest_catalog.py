"""The lake over the Iceberg REST catalog protocol, for real: create a table, append with the
lake sink's snapshot summary, stage an hour on a branch and promote it (the rebuild runbook),
all through pyiceberg's RestCatalog talking HTTP to a REST catalog server.

The production catalog is Amazon S3 Tables' Iceberg REST endpoint. Nothing installable here
serves S3 Tables itself (moto's s3tables implements the control-plane API only, no
/iceberg/v1 routes; docs/decisions.md lists what was tried), so the server is Lakana
(`lakana-server` from PyPI, an Iceberg REST catalog on PostgreSQL), run from its own venv
(.ci/run installs it; its s3fs pins botocore apart from ours) on a PostgreSQL the test starts.
The client side is production's: the lake resource's `rest` properties (SigV4 signing as
`s3tables`, the table bucket ARN as warehouse), pointed at tests/sigv4_front.py, which
verifies every request's signature as S3 Tables would, maps the ARN to the server's
environment and adds a `prefix` override to /v1/config (how a REST catalog gives the client its
path prefix; the properties set none). What differs, only
here: the server side is not S3 Tables, and the namespace is `silver`, not `market` (Lakana
accepts tables only under bronze/silver/gold), so the table is `silver.trades` with the
trades table's schema, partition spec and sort order, and the lake sink itself (which writes
`market.*`) is not run against it; its commit function and summary are.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from resources.lake import LakeSettings, open_catalog
from schemas.arrow_convert import envelopes_to_table
from schemas.iceberg import (
    DEFAULT_TABLE_PROPERTIES,
    iceberg_schema,
    partition_spec,
    sort_order,
)
from schemas.ids import stamp_event_id
from schemas.model import EventType
from schemas.tables import TABLES_BY_NAME
from streaming.kafka.broker import find_free_port
from streaming.lake.rebuild import checksum, rebuild_hour, table_schema
from streaming.lake.seal import read_hour
from streaming.lake.sink import hour_filter
from streaming.lake.state import (
    HOUR_US,
    WRITER_KEY,
    HourCount,
    SinkState,
    latest_sink_state,
)
from streaming.lake.writer import LakeFileWriter, commit_files
from tests.postgres_helpers import postgres_server
from tests.sigv4_front import SigV4Front
from tests.support.envelopes import envelope

REPO = Path(__file__).resolve().parents[1]
SERVER_ENV = "TICKLAKE_REST_CATALOG_SERVER"
DEFAULT_SERVER = REPO / ".venv-rest-catalog" / "bin" / "lakana-server"
KEY_ID, SECRET = "ticklaketest0001", "t" * 40
TOKEN = f"lakana_pat_{KEY_ID}_{SECRET}"
ENVIRONMENT = "prod"
IDENTIFIER = "silver.trades"
REGION = "eu-west-1"
TABLE_BUCKET_ARN = "arn:aws:s3tables:eu-west-1:123456789012:bucket/ticklake"
ACCESS_KEY, SECRET_KEY = "AKIATICKLAKETEST0001", "test-secret-key"


def _server_binary() -> Path:
    path = Path(os.environ.get(SERVER_ENV) or DEFAULT_SERVER)
    if not path.exists():
        message = (
            f"no Iceberg REST catalog server at {path}: .ci/run installs lakana-server into "
            f".venv-rest-catalog (or set {SERVER_ENV})"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _api(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def s3_tables_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigV4Front]:
    binary = _server_binary()
    root = tmp_path_factory.mktemp("rest-catalog")
    with postgres_server(db_name="lakana") as pg:
        port = find_free_port()
        env = {
            **os.environ,
            "LAKANA_DATABASE__URL": f"postgresql+pg8000://{pg.user}@{pg.host}:{pg.port}/{pg.db_name}",
            "LAKANA_BOOTSTRAP_PAT_KEY_ID": KEY_ID,
            "LAKANA_BOOTSTRAP_PAT_SECRET": SECRET,
            "LAKANA_HOST": "127.0.0.1",
            "LAKANA_PORT": str(port),
            "LAKANA_LOG__ACCESS": "false",
        }
        subprocess.run([str(binary), "migrate"], env=env, check=True, capture_output=True, timeout=300)
        log = root / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen([str(binary)], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    _api(
                        port,
                        "/api/v1/environments",
                        {"name": ENVIRONMENT, "storage": {"scheme": "file", "root": (root / "warehouse").as_uri()}},
                    )
                    break
                except (urllib.error.URLError, ConnectionError) as exc:
                    if isinstance(exc, urllib.error.HTTPError) or server.poll() is not None:
                        raise AssertionError(f"REST catalog server: {exc}\n{log.read_text()[-3000:]}") from exc
                    assert time.monotonic() < deadline, f"REST catalog server not up\n{log.read_text()[-3000:]}"
                    time.sleep(0.3)
            with SigV4Front(
                f"http://127.0.0.1:{port}",
                TOKEN,
                ENVIRONMENT,
                warehouse_arn=TABLE_BUCKET_ARN,
                access_key=ACCESS_KEY,
                secret_key=SECRET_KEY,
                region=REGION,
            ) as front:
                yield front
        finally:
            server.terminate()
            server.wait(30)


def s3_tables_settings(front: SigV4Front, secret_key: str = SECRET_KEY) -> LakeSettings:
    """The aws profile's lake settings (type rest: SigV4 as s3tables, a table bucket ARN), with
    the test endpoint and the test's keys where production takes the pod's role."""
    return LakeSettings(
        catalog_type="rest",
        name="s3tables",
        uri=front.uri,
        warehouse=TABLE_BUCKET_ARN,
        region=REGION,
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=secret_key,
    )


@pytest.fixture(scope="module")
def rest_catalog(s3_tables_front: SigV4Front) -> Catalog:
    return open_catalog(s3_tables_settings(s3_tables_front))


H0 = 1_723_161_600_000_000 // HOUR_US * HOUR_US  # an hour boundary (2024-08-09T00:00Z)


def _trades(hour_us: int, n: int) -> pa.Table:
    out = []
    for i in range(n):
        env = envelope(EventType.TRADE, i)
        shift = hour_us - env.exchange_ts // HOUR_US * HOUR_US
        env.exchange_ts += shift
        env.ingest_ts += shift
        out.append(stamp_event_id(env))
    return envelopes_to_table(EventType.TRADE, out)


def test_create_append_branch_promote_over_rest(rest_catalog: Catalog, s3_tables_front: SigV4Front) -> None:
    spec = TABLES_BY_NAME["trades"]
    schema = iceberg_schema(spec)
    table = rest_catalog.create_table(
        IDENTIFIER,
        schema=schema,
        partition_spec=partition_spec(spec, schema),
        sort_order=sort_order(spec, schema),
        properties=DEFAULT_TABLE_PROPERTIES,
    )

    # The sink's commit: data files plus the bookkeeping in the snapshot summary.
    rows = pa.concat_tables([_trades(H0, 40), _trades(H0 + HOUR_US, 10)])
    state = SinkState(
        offsets={"processed.binance.perp.trades": {0: 49}},
        watermark_us=H0 + HOUR_US,
        max_event_us=H0 + HOUR_US + 9_000,
        ledger={H0: HourCount(40, 40), H0 + HOUR_US: HourCount(10, 10)},
    )
    commit_files(table, LakeFileWriter(table).write(rows, prefix="sink"), state.summary())
    reloaded = rest_catalog.load_table(IDENTIFIER)  # what the server stored, not the client's copy
    got = latest_sink_state(reloaded)
    assert (got.offsets, got.ledger, got.watermark_us) == (state.offsets, state.ledger, state.watermark_us)
    good_snapshot = reloaded.current_snapshot().snapshot_id
    good = read_hour(reloaded, H0)
    assert good.num_rows == 40

    # A bad commit breaks the hour (rows lost, some doubled) ...
    broken = pa.concat_tables([good.slice(0, 25), good.slice(0, 5)])
    commit_files(
        reloaded,
        LakeFileWriter(reloaded).write(broken, prefix="broken"),
        {WRITER_KEY: "vandal"},
        delete_filter=hour_filter(H0),
    )
    assert read_hour(rest_catalog.load_table(IDENTIFIER), H0).num_rows == 30

    # ... and the runbook rebuilds it from before that commit: staged on a branch, validated
    # there, promoted to main in one commit, branch removed.
    report = rebuild_hour(rest_catalog.load_table(IDENTIFIER), H0, source="lake", snapshot_id=good_snapshot)
    assert report.staging_branch and report.staged_snapshot_id and report.promoted_snapshot_id
    final = rest_catalog.load_table(IDENTIFIER)
    assert final.current_snapshot().snapshot_id == report.promoted_snapshot_id
    assert report.staging_branch not in final.metadata.refs and set(final.metadata.refs) == {"main"}
    staged = final.snapshot_by_id(report.staged_snapshot_id)
    assert staged is not None and staged.parent_snapshot_id is not None  # the branch's commit is in the history
    assert checksum(read_hour(final, H0), table_schema(final)) == checksum(good, table_schema(final))
    assert read_hour(final, H0 + HOUR_US).num_rows == 10  # the other hour untouched
    assert s3_tables_front.verified > 10 and not s3_tables_front.refused  # every call SigV4-signed, and valid


def test_requests_signed_with_other_keys_are_refused(s3_tables_front: SigV4Front) -> None:
    refused = len(s3_tables_front.refused)
    with pytest.raises(Exception, match="(?i)forbidden|signature|403"):
        open_catalog(s3_tables_settings(s3_tables_front, secret_key="not-the-key"))
    assert s3_tables_front.refused[refused:] == ["signature mismatch"]

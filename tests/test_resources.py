"""Resources against real parts: SqlCatalog on SQLite (and on a moto S3 server), the local
ClickHouse server via clickhouse-connect, a local[2] Spark session, the Dagster CLI and a real Dagster instance."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from moto.server import ThreadedMotoServer
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import HourTransform, IdentityTransform

from assets.lake_setup import lake_tables
from resources import profiles
from resources.artifacts import (
    ArtifactStoreResource,
    InvalidArtifactKey,
    S3ArtifactStore,
    validate_key,
)
from resources.clickhouse import (
    ClickHouseResource,
    LocalClickHouseNotRunning,
    get_client,
)
from resources.kafka import KafkaResource
from resources.lake import (
    LakeResource,
    LakeSettings,
    catalog_properties,
    redacted_properties,
)
from resources.spark import SparkResource, spark_conf
from runtime import kafka_config as kc
from runtime.home import TicklakeHome
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.model import EventType, Exchange, Market
from schemas.tables import NAMESPACE, TABLES
from streaming.kafka.broker import EmbeddedBroker
from tests.support.envelopes import envelope

REPO = Path(__file__).resolve().parents[1]
HOUR_US = 3_600_000_000
COMBOS = [
    (Exchange.BINANCE, Market.PERP, "BTC-USDT-PERP", "BTCUSDT"),
    (Exchange.OKX, Market.SPOT, "ETH-USDT", "ETH-USDT"),
]


def lake_envelopes(et: EventType) -> list[pb.Envelope]:
    """Two venues/markets x two hours x two events, ids re-stamped after moving the time."""
    out = []
    for exchange, market, symbol, native in COMBOS:
        for hour in range(2):
            for i in range(2):
                env = envelope(et, i, exchange=exchange, market=market, symbol=symbol, native=native)
                env.exchange_ts += hour * HOUR_US
                env.ingest_ts += hour * HOUR_US
                out.append(stamp_event_id(env))
    return out


def sql_lake(tmp_path: Path) -> LakeResource:
    return LakeResource(
        catalog_type="sql",
        name="t",
        uri=f"sqlite:///{tmp_path}/catalog.db",
        warehouse=(tmp_path / "warehouse").as_uri(),
    )


# ---------------------------------------------------------------- lake: SqlCatalog on SQLite


def test_sql_catalog_creates_every_table_with_spec_and_order(tmp_path: Path) -> None:
    lake = sql_lake(tmp_path)
    tables = lake.ensure_tables()
    assert set(tables) == {spec.name for spec in TABLES.values()}
    catalog = lake.load_catalog()
    assert {".".join(i) for i in catalog.list_tables(NAMESPACE)} == {s.identifier for s in TABLES.values()}
    for spec in TABLES.values():
        table = catalog.load_table(spec.identifier)
        schema = table.schema()
        fields = [(schema.find_column_name(f.source_id), f.transform) for f in table.spec().fields]
        assert fields == [
            ("exchange_ts", HourTransform()),
            ("exchange", IdentityTransform()),
            ("market", IdentityTransform()),
        ]
        assert [schema.find_column_name(f.source_id) for f in table.sort_order().fields] == ["symbol", "exchange_ts"]
        assert schema.as_arrow().names == spec.schema.names
        assert table.properties["write.parquet.compression-codec"] == "zstd"
    # idempotent: a second call creates nothing and changes nothing
    again = sql_lake(tmp_path).ensure_tables()
    assert {n: t.metadata_location for n, t in again.items()} == {n: t.metadata_location for n, t in tables.items()}


@pytest.mark.parametrize("et", list(EventType))
def test_append_and_read_back_each_event_type(tmp_path: Path, et: EventType) -> None:
    lake = sql_lake(tmp_path)
    table = lake.ensure_tables()[TABLES[et].name]
    data = envelopes_to_table(et, lake_envelopes(et))
    table.append(data)
    back = lake.load_table(TABLES[et].identifier).scan().to_arrow()
    order = [("event_id", "ascending")]
    assert back.num_rows == data.num_rows == 8
    assert back.cast(data.schema).sort_by(order).equals(data.sort_by(order))
    # one data file per (hour, exchange, market): 2 hours x 2 venue/markets
    files = list(table.refresh().scan().plan_files())
    assert len(files) == 4
    partitions = {tuple(f.file.partition) for f in files}
    assert {p[1:] for p in partitions} == {("binance", "perp"), ("okx", "spot")}
    # symbol filter reads back exactly that symbol's rows
    btc = table.scan(row_filter="symbol == 'BTC-USDT-PERP'").to_arrow()
    assert btc.num_rows == 4 and set(btc["symbol"].to_pylist()) == {"BTC-USDT-PERP"}


# ---------------------------------------------------------------- lake: S3 warehouse on moto


@pytest.fixture(scope="module")
def moto_s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    yield endpoint, client, creds
    server.stop()


def test_sql_catalog_with_s3_warehouse_on_moto(tmp_path: Path, moto_s3) -> None:
    endpoint, client, creds = moto_s3
    client.create_bucket(Bucket="lake")
    lake = LakeResource(
        catalog_type="sql",
        name="s3",
        uri=f"sqlite:///{tmp_path}/catalog.db",
        warehouse="s3://lake/wh",
        region="us-east-1",
        s3_endpoint=endpoint,
        s3_access_key_id=creds["aws_access_key_id"],
        s3_secret_access_key=creds["aws_secret_access_key"],
    )
    table = lake.ensure_tables()["trades"]
    data = envelopes_to_table(EventType.TRADE, lake_envelopes(EventType.TRADE))
    table.append(data)
    back = lake.load_table(TABLES[EventType.TRADE].identifier).scan().to_arrow()
    assert back.cast(data.schema).sort_by("event_id").equals(data.sort_by("event_id"))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="wh/")["Contents"]]
    assert any(k.endswith(".parquet") and "exchange=binance" in k for k in keys)
    assert any(k.endswith(".metadata.json") for k in keys)


# ---------------------------------------------------------------- lake: property builders


def test_sql_properties_local_and_s3() -> None:
    local = catalog_properties(LakeSettings(uri="sqlite:////h/catalog.db", warehouse="file:///h/warehouse"))
    assert local == {
        "type": "sql",
        "uri": "sqlite:////h/catalog.db",
        "warehouse": "file:///h/warehouse",
        "init_catalog_tables": "true",
    }
    s3 = catalog_properties(
        LakeSettings(
            uri="sqlite:////h/c.db",
            warehouse="s3://b/wh",
            region="eu-west-1",
            s3_endpoint="http://127.0.0.1:9000",
            s3_access_key_id="AK",
            s3_secret_access_key="SK",
        )
    )
    assert s3["s3.endpoint"] == "http://127.0.0.1:9000"
    assert s3["s3.region"] == "eu-west-1"
    assert (s3["s3.access-key-id"], s3["s3.secret-access-key"]) == ("AK", "SK")
    assert redacted_properties(s3)["s3.secret-access-key"] == "***"
    with pytest.raises(ValueError, match="region"):
        catalog_properties(LakeSettings(uri="sqlite:////x.db", warehouse="s3://b/wh"))
    with pytest.raises(ValueError, match="both"):
        catalog_properties(
            LakeSettings(uri="sqlite:////x.db", warehouse="s3://b/wh", region="r", s3_access_key_id="AK")
        )
    with pytest.raises(ValueError, match="warehouse"):
        catalog_properties(LakeSettings(uri="sqlite:////x.db"))


def test_rest_sigv4_properties_for_s3_tables() -> None:
    arn = "arn:aws:s3tables:eu-central-1:123456789012:bucket/ticklake-lake"
    props = catalog_properties(LakeSettings(catalog_type="rest", warehouse=arn, region="eu-central-1"))
    assert props == {
        "type": "rest",
        "uri": "https://s3tables.eu-central-1.amazonaws.com/iceberg",
        "warehouse": arn,
        "rest.sigv4-enabled": "true",
        "rest.signing-name": "s3tables",
        "rest.signing-region": "eu-central-1",
        "client.region": "eu-central-1",
        "s3.region": "eu-central-1",
    }
    with pytest.raises(ValueError, match="table bucket ARN"):
        catalog_properties(LakeSettings(catalog_type="rest", warehouse="s3://not-an-arn", region="eu-central-1"))
    with pytest.raises(ValueError, match="region"):
        catalog_properties(LakeSettings(catalog_type="rest", warehouse=arn))


def test_glue_properties() -> None:
    props = catalog_properties(
        LakeSettings(catalog_type="glue", region="us-east-2", warehouse="s3://b/lake", glue_catalog_id="123456789012")
    )
    assert props == {
        "type": "glue",
        "glue.region": "us-east-2",
        "client.region": "us-east-2",
        "s3.region": "us-east-2",
        "warehouse": "s3://b/lake",
        "glue.id": "123456789012",
    }
    with pytest.raises(ValueError, match="catalog_type"):
        catalog_properties(LakeSettings(catalog_type="hive"))


# ---------------------------------------------------------------- ClickHouse: the local server


def test_clickhouse_mergetree_insert_arrow_and_parameterized_query(clickhouse_server) -> None:
    db = f"res_{uuid.uuid4().hex[:8]}"
    client = ClickHouseResource(dsn=clickhouse_server.dsn).get_client()
    client.command(f"CREATE DATABASE {db}")
    client.command(
        f"CREATE TABLE {db}.trades (symbol String, exchange_ts DateTime64(6, 'UTC'), px Int64, qty Int64) "
        "ENGINE = MergeTree ORDER BY (symbol, exchange_ts)"
    )
    data = pa.table(
        {
            "symbol": ["BTC-USDT", "BTC-USDT", "ETH-USDT"],
            "exchange_ts": pa.array(
                [1_723_161_600_000_001, 1_723_161_600_000_002, 1_723_161_600_000_003], pa.timestamp("us", tz="UTC")
            ),
            "px": [6_000_010, 6_000_020, 300_050],
            "qty": [15, 7, 100],
        }
    )
    client.insert_arrow(f"{db}.trades", data)
    back = client.query_arrow(f"SELECT symbol, exchange_ts, px, qty FROM {db}.trades ORDER BY symbol, exchange_ts")
    assert back.column("px").to_pylist() == data.column("px").to_pylist()
    assert (
        back.column("exchange_ts").cast(pa.int64()).to_pylist()
        == data.column("exchange_ts").cast(pa.int64()).to_pylist()
    )
    q = f"SELECT count(), sum(qty) FROM {db}.trades WHERE symbol = {{sym:String}}"
    assert client.query(q, parameters={"sym": "BTC-USDT"}).result_rows == [(2, 22)]
    # a hostile value stays a value
    assert client.query(q, parameters={"sym": "x' OR 1=1 --"}).result_rows == [(0, 0)]


def test_clickhouse_dsn_validation_and_the_local_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="password"):
        get_client("https://user:secret@ch.example.com:8443/db")
    with pytest.raises(ValueError, match="scheme"):
        get_client("tcp://ch.example.com:9000")
    with pytest.raises(ValueError, match="local ClickHouse server"):
        get_client(f"chdb://{tmp_path}/ch")  # no client opens the engine itself any more
    monkeypatch.setenv("TICKLAKE_HOME", str(tmp_path / "home"))
    with pytest.raises(LocalClickHouseNotRunning, match="ticklake up"):
        ClickHouseResource().resolved_dsn()  # nothing started for this home
    home = TicklakeHome((tmp_path / "home").resolve()).ensure()
    home.clickhouse_state_file.write_text('{"url": "http://127.0.0.1:18123", "pid": 1}')
    assert ClickHouseResource().resolved_dsn() == "http://127.0.0.1:18123"  # whatever port the server got


# ---------------------------------------------------------------- Kafka configs


def test_producer_config_has_delivery_settings_and_no_sasl_by_default() -> None:
    cfg = KafkaResource(bootstrap_servers="127.0.0.1:19092").producer_config()
    assert cfg["bootstrap.servers"] == "127.0.0.1:19092"
    assert (cfg["acks"], cfg["enable.idempotence"], cfg["compression.type"]) == ("all", True, "zstd")
    assert cfg["linger.ms"] > 0 and cfg["batch.size"] > 0
    assert not any(k.startswith(("sasl.", "ssl.")) for k in cfg)
    assert cfg["security.protocol"] == "PLAINTEXT"
    Producer(cfg)  # librdkafka accepts every key


def test_overrides_and_invalid_combinations() -> None:
    res = KafkaResource(bootstrap_servers="127.0.0.1:19092")
    assert res.producer_config(linger_ms=5)["linger.ms"] == 5
    leader_ack = res.producer_config(acks="1", enable_idempotence=False)
    assert (leader_ack["acks"], leader_ack["enable.idempotence"]) == ("1", False)
    with pytest.raises(ValueError, match="acks=all"):
        res.producer_config(acks="1")
    with pytest.raises(ValueError, match="transactional_id"):
        res.transactional_producer_config("")


def test_transactional_and_consumer_configs() -> None:
    res = KafkaResource(bootstrap_servers="127.0.0.1:19092", client_id="normalizer")
    tx = res.transactional_producer_config("normalizer-binance-0")
    assert tx["transactional.id"] == "normalizer-binance-0"
    assert tx["enable.idempotence"] is True and tx["acks"] == "all"
    assert int(tx["message.timeout.ms"]) <= int(tx["transaction.timeout.ms"])
    Producer(tx)
    c = res.consumer_config("lake-sink", session_timeout_ms=3000, fetch_wait_max_ms=10)
    assert c["isolation.level"] == "read_committed"
    assert (c["group.id"], c["session.timeout.ms"], c["fetch.wait.max.ms"]) == ("lake-sink", 3000, 10)
    assert c["heartbeat.interval.ms"] < c["session.timeout.ms"]
    assert c["enable.auto.commit"] is False and c["client.id"] == "normalizer"
    assert res.consumer_config("g", read_committed=False)["isolation.level"] == "read_uncommitted"
    Consumer(c).close()
    AdminClient(res.admin_config())


def test_sasl_options_appear_only_when_set_and_are_redacted() -> None:
    res = KafkaResource(
        bootstrap_servers="b-1.msk:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
        ssl_ca_location="/etc/ssl/ca.pem",
    )
    cfg = res.producer_config()
    assert (cfg["security.protocol"], cfg["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (cfg["sasl.username"], cfg["sasl.password"], cfg["ssl.ca.location"]) == ("svc", "s3cret", "/etc/ssl/ca.pem")
    assert kc.redacted(cfg)["sasl.password"] == "***"
    assert "s3cret" not in repr(res.connection())
    with pytest.raises(ValueError, match="sasl_username and sasl_password"):
        kc.KafkaConnection(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u")
    with pytest.raises(ValueError, match="needs a sasl_mechanism"):
        kc.KafkaConnection(security_protocol="SASL_SSL")


def test_bootstrap_defaults_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kc.KAFKA_BOOTSTRAP_ENV, "127.0.0.1:29092")
    assert KafkaResource().admin_config()["bootstrap.servers"] == "127.0.0.1:29092"
    assert KafkaResource(bootstrap_servers="h:1").admin_config()["bootstrap.servers"] == "h:1"


def test_configs_work_against_the_embedded_broker(kafka_broker: EmbeddedBroker) -> None:
    """Idempotent zstd producer + transactional producer -> read_committed consumer, on Tansu."""
    topic, run = f"resources.test.{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    res = KafkaResource(bootstrap_servers=kafka_broker.bootstrap, client_id="test-resources")
    admin = AdminClient(res.admin_config())
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=2,
                replication_factor=1,
                config={"retention.ms": "3600000", "retention.bytes": "-1"},
            )
        ]
    )
    for f in futures.values():
        f.result(timeout=30)
    producer = Producer(res.producer_config())
    for i in range(10):
        producer.produce(topic, key=b"BTC-USDT", value=b"plain-%d" % i)
    assert producer.flush(30) == 0
    tx = Producer(res.transactional_producer_config(f"test-resources-{run}"))
    tx.init_transactions(30)
    tx.begin_transaction()
    for i in range(5):
        tx.produce(topic, key=b"ETH-USDT", value=b"tx-%d" % i)
    tx.commit_transaction(30)
    consumer = Consumer(res.consumer_config(f"resources-{run}", session_timeout_ms=3000, fetch_wait_max_ms=10))
    consumer.subscribe([topic])
    got: dict[bytes, list[bytes]] = {}
    for _ in range(120):  # bounded by polls, not by wall time
        if sum(map(len, got.values())) == 15:
            break
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.setdefault(msg.key(), []).append(msg.value())
    consumer.close()
    assert got == {b"BTC-USDT": [b"plain-%d" % i for i in range(10)], b"ETH-USDT": [b"tx-%d" % i for i in range(5)]}


# ---------------------------------------------------------------- profiles


def test_local_profile_derives_from_home(monkeypatch: pytest.MonkeyPatch, ticklake_home: TicklakeHome) -> None:
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    res = profiles.build_resources()
    home = ticklake_home
    assert set(res) == {"kafka", "lake", "clickhouse", "spark", "artifacts", "bulk"}
    assert res["lake"].catalog_properties()["uri"] == home.catalog_uri
    assert res["lake"].catalog_properties()["warehouse"] == home.warehouse
    assert res["clickhouse"].dsn is None  # resolved at use time: the running local server's address
    assert res["spark"].conf()["spark.master"] == "local[2]"
    with pytest.raises(ValueError, match="TICKLAKE_PROFILE"):
        profiles.build_resources("gcp")


def test_jobs_run_their_steps_in_process_locally_and_in_subprocesses_on_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local profile's jobs execute every step in the run worker (no process per step);
    aws keeps Dagster's default (a process per step inside the run's pod)."""
    from pipelines.definitions import defs

    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    assert profiles.build_executor() is dg.in_process_executor
    assert profiles.build_executor("aws") is None  # Dagster's default: multiprocess
    assert defs.resolve_job_def("lake_seal_hour").executor_def.name == "in_process"
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
    with pytest.raises(ValueError, match="TICKLAKE_PROFILE"):
        profiles.build_executor("gcp")


def test_aws_profile_reads_secrets_through_envvar(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "TICKLAKE_KAFKA_BOOTSTRAP": "b-1.msk.example:9096",
        "TICKLAKE_KAFKA_SASL_USERNAME": "svc",
        "TICKLAKE_KAFKA_SASL_PASSWORD": "pw-from-env",
        "TICKLAKE_AWS_REGION": "eu-central-1",
        "TICKLAKE_CATALOG_WAREHOUSE": "arn:aws:s3tables:eu-central-1:123456789012:bucket/lake",
        "TICKLAKE_CLICKHOUSE_DSN": "https://ticklake@ch.example.com:8443/market",
        "TICKLAKE_CLICKHOUSE_PASSWORD": "ch-pw",
        "TICKLAKE_ARTIFACTS": "s3://artifacts/ticklake",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    res = profiles.build_resources("aws")
    # the definitions hold variable names only, never the values
    assert isinstance(res["kafka"].sasl_password, dg.EnvVar)
    assert "pw-from-env" not in repr(res) and "ch-pw" not in repr(res)
    with dg.build_resources({"kafka": res["kafka"], "lake": res["lake"], "clickhouse": res["clickhouse"]}) as r:
        cfg = r.kafka.producer_config()
        assert (cfg["bootstrap.servers"], cfg["security.protocol"]) == ("b-1.msk.example:9096", "SASL_SSL")
        assert (cfg["sasl.username"], cfg["sasl.password"]) == ("svc", "pw-from-env")
        props = r.lake.catalog_properties()
        assert props["uri"] == "https://s3tables.eu-central-1.amazonaws.com/iceberg"
        assert props["rest.signing-name"] == "s3tables"
        assert r.clickhouse.password == "ch-pw"


# ---------------------------------------------------------------- artifact store


def test_local_artifacts_put_get_list(tmp_path: Path) -> None:
    store = ArtifactStoreResource(root=str(tmp_path / "art"))
    uri = store.put_bytes("charts/BTC-USDT-PERP/dt=2024-08-09/h=00.png", b"\x89PNG", "image/png")
    assert uri.startswith("file://") and (tmp_path / "art/charts/BTC-USDT-PERP/dt=2024-08-09/h=00.png").is_file()
    store.put_bytes("models/m1/model.bin", b"weights")
    assert store.get_bytes("charts/BTC-USDT-PERP/dt=2024-08-09/h=00.png") == b"\x89PNG"
    assert store.list() == ["charts/BTC-USDT-PERP/dt=2024-08-09/h=00.png", "models/m1/model.bin"]
    assert store.list("models/") == ["models/m1/model.bin"]
    with pytest.raises(KeyError):
        store.get_bytes("models/m2/model.bin")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a b", "a\\b", "", "x" * 600])
def test_artifact_keys_rejected(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidArtifactKey):
        validate_key(key)
    with pytest.raises(InvalidArtifactKey):
        ArtifactStoreResource(root=str(tmp_path)).put_bytes(key, b"x")
    assert not any(tmp_path.parent.glob("x"))


def test_s3_artifacts_on_moto(moto_s3) -> None:
    endpoint, client, creds = moto_s3
    client.create_bucket(Bucket="artifacts")
    res = ArtifactStoreResource(
        root="s3://artifacts/ticklake",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id=creds["aws_access_key_id"],
        secret_access_key=creds["aws_secret_access_key"],
    )
    assert isinstance(res.store(), S3ArtifactStore)
    uri = res.put_bytes("charts/x.svg", b"<svg/>", "image/svg+xml")
    assert uri == "s3://artifacts/ticklake/charts/x.svg"
    head = client.head_object(Bucket="artifacts", Key="ticklake/charts/x.svg")
    assert head["ContentType"] == "image/svg+xml"
    assert res.get_bytes("charts/x.svg") == b"<svg/>"
    assert res.list() == ["charts/x.svg"]
    with pytest.raises(KeyError):
        res.get_bytes("charts/missing.svg")
    with pytest.raises(InvalidArtifactKey):
        res.put_bytes("../escape", b"x")


# ---------------------------------------------------------------- Spark


@pytest.fixture(scope="module")
def spark(spark_resource: SparkResource):
    return spark_resource.spark_session  # the session-wide one (tests/conftest.py)


def test_spark_local_session_and_platform_conf(spark, tmp_path: Path) -> None:
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.range(100).selectExpr("sum(id) AS s").collect()[0]["s"] == 4950
    df = spark.createDataFrame(pa.table({"ts": pa.array([1_723_161_600_000_001], pa.timestamp("us", tz="UTC"))}))
    df.write.parquet(str(tmp_path / "p"))
    files = list((tmp_path / "p").glob("*.parquet"))
    t = pq.read_table(files[0])
    assert t.schema.field("ts").type == pa.timestamp("us", tz="UTC")  # TIMESTAMP_MICROS, not INT96
    assert pc.cast(t["ts"], pa.int64()).to_pylist() == [1_723_161_600_000_001]


def test_spark_conf_refuses_changing_fixed_settings() -> None:
    assert spark_conf(shuffle_partitions=8)["spark.sql.shuffle.partitions"] == "8"
    with pytest.raises(ValueError, match="fixed"):
        spark_conf(extra={"spark.sql.session.timeZone": "Europe/Paris"})


# ---------------------------------------------------------------- Dagster


def _dagster_env(tmp_path: Path, profile: str) -> dict[str, str]:
    env = {
        **os.environ,
        "TICKLAKE_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "TICKLAKE_PROFILE": profile,
    }
    (tmp_path / "dagster").mkdir(exist_ok=True)
    return env


@pytest.mark.dagster
def test_definitions_validate_with_the_aws_profile(tmp_path: Path) -> None:
    """The aws profile through workspace.yaml; the local profile (the default) is validated by
    tests/test_dagster_conventions.py from a clean environment, one `dagster` process each."""
    dagster_cli = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster_cli), "definitions", "validate", "-w", "workspace.yaml"],
        check=False,
        cwd=REPO,
        env=_dagster_env(tmp_path, "aws"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Validation successful for code location ticklake" in out


def test_materialize_lake_tables(ticklake_home: TicklakeHome) -> None:
    resources = profiles.build_resources("local")
    with dg.DagsterInstance.local_temp(str(ticklake_home.dagster_home)) as instance:
        result = dg.materialize([lake_tables], resources=resources, instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("lake_tables")[0].metadata
        assert meta["table_count"].value == len(TABLES)
        described = meta["tables"].value
        assert described["trades"]["partition_spec"] == ["hour(exchange_ts)", "identity(exchange)", "identity(market)"]
        assert described["trades"]["sort_order"] == ["symbol ASC", "exchange_ts ASC"]
        assert described["trades"]["current_snapshot_id"] is None

        # the tables are really in the home's catalog, seen by an independent catalog object
        # (SqlCatalog scopes rows by catalog name, so the name is part of the address)
        home = ticklake_home
        catalog = SqlCatalog(home.catalog_name, uri=home.catalog_uri, warehouse=home.warehouse)
        assert {".".join(i) for i in catalog.list_tables(NAMESPACE)} == {s.identifier for s in TABLES.values()}
        trades = catalog.load_table(TABLES[EventType.TRADE].identifier)
        trades.append(envelopes_to_table(EventType.TRADE, lake_envelopes(EventType.TRADE)))

        # re-materializing is idempotent and reports the snapshot written meanwhile
        again = dg.materialize([lake_tables], resources=resources, instance=instance)
        meta2 = again.asset_materializations_for_node("lake_tables")[0].metadata["tables"].value
        assert meta2["trades"]["current_snapshot_id"] == trades.refresh().current_snapshot().snapshot_id
        assert meta2["funding"]["current_snapshot_id"] is None
        assert instance.get_latest_materialization_event(dg.AssetKey("lake_tables")) is not None

"""Kafka over SASL_SSL with credentials from AWS Secrets Manager, through the production
(aws) resource profile, against a real broker.

What is real: the broker (Tansu, memory storage), librdkafka's TLS (certificate verified
against the test's CA, hostname checked) and its SASL/PLAIN exchange, the aws profile's
KafkaResource and its SecretsResource reading Secrets Manager (moto, in process). What is
not: TLS and SASL are terminated by tests/kafka_tls_proxy.py in front of the broker (Tansu
0.6 cannot serve either in a usable way, see that module), and production's SCRAM-SHA-512
is not exercised (PLAIN here; the mechanism is one setting, TICKLAKE_KAFKA_SASL_MECHANISM).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from moto import mock_aws

from resources import profiles
from resources.secrets import SECRETS_TAG_ENV, SecretsResource
from runtime import kafka_config as kc
from streaming.kafka.broker import CLUSTER_ID, MEMORY_STORAGE, find_free_port, resolve_binary
from tests.kafka_tls_proxy import SaslPlainTlsProxy, TlsFiles, make_self_signed

USER, PASSWORD = "ticklake-svc", "s3cret-from-secrets-manager"
REGION = "eu-west-1"
TAG = "ticklake"


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secured_broker(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslPlainTlsProxy]:
    """A bare broker on an internal port advertising the proxy's, and the proxy in front."""
    front, internal = find_free_port(), find_free_port()
    log = tmp_path_factory.mktemp("secured-broker") / "broker.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [
                resolve_binary(),
                "broker",
                "--cluster-id",
                CLUSTER_ID,
                "--listener-url",
                f"tcp://127.0.0.1:{internal}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{front}",
                "--storage-engine",
                MEMORY_STORAGE,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(internal)
        with SaslPlainTlsProxy(tls, ("127.0.0.1", internal), USER, PASSWORD, port=front) as proxy:
            yield proxy
    finally:
        broker.terminate()
        broker.wait(10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, secured_broker: SaslPlainTlsProxy, tls: TlsFiles) -> Iterator[None]:
    """The aws profile's environment, SASL credentials only in Secrets Manager (moto)."""
    env = {
        profiles.PROFILE_ENV: "aws",
        kc.KAFKA_BOOTSTRAP_ENV: f"127.0.0.1:{secured_broker.port}",
        kc.KAFKA_SECURITY_PROTOCOL_ENV: "SASL_SSL",
        kc.KAFKA_SASL_MECHANISM_ENV: "PLAIN",
        kc.KAFKA_SSL_CA_LOCATION_ENV: str(tls.cert),
        SECRETS_TAG_ENV: TAG,
        profiles.AWS_REGION_ENV: REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        profiles.CATALOG_WAREHOUSE_ENV: "arn:aws:s3tables:eu-west-1:123456789012:bucket/lake",
        profiles.CLICKHOUSE_DSN_ENV: "https://ticklake@ch.example.com:8443/market",
        profiles.ARTIFACTS_ENV: "s3://artifacts/ticklake",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (kc.KAFKA_SASL_USERNAME_ENV, kc.KAFKA_SASL_PASSWORD_ENV, "TICKLAKE_CLICKHOUSE_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name=REGION)
        for name, value in (
            (kc.KAFKA_SASL_USERNAME_ENV, USER),
            (kc.KAFKA_SASL_PASSWORD_ENV, PASSWORD),
            ("TICKLAKE_CLICKHOUSE_PASSWORD", "ch-secret"),
        ):
            sm.create_secret(Name=name, SecretString=value, Tags=[{"Key": TAG, "Value": "1"}])
        sm.create_secret(Name="UNRELATED", SecretString="x")  # untagged: never read
        yield


def test_secrets_resource_environment_first_then_secrets_manager(aws_env, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = SecretsResource(secrets_tag=TAG, region_name=REGION)
    assert secrets.get(kc.KAFKA_SASL_PASSWORD_ENV) == PASSWORD
    assert secrets.get("UNRELATED") is None
    monkeypatch.setenv(kc.KAFKA_SASL_PASSWORD_ENV, "operator-override")
    assert secrets.get(kc.KAFKA_SASL_PASSWORD_ENV) == "operator-override"
    assert SecretsResource().get("TICKLAKE_CLICKHOUSE_PASSWORD") is None  # no tag: environment only


def test_aws_profile_reaches_kafka_over_sasl_ssl_with_secrets_manager_credentials(
    aws_env, secured_broker: SaslPlainTlsProxy
) -> None:
    res = profiles.build_resources()
    assert PASSWORD not in repr(res)  # definitions name where secrets live, never hold them
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    with dg.build_resources({"kafka": res["kafka"], "clickhouse": res["clickhouse"]}) as r:
        assert r.clickhouse.resolved_password() == "ch-secret"
        admin = AdminClient(r.kafka.admin_config())
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(15)
        producer = Producer(r.kafka.transactional_producer_config(f"secure-{topic}"))
        producer.init_transactions(15)
        producer.begin_transaction()
        producer.produce(topic, key=b"BTC-USDT", value=b"over-tls")
        producer.commit_transaction(15)
        consumer = Consumer(r.kafka.consumer_config(f"g-{topic}"))
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append((msg.key(), msg.value()))
        consumer.close()
    assert got == [(b"BTC-USDT", b"over-tls")]
    assert secured_broker.authenticated >= 2  # admin, producer and consumer connections all signed in


def _refusal(config: dict) -> str:
    """The client's own account of why it could not connect (librdkafka's error callback),
    so a refusal is told apart from a mere timeout."""
    errors: list[str] = []
    admin = AdminClient({**config, "error_cb": lambda err: errors.append(err.str())})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    admin.poll(1)  # serves the error callbacks
    return " | ".join(errors)


def test_wrong_password_plaintext_and_untrusted_server_are_refused(
    secured_broker: SaslPlainTlsProxy, tls: TlsFiles, tmp_path: Path
) -> None:
    base = {"bootstrap.servers": f"127.0.0.1:{secured_broker.port}", "socket.timeout.ms": 3000}
    sasl = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": USER}
    rejected = secured_broker.rejected
    why = _refusal({**base, **sasl, "ssl.ca.location": str(tls.cert), "sasl.password": "wrong"})
    assert "authentication" in why.lower() and secured_broker.rejected > rejected, why
    why = _refusal({**base, **sasl, "ssl.ca.location": str(make_self_signed(tmp_path).cert), "sasl.password": PASSWORD})
    assert "certificate verify failed" in why.lower() or "ssl handshake failed" in why.lower(), why
    # No TLS: the proxy's TLS listener never answers a plaintext Kafka request.
    assert _refusal({**base, "security.protocol": "PLAINTEXT"})

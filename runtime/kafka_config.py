"""librdkafka configuration dictionaries for every client the platform creates.

One definition of "how ticklake talks to Kafka": the Dagster KafkaResource, the
long-running processors and the CLI all build their producer/consumer/admin configs
here, so the delivery settings of ARCHITECTURE §3 (acks=all, idempotence, zstd, tuned
batching; read_committed consumers) cannot drift between code paths. Plain Python, no
Dagster import, so streaming code and tests use it directly.

Secrets (the SASL password) are only ever read from the environment or handed in by the
caller; `redacted()` is what goes to logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

#: Environment variables read by `connection_from_env` (the names are also what the
#: Dagster profiles wrap in dg.EnvVar).
KAFKA_BOOTSTRAP_ENV = "TICKLAKE_KAFKA_BOOTSTRAP"
KAFKA_SECURITY_PROTOCOL_ENV = "TICKLAKE_KAFKA_SECURITY_PROTOCOL"
KAFKA_SASL_MECHANISM_ENV = "TICKLAKE_KAFKA_SASL_MECHANISM"
KAFKA_SASL_USERNAME_ENV = "TICKLAKE_KAFKA_SASL_USERNAME"
KAFKA_SASL_PASSWORD_ENV = "TICKLAKE_KAFKA_SASL_PASSWORD"
KAFKA_SSL_CA_LOCATION_ENV = "TICKLAKE_KAFKA_SSL_CA_LOCATION"
#: librdkafka's metadata.recovery.strategy ("rebootstrap" by default, "none"). The local stack
#: sets "none": its single broker restarts on the same address, and a client that re-bootstraps
#: meanwhile decommissions it, after which send_offsets_to_transaction never returns
#: (librdkafka issue #5511) and a transactional processor stalls for good.
KAFKA_METADATA_RECOVERY_ENV = "TICKLAKE_KAFKA_METADATA_RECOVERY"
KAFKA_CLIENT_ID_ENV = "TICKLAKE_KAFKA_CLIENT_ID"

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLIENT_ID = "ticklake"

SECURITY_PROTOCOLS = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})
SASL_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"})

#: Producer delivery settings (ARCHITECTURE §3). linger/batch trade a few ms of latency
#: for large zstd batches: market data arrives in bursts and per-message requests would
#: dominate broker CPU at 100k+ msg/s.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "zstd",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.kbytes": 262_144,
    "message.timeout.ms": 120_000,
}

#: Transactions abort after this long without a commit; processors commit every few
#: hundred ms, so a minute only matters when a process hangs.
TRANSACTION_TIMEOUT_MS = 60_000

#: Consumers commit offsets themselves (inside a producer transaction or in an Iceberg
#: snapshot summary), never automatically; "earliest" because the embedded broker does
#: not honour "latest" and a new group must not silently skip data.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_FETCH_WAIT_MAX_MS = 100

#: fetch.wait.max.ms of the long-running service consumers (normalizer, feature processor,
#: lake sink, pragma publisher, ClickHouse live). The embedded broker (Tansu 0.6) has no
#: data-arrival wake-up: an empty fetch re-reads every requested partition, sleeps half the
#: remaining wait and repeats, so idle consumers polling ~530 partitions cost it ~11 % of a
#: core. Its front proxy (streaming/kafka/broker_proxy.py) now provides the long poll: a fetch
#: that cannot find records is held in the proxy until a write completes or this wait is
#: spent, and never waits more than 500 ms inside the broker. So this value is what an idle
#: consumer costs (one broker scan per wait) and does not delay records (a write releases
#: the fetch at once), as on a real Kafka broker. Its price: other requests the client
#: sends on the same connection (metadata, uncached watermark queries) may queue behind a
#: held fetch for up to this long, exactly as behind a long poll on real Kafka.
#: bench/bench_idle.py measures the effect.
SERVICE_FETCH_WAIT_MAX_MS = 2_000

#: Keys whose values must never appear in logs.
SECRET_KEYS = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """Where the cluster is and how to authenticate; everything else is per client kind."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    client_id: str = DEFAULT_CLIENT_ID
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    #: librdkafka metadata.recovery.strategy; None keeps librdkafka's default
    metadata_recovery: str | None = None

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must not be empty")
        proto = self.security_protocol.upper()
        if proto not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol must be one of {sorted(SECURITY_PROTOCOLS)}, got {self.security_protocol!r}"
            )
        object.__setattr__(self, "security_protocol", proto)
        if self.sasl_mechanism:
            mech = self.sasl_mechanism.upper()
            if mech not in SASL_MECHANISMS:
                raise ValueError(
                    f"sasl_mechanism must be one of {sorted(SASL_MECHANISMS)}, got {self.sasl_mechanism!r}"
                )
            if not proto.startswith("SASL_"):
                raise ValueError(
                    f"sasl_mechanism {mech} needs security_protocol SASL_SSL or SASL_PLAINTEXT, got {proto}"
                )
            object.__setattr__(self, "sasl_mechanism", mech)
        elif proto.startswith("SASL_"):
            raise ValueError(f"security_protocol {proto} needs a sasl_mechanism")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and "
                f"sasl_password (set {KAFKA_SASL_PASSWORD_ENV} in the environment)"
            )

    def __repr__(self) -> str:  # the password must not leak through logs or tracebacks
        pw = "'***'" if self.sasl_password else "None"
        return (
            f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, "
            f"client_id={self.client_id!r}, security_protocol={self.security_protocol!r}, "
            f"sasl_mechanism={self.sasl_mechanism!r}, sasl_username={self.sasl_username!r}, "
            f"sasl_password={pw}, ssl_ca_location={self.ssl_ca_location!r})"
        )

    def with_client_id(self, client_id: str) -> KafkaConnection:
        return replace(self, client_id=client_id)


def connection_from_env(env: Mapping[str, str] | None = None, **explicit: Any) -> KafkaConnection:
    """A connection from TICKLAKE_KAFKA_* variables; explicit non-None arguments win."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {
        "bootstrap_servers": env.get(KAFKA_BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP,
        "client_id": env.get(KAFKA_CLIENT_ID_ENV) or DEFAULT_CLIENT_ID,
        "security_protocol": env.get(KAFKA_SECURITY_PROTOCOL_ENV) or "PLAINTEXT",
        "sasl_mechanism": env.get(KAFKA_SASL_MECHANISM_ENV) or None,
        "sasl_username": env.get(KAFKA_SASL_USERNAME_ENV) or None,
        "sasl_password": env.get(KAFKA_SASL_PASSWORD_ENV) or None,
        "ssl_ca_location": env.get(KAFKA_SSL_CA_LOCATION_ENV) or None,
        "metadata_recovery": env.get(KAFKA_METADATA_RECOVERY_ENV) or None,
    }
    values.update({k: v for k, v in explicit.items() if v is not None})
    return KafkaConnection(**values)


def _merge(base: dict[str, Any], extra: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` are Python keyword names (linger_ms) mapped to librdkafka keys (linger.ms);
    `extra` takes dotted keys verbatim. librdkafka keys never contain '_', so the mapping is exact."""
    out = dict(base)
    out.update(extra or {})
    out.update({k.replace("_", "."): v for k, v in overrides.items()})
    return out


def connection_config(conn: KafkaConnection) -> dict[str, Any]:
    """Settings every client shares; SASL/TLS keys appear only when configured."""
    optional = {
        "sasl.mechanism": conn.sasl_mechanism,
        "sasl.username": conn.sasl_username,
        "sasl.password": conn.sasl_password,
        "ssl.ca.location": conn.ssl_ca_location,
        "metadata.recovery.strategy": conn.metadata_recovery,
    }
    return {
        "bootstrap.servers": conn.bootstrap_servers,
        "client.id": conn.client_id,
        "security.protocol": conn.security_protocol,
    } | {k: v for k, v in optional.items() if v}


def is_idempotent(cfg: Mapping[str, Any]) -> bool:
    return str(cfg.get("enable.idempotence", False)).lower() in ("true", "1")


def _check_idempotence(cfg: Mapping[str, Any]) -> None:
    # librdkafka rejects this combination at client creation with a terse message; say why here.
    if is_idempotent(cfg) and str(cfg.get("acks")).lower() not in ("all", "-1"):
        raise ValueError(
            f"enable.idempotence requires acks=all (got acks={cfg.get('acks')!r}); "
            "pass enable_idempotence=False together with a weaker acks"
        )


def producer_config(conn: KafkaConnection, extra: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Idempotent zstd producer; overrides e.g. linger_ms=5 or acks="1", enable_idempotence=False."""
    cfg = _merge({**connection_config(conn), **PRODUCER_DEFAULTS}, extra, overrides)
    _check_idempotence(cfg)
    return cfg


def transactional_producer_config(
    conn: KafkaConnection, transactional_id: str, extra: Mapping[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """Producer for consume-transform-produce; the id must be stable per input shard so a
    restarted processor fences its zombie predecessor."""
    if not transactional_id or not transactional_id.strip():
        raise ValueError("transactional_id must be a non-empty, stable name")
    base = {
        **connection_config(conn),
        **PRODUCER_DEFAULTS,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
    }
    cfg = _merge(base, extra, overrides)
    explicit = "message.timeout.ms" in (extra or {}) or "message_timeout_ms" in overrides
    if int(cfg["message.timeout.ms"]) > int(cfg["transaction.timeout.ms"]):
        # librdkafka refuses a delivery timeout longer than the transaction timeout.
        if explicit:
            raise ValueError("message.timeout.ms must not exceed transaction.timeout.ms")
        cfg["message.timeout.ms"] = cfg["transaction.timeout.ms"]
    if not is_idempotent(cfg):
        raise ValueError("a transactional producer must keep enable.idempotence on")
    _check_idempotence(cfg)
    return cfg


def consumer_config(
    conn: KafkaConnection,
    group_id: str,
    *,
    read_committed: bool = True,
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
    heartbeat_interval_ms: int | None = None,
    fetch_wait_max_ms: int = DEFAULT_FETCH_WAIT_MAX_MS,
    auto_offset_reset: str = "earliest",
    extra: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Manual-commit consumer. Short session timeouts make groups join fast against the
    embedded broker (it waits about half the session timeout); tests use 2-6 s and
    fetch_wait_max_ms ~10."""
    if not group_id or not group_id.strip():
        raise ValueError("group_id must not be empty")
    if session_timeout_ms < 1:
        raise ValueError("session_timeout_ms must be positive")
    if heartbeat_interval_ms is None:
        heartbeat_interval_ms = max(100, min(3_000, session_timeout_ms // 3))
    if heartbeat_interval_ms >= session_timeout_ms:
        raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
    if auto_offset_reset not in ("earliest", "latest", "error"):
        raise ValueError(f"auto_offset_reset must be earliest, latest or error, got {auto_offset_reset!r}")
    base = {
        **connection_config(conn),
        **CONSUMER_DEFAULTS,
        "group.id": group_id,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": heartbeat_interval_ms,
        "fetch.wait.max.ms": fetch_wait_max_ms,
        "auto.offset.reset": auto_offset_reset,
    }
    return _merge(base, extra, overrides)


def admin_config(conn: KafkaConnection, extra: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return _merge(connection_config(conn), extra, overrides)


def redacted(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secret values replaced by '***', and credentials embedded in other
    values (a bootstrap or OAuth URL with user:password@) masked in place."""
    from runtime.redact import redact_mapping

    return redact_mapping(cfg, SECRET_KEYS)

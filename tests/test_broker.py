"""The embedded Tansu broker and topic administration, against real broker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from schemas.topics import DlqStage
from streaming.kafka.broker import (
    BrokerError,
    EmbeddedBroker,
    fetch_metadata,
    find_free_port,
    metadata_answers,
    port_in_use,
    process_listens_on,
    wait_for_metadata,
)
from streaming.kafka.topic_admin import (
    admin_client,
    create_topics,
    describe_topic_configs,
    ensure_prediction_topic,
    ensure_topics,
    planned_topics,
)
from streaming.kafka.topic_config import DAY_MS, HOUR_MS, TopicConfig, TopicSpec
from tests.support.fetch_frames import fetch_request

# --------------------------------------------------------------------------- broker process


def test_broker_answers_metadata_and_owns_its_port(kafka_broker):
    md = fetch_metadata(kafka_broker.bootstrap, 10)
    assert [f"{b.host}:{b.port}" for b in md.brokers.values()] == [kafka_broker.bootstrap]
    assert process_listens_on(kafka_broker.pid, kafka_broker.port) is True
    assert process_listens_on(os.getpid(), kafka_broker.port) is False


def test_stop_ends_the_process_and_frees_the_port():
    broker = EmbeddedBroker().start()
    pid, port, bootstrap = broker.pid, broker.port, broker.bootstrap
    assert metadata_answers(bootstrap)
    broker.stop()
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stop() waited for it, so it is not even a zombie
    assert not port_in_use("127.0.0.1", port)
    assert not metadata_answers(bootstrap, timeout=1.0)


OWNER = """
import sys, time
from streaming.kafka.broker import EmbeddedBroker
b = EmbeddedBroker().start()
print(b.pid, b.port, flush=True)
time.sleep(600)
"""


def test_broker_dies_with_an_owner_killed_by_sigkill():
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    try:
        pid, port = map(int, owner.stdout.readline().split())
        assert metadata_answers(f"127.0.0.1:{port}")
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 30
    while not _gone(pid):
        assert time.monotonic() < deadline, f"broker {pid} outlived its killed owner"
        time.sleep(0.1)
    assert not port_in_use("127.0.0.1", port)


pytestmark = pytest.mark.broker


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_taken_port_is_a_clear_error():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(port=port)
        with pytest.raises(BrokerError, match=rf"port {port} on 127.0.0.1 is already in use"):
            broker.start()
        assert broker.pid is None


def test_port_of_a_running_broker_is_refused_and_that_broker_keeps_working(kafka_broker):
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=kafka_broker.port).start()
    assert metadata_answers(kafka_broker.bootstrap)


def test_broker_that_exits_reports_its_exit_and_log_tail():
    with pytest.raises(BrokerError) as info:
        EmbeddedBroker(storage_engine="bogus://nowhere", startup_timeout=20).start()
    message = str(info.value)
    assert "exited before answering" in message
    assert "exit code" in message
    assert "bogus" in message  # the broker's own complaint, from its log


def test_a_port_nobody_answers_on_times_out_with_a_clear_error():
    port = find_free_port()
    with pytest.raises(BrokerError, match=rf"127.0.0.1:{port} did not answer a metadata request"):
        wait_for_metadata(f"127.0.0.1:{port}", timeout=1.5)


def test_a_server_that_is_not_kafka_is_not_taken_for_a_broker():
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        bootstrap = f"127.0.0.1:{mute.getsockname()[1]}"
        with pytest.raises(BrokerError, match="did not answer"):
            wait_for_metadata(bootstrap, timeout=2.0)


# --------------------------------------------------------------------------- topic config


def test_production_sizing_is_the_seed_sizing():
    prod = TopicConfig.production()
    assert (prod.raw.partitions, prod.raw.retention_ms) == (64, 48 * 3_600_000)
    assert (prod.processed.partitions, prod.processed.retention_ms) == (64, 5 * 86_400_000)
    assert (prod.feature.partitions, prod.feature.retention_ms) == (32, 7 * 86_400_000)
    assert prod.replication_factor == 3


def test_spec_for_routes_each_topic_kind_to_its_stage():
    cfg = TopicConfig.local().with_overrides(
        {
            "raw": {"partitions": 1},
            "processed": {"partitions": 2},
            "feature": {"partitions": 3},
            "prediction": {"partitions": 4},
            "dlq": {"partitions": 5},
            "pragma": {"partitions": 6},
        }
    )
    routed = {
        t: cfg.spec_for(t).partitions
        for t in (
            "raw.spot.orderbook.delta.binance",
            "processed.perp.trades.okx",
            "feature.spot.signals.bybit",
            "prediction.perp.lgbm_v1",
            "dlq.normalize",
            "pragma-prices-v1",
            "pragma-orderbook-v1",
        )
    }
    assert list(routed.values()) == [1, 2, 3, 4, 5, 6, 6]
    with pytest.raises(ValueError, match="not a ticklake topic"):
        cfg.spec_for("__consumer_offsets")


def test_config_overrides_are_validated():
    with pytest.raises(ValueError, match="unknown topic config keys"):
        TopicConfig.local().with_overrides({"rawx": {"partitions": 2}})
    with pytest.raises(ValueError, match="unknown keys"):
        TopicConfig.local().with_overrides({"raw": {"partition": 2}})
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        TopicConfig.local(partitions=0)
    with pytest.raises(ValueError, match="unknown topic profile"):
        TopicConfig.for_profile("staging")
    assert TopicConfig.for_profile("production", {"replication_factor": 1}).replication_factor == 1


# --------------------------------------------------------------------------- topic creation


def test_standing_topics_are_created_with_partitions_and_retention():
    cfg = TopicConfig.local(partitions=2).with_overrides(
        {
            "raw": {"retention_ms": HOUR_MS, "retention_bytes": 1_048_576},
            "feature": {"partitions": 4},
        }
    )
    with EmbeddedBroker() as broker:  # own broker: the assertions need a known-empty one
        admin = admin_client(broker.bootstrap)
        planned = planned_topics(cfg)
        first = ensure_topics(admin, cfg)
        assert sorted(first.created) == sorted(planned) and first.existing == []

        # 3 venues x (spot 4 + perp 7 + future 7 event types) per stage, 9 feature topics,
        # one DLQ per stage, the two pragma topics.
        assert len(planned) == 54 + 54 + 9 + len(DlqStage) + 2
        md = admin.list_topics(timeout=10)
        for name in (
            "raw.spot.orderbook.delta.binance",
            "raw.future.funding.okx",
            "processed.perp.trades.okx",
            "feature.spot.signals.bybit",
            "dlq.collector",
            "dlq.pragma",
            "pragma-prices-v1",
            "pragma-orderbook-v1",
        ):
            assert name in md.topics, name
        assert "raw.spot.funding.binance" not in md.topics  # spot has no funding
        assert len(md.topics["raw.perp.liquidations.bybit"].partitions) == 2
        assert len(md.topics["feature.perp.signals.okx"].partitions) == 4
        assert len(md.topics["dlq.lake"].partitions) == 2

        configs = describe_topic_configs(admin, planned)
        assert configs["raw.spot.trades.binance"]["retention.ms"] == str(HOUR_MS)
        assert configs["raw.spot.trades.binance"]["retention.bytes"] == "1048576"
        assert configs["processed.spot.trades.binance"]["retention.ms"] == str(5 * DAY_MS)
        assert configs["feature.spot.signals.binance"]["retention.ms"] == str(7 * DAY_MS)
        for name, spec in planned.items():
            assert configs[name]["retention.ms"] == str(spec.retention_ms), name
            assert configs[name]["retention.bytes"] == str(spec.retention_bytes), name
            assert len(md.topics[name].partitions) == spec.partitions, name

        again = ensure_topics(admin, cfg)
        assert again.created == [] and sorted(again.existing) == sorted(planned)
        assert again.partition_mismatch == {}
        wider = ensure_topics(admin, cfg.with_partitions(5))
        assert wider.created == []
        assert wider.partition_mismatch["dlq.lake"] == (2, 5)


def test_prediction_topics_are_created_on_demand(kafka_broker):
    admin = admin_client(kafka_broker.bootstrap)
    model = f"m{uuid.uuid4().hex[:10]}"
    cfg = TopicConfig.local().with_overrides({"prediction": {"partitions": 2, "retention_ms": DAY_MS}})
    name = ensure_prediction_topic(admin, "perp", model, cfg)
    assert name == f"prediction.perp.{model}"
    assert len(admin.list_topics(timeout=10).topics[name].partitions) == 2
    assert describe_topic_configs(admin, [name])[name]["retention.ms"] == str(DAY_MS)
    assert ensure_prediction_topic(admin, "perp", model, cfg) == name  # idempotent


# --------------------------------------------------------------------------- data path


def test_produce_consume_round_trip_keeps_per_key_order(kafka_broker):
    topic = f"test.roundtrip.{uuid.uuid4().hex[:12]}"
    admin = admin_client(kafka_broker.bootstrap)
    create_topics(admin, {topic: TopicSpec(3, HOUR_MS)}, replication_factor=1)

    producer = Producer(
        {"bootstrap.servers": kafka_broker.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    sent = [(f"SYM{i % 5}".encode(), f"{i % 5}:{i}".encode()) for i in range(40)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value(), msg.partition()))
    finally:
        consumer.close()

    assert sorted((k, v) for k, v, _ in got) == sorted(sent)
    for key in {k for k, _ in sent}:
        values = [v for k, v, _ in got if k == key]
        assert values == [v for k, v in sent if k == key]  # per-key order
        assert len({p for k, _, p in got if k == key}) == 1  # one key, one partition
    assert len({p for *_, p in got}) > 1  # keys actually spread over partitions


# --------------------------------------------------------------------------- default clients


def _join_frame(
    version: int, session_ms: int, *, group: str = "g1", client_id: str | None = "cli", tags: bytes = b"\x00"
) -> bytearray:
    """A JoinGroup request frame (no size prefix) up to its session_timeout_ms field,
    followed by a marker so the field's position is unambiguous."""
    import struct

    head = struct.pack(">hhi", 11, version, 7)
    head += struct.pack(">h", -1) if client_id is None else struct.pack(">h", len(client_id)) + client_id.encode()
    if version >= 6:
        body = tags + bytes([len(group) + 1]) + group.encode()
    else:
        body = struct.pack(">h", len(group)) + group.encode()
    return bytearray(head + body + struct.pack(">i", session_ms) + b"REST")


@pytest.mark.parametrize("version", [0, 5, 6, 9])
@pytest.mark.parametrize("client_id", ["rdkafka", None])
def test_join_group_session_timeout_is_capped_in_place(version, client_id):
    from streaming.kafka.broker_proxy import cap_session_timeout

    frame = _join_frame(version, 45_000, client_id=client_id, tags=b"\x01\x00\x02ab" if version >= 6 else b"\x00")
    before = len(frame)
    assert cap_session_timeout(frame, 6_000) == 45_000
    assert len(frame) == before and frame.endswith(b"REST")
    assert bytes(frame) == bytes(
        _join_frame(version, 6_000, client_id=client_id, tags=b"\x01\x00\x02ab" if version >= 6 else b"\x00")
    )
    short = _join_frame(version, 2_000, client_id=client_id)
    assert cap_session_timeout(short, 6_000) == 2_000
    assert short == _join_frame(version, 2_000, client_id=client_id)  # a smaller ask is kept


def test_other_requests_and_truncated_frames_pass_untouched():
    import struct

    from streaming.kafka.broker_proxy import cap_session_timeout

    fetch = bytearray(struct.pack(">hhi", 1, 11, 3) + b"\x00" * 40)
    assert cap_session_timeout(fetch, 6_000) is None and fetch == struct.pack(">hhi", 1, 11, 3) + b"\x00" * 40
    cut = _join_frame(5, 45_000)[:-8]  # ends inside session_timeout_ms
    assert cap_session_timeout(cut, 6_000) is None


def test_a_consumer_with_library_defaults_reads_a_new_group_within_10_s(kafka_broker):
    """Issue 11: bootstrap.servers, a new group.id and auto.offset.reset only (session
    timeout 45 s, heartbeat 3 s): the bare broker holds its JoinGroup ~23 s; through the
    broker's proxy it must read within 10 s, and stay a member past the capped session."""
    topic = f"test.defaults.{uuid.uuid4().hex[:12]}"
    create_topics(admin_client(kafka_broker.bootstrap), {topic: TopicSpec(3, HOUR_MS)}, replication_factor=1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(6):
        producer.produce(topic, key=f"k{i}".encode(), value=f"first-{i}".encode())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": f"plain-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    revoked: list[int] = []
    consumer.subscribe([topic], on_revoke=lambda c, parts: revoked.append(len(parts)))
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert sorted(got) == sorted(f"first-{i}".encode() for i in range(6))

        # Idle for longer than the capped session (6 s): default heartbeats keep it a member.
        idle_until = time.monotonic() + 8
        while time.monotonic() < idle_until:
            assert consumer.poll(0.5) is None
        for i in range(3):
            producer.produce(topic, key=f"k{i}".encode(), value=f"second-{i}".encode())
        assert producer.flush(30) == 0
        later: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(later) < 3 and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                later.append(msg.value())
        assert sorted(later) == sorted(f"second-{i}".encode() for i in range(3))
        assert revoked == []  # never lost its partitions
    finally:
        consumer.close()


def test_bare_broker_mode_runs_without_the_proxy():
    with EmbeddedBroker(max_session_timeout_ms=None) as broker:
        assert "streaming.kafka.broker_proxy" not in " ".join(broker.command())
        assert process_listens_on(broker.pid, broker.port) is True
        assert metadata_answers(broker.bootstrap)


# --------------------------------------------------------------------------- the proxy's fetch hold


def _fetch_request(version: int, wait_ms: int) -> bytes:
    import struct

    head = struct.pack(">hhi", 1, version, 9) + struct.pack(">h", 7) + b"rdkafka"
    if version >= 12:
        head += b"\x00"  # header tagged fields
    body = b"" if version >= 15 else struct.pack(">i", -1)  # replica_id
    return head + body + struct.pack(">ii", wait_ms, 1) + b"REST"


def _fetch_response(version: int, partitions: list[tuple[int, bytes | None]]) -> bytes:
    """Correlation id, then one topic with (error_code, records) per partition."""
    import struct

    flexible = version >= 12

    def length(n: int) -> bytes:
        return bytes([n + 1]) if flexible else struct.pack(">i", n)

    tags = b"\x00" if flexible else b""
    out = struct.pack(">i", 9) + tags + struct.pack(">i", 0)
    if version >= 7:
        out += struct.pack(">hi", 0, 0)
    out += length(1) + (
        b"\x11" * 16 if version >= 13 else (bytes([3]) + b"ab" if flexible else struct.pack(">h", 2) + b"ab")
    )
    out += length(len(partitions))
    for i, (error, records) in enumerate(partitions):
        out += struct.pack(">ihqq", i, error, 5, 5) + (struct.pack(">q", 0) if version >= 5 else b"")
        out += length(1) + struct.pack(">qq", 77, 3) + tags  # one aborted transaction
        if version >= 11:
            out += struct.pack(">i", -1)
        out += length(-1) if records is None else length(len(records)) + records
        out += tags
    return out + tags + tags


@pytest.mark.parametrize("version", [4, 11, 12, 15, 16])
def test_fetch_wait_and_records_are_read_from_fetch_frames(version):
    import struct

    from streaming.kafka.broker_proxy import fetch_max_wait_offset, fetch_response_has_records

    frame = _fetch_request(version, 5_000)
    pos = fetch_max_wait_offset(frame)
    assert struct.unpack_from(">ii", frame, pos) == (5_000, 1)
    assert fetch_max_wait_offset(_join_frame(5, 45_000)) is None
    assert fetch_response_has_records(_fetch_response(version, [(0, None), (0, b"")]), version) is False
    assert fetch_response_has_records(_fetch_response(version, [(0, b""), (0, b"batch")]), version) is True
    assert fetch_response_has_records(_fetch_response(version, [(0, None), (6, None)]), version) is True
    assert fetch_response_has_records(_fetch_response(version, [(0, None)])[:-9], version) is None  # cut short
    assert fetch_response_has_records(_fetch_response(version, [(0, None)]), 17) is None  # unknown layout


@pytest.mark.parametrize("version", [3, 8, 9, 10])
def test_produce_requests_say_whether_they_are_transactional_and_acked(version):
    import struct

    from streaming.kafka.broker_proxy import produce_kind

    def frame(txn: str | None, acks: int) -> bytes:
        head = struct.pack(">hhi", 0, version, 4) + struct.pack(">h", -1)
        if version >= 9:
            head += b"\x00"
            txn_field = bytes([0 if txn is None else len(txn) + 1]) + (txn or "").encode()
        else:
            txn_field = struct.pack(">h", -1 if txn is None else len(txn)) + (txn or "").encode()
        return head + txn_field + struct.pack(">hi", acks, 30_000)

    assert produce_kind(frame(None, -1)) == (False, -1)
    assert produce_kind(frame("normalizer-0", -1)) == (True, -1)
    assert produce_kind(frame(None, 0)) == (False, 0)
    assert produce_kind(_fetch_request(11, 500)) is None


@pytest.mark.parametrize("version", [4, 11, 12, 13, 16])
def test_fetch_partitions_names_each_partition_and_its_offset(version):
    """What the proxy registers for the store's listing (streaming/kafka/fetch_floors.py): the
    topic by name up to v12, by id from v13; read_uncommitted too; nothing it cannot trust."""
    import uuid as uuid_

    from streaming.kafka.broker_proxy import fetch_partitions

    parts = [("raw.a", 0, 5), ("raw.a", 1, 7), ("raw.b", 0, 0)]

    def ref(topic: str) -> str:
        return str(uuid_.UUID(bytes=topic.encode().ljust(16, b"_"))) if version >= 13 else topic

    expected = {(ref(t), p): o for t, p, o in parts}
    assert fetch_partitions(fetch_request(version, 500, parts)) == expected
    assert fetch_partitions(fetch_request(version, 500, parts, isolation=0)) == expected
    assert fetch_partitions(fetch_request(version, 500, parts)[:-12]) is None  # cut short
    assert fetch_partitions(_join_frame(5, 45_000)) is None
    if version >= 7:  # an incremental fetch session leaves unchanged partitions out
        assert fetch_partitions(fetch_request(version, 500, parts, session=42)) is None


@pytest.mark.parametrize("version", [4, 11, 12, 13, 16])
def test_a_fetch_request_key_ignores_wait_and_order_not_offsets(version):
    from streaming.kafka.broker_proxy import _read_fetch, fetch_request_key

    parts = [("raw.a", 0, 5), ("raw.a", 1, 7), ("raw.b", 0, 0)]
    key = fetch_request_key(fetch_request(version, 2_000, parts))
    assert key is not None
    rotated = parts[1:] + parts[:1]  # librdkafka starts each fetch at the next partition
    assert fetch_request_key(fetch_request(version, 100, rotated, correlation=10)) == key
    split = [parts[0], parts[2], parts[1]]  # raw.a in two topic entries
    assert fetch_request_key(fetch_request(version, 2_000, split)) == key
    assert fetch_request_key(fetch_request(version, 2_000, [*parts[:2], ("raw.b", 0, 1)])) != key
    assert fetch_request_key(fetch_request(version, 2_000, parts[:2])) != key
    assert fetch_request_key(fetch_request(version, 2_000, [*parts, ("raw.b", 1, 0)])) != key
    assert fetch_request_key(fetch_request(version, 2_000, parts)[:-12]) is None  # cut short
    # read_uncommitted sees an open transaction's records before the EndTxn counted as their write
    assert fetch_request_key(fetch_request(version, 2_000, parts, isolation=0)) is None
    # each partition's fetch offset (what the proxy keeps per pending Fetch)
    offsets = _read_fetch(fetch_request(version, 2_000, parts))[1]
    assert sorted((p, o) for (_, p), o in offsets.items()) == [(0, 0), (0, 5), (1, 7)]
    assert len({t for t, _ in offsets}) == 2
    assert fetch_request_key(_join_frame(5, 45_000)) is None


@pytest.mark.parametrize("version", [4, 12, 16])
def test_a_fetch_response_reports_each_partitions_last_stable_offset(version):
    from streaming.kafka.broker_proxy import fetch_response_has_records

    stable: dict[tuple[bytes, int], int] = {}
    assert fetch_response_has_records(_fetch_response(version, [(0, None), (0, b"")]), version, stable) is False
    assert sorted((p, o) for (_, p), o in stable.items()) == [(0, 5), (1, 5)]  # the helper's offsets


@pytest.mark.parametrize("version", [4, 11, 12, 16])
def test_only_an_empty_answer_to_a_fetch_that_waited_a_scan_may_be_given_again(version):
    """Asked with a few ms, the broker can answer empty before its scan read batches that
    exist; such an answer says nothing about the log (test_collector_faults' 10 ms readers
    missed records while it was replayed)."""
    from streaming.kafka.broker_proxy import MIN_SCAN_WAIT_MS, scans_log

    parts = [("raw.a", 0, 5)]
    assert scans_log(fetch_request(version, MIN_SCAN_WAIT_MS, parts))
    assert scans_log(fetch_request(version, 2_000, parts))
    assert not scans_log(fetch_request(version, 10, parts))
    assert not scans_log(_join_frame(5, 45_000))


def test_a_held_fetch_is_answered_by_the_proxy_only_when_the_broker_would_answer_the_same():
    """After the client's wait, a Fetch asking what the broker last answered with nothing is
    answered from that answer; any write since, another question, an answer still on its way
    or an answer too old sends it to the broker (with one scan's wait)."""
    import asyncio
    import struct

    from streaming.kafka.broker_proxy import (
        MIN_SCAN_WAIT_MS,
        WriteClock,
        _Connection,
        fetch_max_wait_offset,
        fetch_request_key,
        hold_fetch,
    )

    parts = [("raw.a", 0, 5), ("raw.a", 1, 7)]

    async def scenario() -> list[bytes | int]:
        clock = WriteClock()
        conn = _Connection()
        out: list[bytes | int] = []

        async def ask(offsets: list[tuple[str, int, int]] = parts, age_s: float = 30.0) -> None:
            frame = bytearray(fetch_request(16, 50, offsets))
            answer = await hold_fetch(frame, conn, clock, max_answer_age_s=age_s)
            out.append(
                answer if answer is not None else struct.unpack_from(">i", frame, fetch_max_wait_offset(frame))[0]
            )

        def broker_answered_empty() -> None:
            conn.last_fetch_empty = True
            conn.empty_answer = b"EMPTY"
            conn.empty_key = fetch_request_key(fetch_request(16, 50, parts))

        await ask()  # nothing known yet: forwarded with the client's wait
        broker_answered_empty()
        await ask()  # same question, nothing written: the broker's answer again
        await ask(parts[::-1])  # the same question in another order
        await ask([("raw.a", 0, 4), ("raw.a", 1, 7)])  # a seek back: asked of the broker
        await ask()  # the answer on record is still the one to the first question
        conn.in_flight = 1
        await ask()  # an answer to an earlier request is on its way: forwarded
        conn.in_flight = 0
        await ask(age_s=0.0)  # the answer is too old: forwarded
        broker_answered_empty()
        clock.bump()
        await ask()  # a write since the broker answered: forwarded at once
        return out

    wait = MIN_SCAN_WAIT_MS
    assert asyncio.run(scenario()) == [50, b"EMPTY", b"EMPTY", wait, b"EMPTY", wait, wait, 50]


def test_an_idle_consumer_with_a_long_fetch_wait_gets_records_when_they_are_written(kafka_broker):
    """The proxy holds an idle consumer's fetch (up to the client's own fetch.wait.max.ms,
    here 20 s) and releases it when a write completes, plain or transactional: records
    arrive long before the wait would have run out."""
    topic = f"test.hold.{uuid.uuid4().hex[:12]}"
    create_topics(admin_client(kafka_broker.bootstrap), {topic: TopicSpec(3, HOUR_MS)}, replication_factor=1)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": f"hold-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20_000,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    plain = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    txn = Producer({"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": f"hold-{uuid.uuid4().hex}"})
    txn.init_transactions(30)
    try:
        settle = time.monotonic() + 8  # joined, and its fetches are being held
        while time.monotonic() < settle:
            assert consumer.poll(0.5) is None
        for write in ("plain", "transactional"):
            if write == "plain":
                plain.produce(topic, key=b"k", value=b"plain")
                assert plain.flush(10) == 0
            else:
                txn.begin_transaction()
                txn.produce(topic, key=b"k", value=b"transactional")
                txn.commit_transaction(30)
            written = time.monotonic()
            msg = None
            while msg is None and time.monotonic() - written < 10:
                msg = consumer.poll(0.1)
                msg = msg if msg is not None and msg.error() is None else None
            assert msg is not None and msg.value() == write.encode(), f"{write} record not delivered within 10 s"
            idle = time.monotonic() + 3  # its next fetches are held again
            while time.monotonic() < idle:
                assert consumer.poll(0.5) is None
    finally:
        consumer.close()

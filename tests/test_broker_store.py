"""The embedded broker's persistent storage: the S3-compatible directory store, and a real
Tansu broker on it surviving a stop/start and a kill -9."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streaming.kafka.broker import EmbeddedBroker, fetch_metadata
from streaming.kafka.broker_store import ObjectStore, StoreError, handle
from streaming.kafka.topic_admin import admin_client, create_topics
from streaming.kafka.topic_config import HOUR_MS, TopicSpec

pytestmark = pytest.mark.broker

# --------------------------------------------------------------------------- the store


def test_store_conditional_writes_reads_and_listing(tmp_path):
    store = ObjectStore(tmp_path)
    store.create_bucket("b")
    put = handle(store, "PUT", "/b/a/x.json", {"if-none-match": "*"}, b"one")
    assert put.status == 200
    etag = put.headers["ETag"]
    # create-only write of an existing key, and compare-and-swap with a stale tag, refused
    assert handle(store, "PUT", "/b/a/x.json", {"if-none-match": "*"}, b"two").status == 412
    assert handle(store, "PUT", "/b/a/x.json", {"if-match": '"stale"'}, b"two").status == 412
    assert handle(store, "GET", "/b/a/x.json", {"if-none-match": etag}, b"").status == 304
    swapped = handle(store, "PUT", "/b/a/x.json", {"if-match": etag}, b"two")
    assert swapped.status == 200 and swapped.headers["ETag"] != etag
    got = handle(store, "GET", "/b/a/x.json", {"range": "bytes=1-"}, b"")
    assert (got.status, got.body) == (206, b"wo")
    handle(store, "PUT", "/b/a/y/z.batch", {}, b"z")
    handle(store, "PUT", "/b/c.json", {}, b"c")
    listing = handle(store, "GET", "/b?list-type=2&prefix=a/&delimiter=/", {}, b"").body.decode()
    assert "<Key>a/x.json</Key>" in listing and "<Prefix>a/y/</Prefix>" in listing
    assert "c.json" not in listing
    assert handle(store, "DELETE", "/b/a/x.json", {}, b"").status == 204
    assert handle(store, "GET", "/b/a/x.json", {}, b"").status == 404
    # a new store on the same directory (a restarted proxy) sees the same objects and tags
    again = ObjectStore(tmp_path)
    assert handle(again, "GET", "/b/a/y/z.batch", {}, b"").body == b"z"
    assert handle(again, "GET", "/b/../etc/passwd", {}, b"").status in (400, 404)


def _batch(pid: int, seq: int, n: int, control: bool = False) -> bytes:
    """A stored record batch's v2 header (what the repair reads) and a stand-in body."""
    import struct

    attrs = 0x30 if control else 0
    return struct.pack(">qiibIhiqqqhii", 0, 49, -1, 2, 0, attrs, n - 1, 0, 0, pid, 0, seq, n) + b"r" * n


def test_store_repair_sets_back_what_a_dead_broker_counted_but_never_wrote(tmp_path):
    """The broker's produce writes meta.json (sequence), watermark.json, then the batch; the
    repair (run before each broker start) undoes the first two when the third never came."""
    import json

    store = ObjectStore(tmp_path)
    store.create_bucket("tansu")
    part = "clusters/k/topics/t/partitions/0000000000"

    def meta(seq: int) -> None:
        seqs = {"producers": {"7": {"sequences": {"0": {"t": {"0": seq}}}}}, "transactions": {}, "topics": {"t": 1}}
        store.put("tansu", "clusters/k/meta.json", json.dumps(seqs).encode())

    def state() -> tuple[int, int]:
        m = json.loads(store.read("tansu", "clusters/k/meta.json"))
        return m["producers"]["7"]["sequences"]["0"]["t"]["0"], json.loads(
            store.read("tansu", f"{part}/watermark.json")
        )["high"]

    # a previous store process: 3 records written, then a watermark past them (a batch never written)
    meta(3)
    store.put("tansu", f"{part}/records/{0:020d}.batch", _batch(7, 0, 3))
    store.put("tansu", f"{part}/watermark.json", b'{"low":null,"high":5,"timestamps":null}')
    fresh = ObjectStore(tmp_path)
    assert fresh.repair_unfinished_produces() == ["t[0]: high watermark 5 -> 3 (no batch past 3)"]
    assert state() == (3, 3)  # sequences only noted at a store's first start

    # the broker writes 2 records and a transaction marker, then counts 4 more and dies
    fresh.put("tansu", f"{part}/records/{3:020d}.batch", _batch(7, 3, 2))
    fresh.put("tansu", f"{part}/records/{5:020d}.batch", _batch(7, -1, 1, control=True))
    store = fresh
    meta(9)
    store.put("tansu", f"{part}/watermark.json", b'{"low":null,"high":10,"timestamps":null}')
    assert store.repair_unfinished_produces() == [
        "t[0]: producer 7 epoch 0 sequence 9 -> 5 (4 record(s) counted but never written)",
        "t[0]: high watermark 10 -> 6 (no batch past 6)",
    ]
    assert state() == (5, 6)
    assert json.loads(store.read("tansu", "clusters/k/meta.json"))["topics"] == {"t": 1}  # the rest kept
    # a batch written in full needs nothing
    store.put("tansu", f"{part}/records/{6:020d}.batch", _batch(7, 5, 4))
    meta(9)
    store.put("tansu", f"{part}/watermark.json", b'{"low":null,"high":10,"timestamps":null}')
    assert store.repair_unfinished_produces() == [] and state() == (9, 10)


# --------------------------------------------------------------------------- a real broker on it


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, v, key=v)
    assert p.flush(30) == 0


def _consume(bootstrap: str, topic: str, group: str, n: int, commit: bool = True) -> list[bytes]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    if commit and got:
        c.commit(asynchronous=False)
    c.close()
    return got


def _committed(bootstrap: str, topic: str, group: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = c.committed([TopicPartition(topic, 0)], timeout=20)
    finally:
        c.close()
    return offsets[0].offset


def _tansu_pid(proxy_pid: int) -> int:
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proxy_pid]
    assert len(children) == 1, children
    return children[0]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


@pytest.mark.broker
def test_topics_records_and_offsets_survive_a_stop_start_and_a_kill_9(tmp_path):
    topic, group = f"persist-{uuid.uuid4().hex[:8]}", "persist-group"
    data = tmp_path / "broker-data"
    first = [f"a{i}".encode() for i in range(20)]
    with EmbeddedBroker(data_dir=data, log_path=tmp_path / "b1.log") as broker:
        create_topics(admin_client(broker.bootstrap), {topic: TopicSpec(1, HOUR_MS)}, 1)
        _produce(broker.bootstrap, topic, first)
        assert sorted(_consume(broker.bootstrap, topic, group, 20)) == sorted(first)

    # `ticklake down` + `up`: a new broker process on the same directory
    with EmbeddedBroker(data_dir=data, log_path=tmp_path / "b2.log") as broker:
        assert topic in fetch_metadata(broker.bootstrap, 10).topics
        assert _committed(broker.bootstrap, topic, group) == 20
        # records written before the restart, read from the beginning by a new group
        assert sorted(_consume(broker.bootstrap, topic, "after-restart", 20, commit=False)) == sorted(first)
        second = [f"b{i}".encode() for i in range(10)]
        _produce(broker.bootstrap, topic, second)

        # a crash: the proxy starts the broker again, on the same address and storage
        tansu = _tansu_pid(broker.pid)
        os.kill(tansu, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            child = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == broker.pid]
            if child and int(child[0]) != tansu:
                break
            time.sleep(0.2)
        assert broker.is_running()
        third = [f"c{i}".encode() for i in range(10)]
        _produce(broker.bootstrap, topic, third)  # the producer reconnects by itself
        # the group resumes after its committed 20: exactly the records written since
        assert sorted(_consume(broker.bootstrap, topic, group, 20)) == sorted(second + third)
        assert "restarting it" in (tmp_path / "b2.log").read_text()


@pytest.mark.broker
@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_readers_at_different_offsets_of_one_partition_each_get_every_record(tmp_path, isolation):
    """The store lists a partition's batches from the lowest offset a Fetch in flight asks for
    (streaming/kafka/fetch_floors.py). While batches keep arriving, a reader at the head fetches
    them as they come, and readers from the start and the middle page through the log a few
    batches per Fetch, their Fetches in the broker at the same time as the head's: each reader
    gets exactly its records, none skipped."""
    import threading

    topic = f"floors-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(data_dir=tmp_path / "data", log_path=tmp_path / "b.log") as broker:
        create_topics(admin_client(broker.bootstrap), {topic: TopicSpec(1, HOUR_MS)}, 1)
        p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 0})

        def produce(start: int, batches: int, pause_s: float = 0.0) -> None:
            for b in range(batches):  # one flush per 5 records: one stored batch each
                for i in range(5):
                    p.produce(topic, f"{start + 5 * b + i:06d}".encode())
                assert p.flush(30) == 0
                time.sleep(pause_s)

        produce(0, 80)  # offsets 0-399
        want = 700
        got: dict[int, list[int]] = {0: [], 200: [], 400: []}

        def read(start: int) -> None:
            c = Consumer(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "group.id": f"g-{start}",
                    "enable.auto.commit": False,
                    "isolation.level": isolation,
                    # the pagers take ~15 batches per Fetch (the broker stops at a Fetch's max bytes)
                    **({"message.max.bytes": 1000, "fetch.max.bytes": 1512} if start < 400 else {}),
                    "fetch.wait.max.ms": 100,
                }
            )
            c.assign([TopicPartition(topic, 0, start)])
            deadline = time.monotonic() + 90
            while len(got[start]) < want - start and time.monotonic() < deadline:
                for m in c.consume(100, 0.2):
                    if m.error() is None:
                        got[start].append(int(m.value()))
            c.close()

        readers = [threading.Thread(target=read, args=(s,)) for s in got]
        for t in readers:
            t.start()
        produce(400, 60, pause_s=0.05)  # offsets 400-699, one batch every ~50 ms
        for t in readers:
            t.join(120)
        for start, values in got.items():
            assert values == list(range(start, want)), (start, values[:5], len(values))


@pytest.mark.broker
def test_offsets_asked_while_a_fetch_is_in_the_broker_come_from_the_whole_log(tmp_path):
    """Tansu answers ListOffsets (a consumer's offset reset, offsets_for_times, a lag report) by
    listing the partition's batches too. Such a listing must not be cut at the floor of a Fetch
    in flight at the same moment. Before the proxy counted ListOffsets among the requests that
    turn the floor off, the earliest offset came back as 450 (the Fetch's floor) instead of 0:
    a consumer resetting to the earliest offset would have skipped 450 records."""
    import socket
    import struct

    from tests.support.fetch_frames import fetch_request

    topic = f"offsets-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(data_dir=tmp_path / "data", log_path=tmp_path / "b.log") as broker:
        create_topics(admin_client(broker.bootstrap), {topic: TopicSpec(1, HOUR_MS)}, 1)
        _produce_batches(broker.bootstrap, topic, batches=100, per_batch=5)
        tp = TopicPartition(topic, 0)
        asker = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"ask-{topic}"})
        early = 1_700_000_000_000 + 10_000  # the 11th batch's timestamp

        def ask() -> tuple[int, int, int]:
            low, high = asker.get_watermark_offsets(tp, timeout=10, cached=False)
            [at] = asker.offsets_for_times([TopicPartition(topic, 0, early)], timeout=10)
            return low, high, at.offset

        alone = ask()  # nothing else in flight: the whole log is listed
        assert alone[0] == 0 and alone[1] > 0, alone
        # A Fetch near the end of the log that waits in the broker for more bytes than there are:
        # its listing floor (450) is registered while the offsets are asked for.
        request = fetch_request(11, 2_000, [(topic, 0, 450)], min_bytes=50_000_000)
        host, port = broker.bootstrap.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as fetcher:
            for _ in range(5):
                fetcher.sendall(struct.pack(">i", len(request)) + request)
                time.sleep(0.05)
                assert ask() == alone
                size = struct.unpack(">i", _recv_exactly(fetcher, 4))[0]
                _recv_exactly(fetcher, size)
        asker.close()


@pytest.mark.broker
def test_the_latest_offset_is_the_last_batchs_not_an_older_one_written_in_the_same_tick(tmp_path):
    """Tansu answers ListOffsets(latest) with the offset after the start of the batch listed with
    the newest LastModified, the first of a tie. The store used to report file times to the
    second (and file systems stamp with a clock tick), so 100 batches written within a second
    answered 1 for a log of 500 records; now each write has its own time."""
    topic = f"latest-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(data_dir=tmp_path / "data", log_path=tmp_path / "b.log") as broker:
        create_topics(admin_client(broker.bootstrap), {topic: TopicSpec(1, HOUR_MS)}, 1)
        _produce_batches(broker.bootstrap, topic, batches=100, per_batch=5)
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"latest-{topic}"})
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        c.close()
    # Tansu's answer is the last batch's start + 1 (a batch holds at most the 5 records of a flush)
    assert low == 0 and 500 - 5 < high <= 500, (low, high)


@pytest.mark.broker
def test_log_bounds_read_past_the_latest_offset_to_the_logs_end(tmp_path):
    """ListOffsets(latest) on Tansu falls short of the end by the rest of the last batch;
    streaming.kafka.io.log_bounds reads the end from a Fetch of that batch, so read_all (the
    predictions load, recompute) gets every record, and a transaction's marker counts."""
    from streaming.kafka.io import log_bounds, read_all, watermarks

    topic = f"end-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(data_dir=tmp_path / "data", log_path=tmp_path / "b.log") as broker:
        create_topics(admin_client(broker.bootstrap), {topic: TopicSpec(1, HOUR_MS)}, 1)
        _produce_batches(broker.bootstrap, topic, batches=100, per_batch=5)
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"end-{topic}", "enable.auto.commit": False})
        assert watermarks(c, (topic, 0))[1] < 500  # the start of the last batch + 1
        assert log_bounds(c, (topic, 0))[1] == 500
        assert len(read_all(c, [(topic, 0)])) == 500
        txn = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"end-{topic}"})
        txn.init_transactions(30)
        txn.begin_transaction()
        for _ in range(7):
            txn.produce(topic, b"t")
        txn.commit_transaction(30)
        assert log_bounds(c, (topic, 0))[1] == 508  # 7 records and the commit marker
        assert len(read_all(c, [(topic, 0)])) == 507
        c.close()


def _produce_batches(bootstrap: str, topic: str, batches: int, per_batch: int) -> None:
    """`batches` stored batches of `per_batch` records, the i-th stamped 1,700,000,000,000 ms + i s."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for b in range(batches):
        for _ in range(per_batch):
            p.produce(topic, b"x", timestamp=1_700_000_000_000 + b * 1000)
        assert p.flush(30) == 0


def _recv_exactly(sock, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "the broker closed the connection"
        got += chunk
    return got


# --------------------------------------------------------------------------- producers across an outage


@pytest.mark.broker
def test_collector_publisher_produces_again_what_a_broker_outage_timed_out(tmp_path):
    """A collector cannot ask the venue again: records whose delivery timed out while the
    broker was down are produced again, not dropped and counted."""
    from types import SimpleNamespace

    from collectors.runner import Publisher, ShardStats
    from streaming.kafka.broker import find_free_port

    port, data, topic = find_free_port(), tmp_path / "broker-data", f"outage-{uuid.uuid4().hex[:8]}"
    cfg = SimpleNamespace(name="outage-shard", exchange="binance")
    with EmbeddedBroker(port=port, data_dir=data, log_path=tmp_path / "b1.log") as broker:
        create_topics(admin_client(broker.bootstrap), {topic: TopicSpec(1, HOUR_MS)}, 1)
        pub = Publisher(
            cfg,
            {
                "bootstrap.servers": broker.bootstrap,
                "enable.idempotence": True,
                "message.timeout.ms": 1500,
                "reconnect.backoff.max.ms": 200,
            },
            ShardStats(),
        )
        pub._produce(topic, b"k0", b"v0", [])
        assert pub.flush(20) == 0
    # The broker is down: these time out after 1.5 s, repeatedly.
    for i in range(1, 6):
        pub._produce(topic, f"k{i}".encode(), f"v{i}".encode(), [])
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        pub.poll()
        time.sleep(0.1)
    assert pub.stats.redelivered >= 5 and pub.stats.delivery_errors == 0
    with EmbeddedBroker(port=port, data_dir=data, log_path=tmp_path / "b2.log") as broker:
        assert pub.flush(30) == 0
        got = _consume(broker.bootstrap, topic, "outage-group", 6, commit=False)
    assert sorted(set(got)) == [f"v{i}".encode() for i in range(6)]
    assert pub.stats.delivered == 6


# --------------------------------------------------------------------------- a kill inside a produce


class _KillAtBatch(ObjectStore):
    """The store, killing the broker when it is about to write a batch of `topic` (the write is
    not done): the broker dies after it counted the batch in the producer's sequence and
    handed out its offsets, before the records exist, the window a kill -9 can hit."""

    def __init__(self, root, topic: str):
        super().__init__(root)
        self.topic, self.broker_pid, self.armed, self.killed_at = topic, 0, False, ""

    def put(self, bucket, key, data, if_none_match=None, if_match=None):
        if self.armed and f"/topics/{self.topic}/" in key and key.endswith(".batch"):
            self.armed, self.killed_at = False, key
            os.kill(self.broker_pid, signal.SIGKILL)
            raise StoreError(500, "InternalError", "broker killed")
        return super().put(bucket, key, data, if_none_match=if_none_match, if_match=if_match)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("transactional", [False, True], ids=["idempotent", "transactional"])
def test_a_batch_counted_but_not_written_when_the_broker_died_is_written_by_the_retry(tmp_path, transactional):
    """Tansu 0.6 advances the producer's sequence (meta.json) and the high watermark before it
    writes the batch. Killed in between, the restarted broker answered the producer's retry
    with DUPLICATE_SEQUENCE_NUMBER, librdkafka reported the records delivered, and they were
    never in the log (an offset gap where they should be). The repair the broker proxy runs
    before every broker start (ObjectStore.repair_unfinished_produces) undoes the half-done
    produce, so the retry is written: every record exactly once, in order, no gap."""
    import asyncio
    import threading

    from runtime import kafka_config as kc
    from streaming.kafka import broker_store
    from streaming.kafka.broker import find_free_port

    store = _KillAtBatch(tmp_path / "store", "t")
    loop = asyncio.new_event_loop()
    store_port, port = find_free_port(), find_free_port()
    server = loop.run_until_complete(broker_store.start_server(store, "127.0.0.1", store_port))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    env = broker_store.client_env(f"http://127.0.0.1:{store_port}")

    def start_broker(log: str) -> EmbeddedBroker:
        assert store.repair_unfinished_produces() is not None  # what the proxy does before a start
        broker = EmbeddedBroker(
            port,
            storage_engine=broker_store.storage_url(),
            env=env,
            max_session_timeout_ms=None,  # bare Tansu on this in-process store
            log_path=tmp_path / log,
        ).start()
        store.broker_pid = broker.pid
        return broker

    broker = start_broker("b1.log")
    try:
        create_topics(admin_client(broker.bootstrap), {"t": TopicSpec(1, HOUR_MS)}, 1)
        conn = kc.KafkaConnection(bootstrap_servers=broker.bootstrap, metadata_recovery="none")
        failed: list = []
        cfg = kc.transactional_producer_config(conn, "t-txn") if transactional else kc.producer_config(conn)
        producer = Producer({**cfg, "on_delivery": lambda err, _m: failed.append(err) if err else None})
        if transactional:
            producer.init_transactions(30)
            producer.begin_transaction()

        def send(prefix: str) -> None:
            for i in range(5):
                producer.produce("t", f"{prefix}{i}".encode(), partition=0)

        send("a")
        assert producer.flush(30) == 0
        store.armed = True
        send("b")  # the broker dies at this batch's write
        deadline = time.monotonic() + 30
        while broker.is_running() and time.monotonic() < deadline:
            producer.poll(0.1)
        assert store.killed_at.endswith("00000000000000000005.batch") and not broker.is_running()
        broker.stop()

        broker = start_broker("b2.log")  # same port and store: the producer retries the batch
        assert producer.flush(60) == 0
        send("c")
        assert producer.flush(30) == 0
        if transactional:
            producer.commit_transaction(30)
        assert failed == []

        reader = Consumer(kc.consumer_config(conn, "check", read_committed=False, fetch_wait_max_ms=100))
        reader.assign([TopicPartition("t", 0, 0)])
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while len(got) < 15 and time.monotonic() < deadline:
            got += [(m.offset(), m.value()) for m in reader.consume(100, 0.5) if m.error() is None]
        reader.close()
        assert [v for _, v in got] == [f"{p}{i}".encode() for p in "abc" for i in range(5)]
        assert [o for o, _ in got] == list(range(15))  # written where the lost batch's offsets were
    finally:
        broker.stop()
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)

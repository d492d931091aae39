"""processed.* -> feature.<market>.signals.<exchange>: 1-second features in micro-batches.

Event time, per input partition. Each input partition P has a watermark wm(P) = max
exchange_ts seen on P - allowed_lateness. A record is late when its time is below its own
partition's watermark, or its window has already been closed; late records go to
dlq.features with the reason (counted), never into a window. Each source (the market and
exchange of one collector shard: source_of) has its own *close frontier*, and its windows
close when it passes their end: the minimum watermark over that source's partitions that are
not idle (an idle partition, silent for idle_timeout, would otherwise hold every window
open; when all of a source's are idle everything it buffered is closed). Sources are
independent clocks: one frontier over all of them let a source with nothing read yet fall
behind the others' event time, and lose every record it then brought as late. Idle requires
three things (live_partitions): nothing left to read in the partition, decided exactly from
the client's end-of-partition events (transaction markers understood, records of an open
upstream transaction counted); silence for idle_timeout of wall time; and silence for
idle_timeout of *event* time (the active partitions have moved that far past it). Silence
alone is wall time: a partition that has not been fetched for a while, or whose upstream
writes it behind another topic (the normalizer working through a backlog at replay speed
max), would be declared idle while older records are still to come, and they would be found
late: the output would depend on the replay's speed. One exception: a partition read to its
end whose newest record is more than the allowed lateness behind its own source's (a
book-snapshot partition after a snapshot) is idle without the waits. And before the frontier
skips an idle partition (or, every partition of its source quiet, closes what it buffered: the end of
input, which event time cannot decide), the stage upstream must be clear: the normalizer's
group has consumed every raw record created before that decision and nothing committed is
left unread in the skipped partitions (streaming/kafka/upstream.py;
FeatureProcessor._upstream_gate). Whatever reaches them later then comes after the records
the frontier was computed from. Closed windows are computed with the one feature spec
(features.compute) and produced in the same Kafka transaction as the input offsets that
completed them.

Why per-partition watermarks: after a restart the consumer may read one topic far ahead
of another; a watermark shared across partitions would then declare the slower topic's
records late. Per-partition rules make "late" a function of that partition's own order,
so the output depends on the input log, not on fetch interleaving.

State and restarts (docs/decisions.md, "Feature processor state"): every transaction also
writes a small *progress* record (input offset range, close frontier per source) to the processor's
state topic and commits the state topic's offset with the inputs' offsets, so the group's
committed offset there names the last committed progress record exactly — aborted records
(which the embedded broker does not hide) are never on that chain. Every
checkpoint_interval_s the transaction also carries a checkpoint (books, rolling values,
watermarks, which buffered offsets are open). A restart loads the newest checkpoint on the
chain and replays the committed batches after it with their recorded frontiers, output
suppressed; the state is then exactly the one the crashed process had committed, and the
rows it recomputes are byte-identical to any aborted copies (same event_id per window).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import sys
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from features.compute import FeatureState, compute_features
from features.inputs import FEATURE_EVENT_TYPES, InputColumns, events_from_envelopes
from features.records import CONTENT_TYPE, encode_row, table_rows
from features.spec import WINDOW_US
from runtime import kafka_config as kc
from runtime.dlq import DlqCounters, dead_letter, record_source
from runtime.service_cli import LoopSettings, service_main
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import Exchange, Market, event_type_from_pb
from schemas.serde import SCHEMA_VERSION_NUMBER, SerdeError, check_header_version, decode
from schemas.topics import DlqStage, Stage, all_event_topics, event_topic, feature_topic, parse_event_topic
from streaming.kafka.io import TP, read_range
from streaming.kafka.topic_admin import create_topics
from streaming.kafka.topic_config import DAY_MS, TopicSpec
from streaming.kafka.upstream import APPEND_MARGIN_S, BackgroundClearance, UpstreamClearance, parse_raw_before
from streaming.processors import metrics
from streaming.processors.txn_loop import OutRecord, TransactionalLoop

log = logging.getLogger(__name__)

NEG_INF = -(1 << 62)
CHUNK_BYTES = 700_000
STATE_TOPIC_SPEC = TopicSpec(1, 7 * DAY_MS, -1, extra={"cleanup.policy": "delete"})
#: event type numbers of the feature inputs, and their names (for the DLQ reasons)
_ET_NAME = {et.pb: et for et in FEATURE_EVENT_TYPES}
_FEATURE_CODES = frozenset(_ET_NAME)


#: The normalizer's consumer group (streaming.processors.normalizer.NormalizerService's default): the stage
#: upstream of processed.*, whose progress through raw.* decides idleness (streaming/kafka/upstream.py).
NORMALIZER_GROUP = "ticklake-normalizer"
#: How often a pending upstream clearance is probed (a probe: two short-lived readers, ~10-30 ms).
UPSTREAM_PROBE_EVERY_S = 0.1
#: How long after the moment a deferred probe becomes possible the poll returns (clock slack).
PROBE_DUE_SLACK_S = 0.002


def state_topic(name: str) -> str:
    """Where processor `name` keeps progress and checkpoints (one partition, ordered)."""
    return f"state.features.{name}"


def feature_group(name: str) -> str:
    """Consumer group (and transactional id) of processor `name`."""
    return f"ticklake-features-{name}"


def input_topics(pairs: Iterable[tuple[Market, Exchange]]) -> list[str]:
    return [event_topic(Stage.PROCESSED, m, et, x) for m, x in pairs for et in FEATURE_EVENT_TYPES]


def _tp_key(tp: TP) -> str:
    return f"{tp[0]}|{tp[1]}"


def _key_tp(s: str) -> TP:
    t, p = s.rsplit("|", 1)
    return t, int(p)


def _ranges(offsets: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for o in sorted(offsets):
        if out and out[-1][1] == o:
            out[-1][1] = o + 1
        else:
            out.append([o, o + 1])
    return out


@dataclass(slots=True)
class Window:
    """One open window's inputs: its input columns, appended as each record is offered
    (features.inputs.InputColumns, the one definition of the input table), and which records
    they came from (the checkpoint's `buffered` offsets)."""

    cols: InputColumns = field(default_factory=InputColumns)
    tps: list[TP] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def add(self, env: pb.Envelope, code: int, tp: TP, offset: int) -> None:
        self.cols.append(env, code)
        self.tps.append(tp)
        self.offsets.append(offset)


_Envelope = pb.Envelope


#: A progress record's or checkpoint's frontier key for "every source, at least": what a
#: record written before frontiers were kept per source holds (docs/decisions.md).
ALL_SOURCES = "*"


def frontier_map(recorded: int | dict[str, int]) -> dict[str, int]:
    """A recorded close frontier as {source: frontier}; an int (the one frontier of records
    written before there was one per source) applies to every source."""
    return {ALL_SOURCES: recorded} if isinstance(recorded, int) else recorded


def closed_through(recorded: int | dict[str, int], end_us: int, sources: Iterable[str]) -> bool:
    """Whether a recorded frontier closed every window of `sources` that ends by `end_us`."""
    frontiers = frontier_map(recorded)
    base = frontiers.get(ALL_SOURCES, NEG_INF)
    return all(max(frontiers.get(s, NEG_INF), base) >= end_us for s in sources)


def source_key(market: Market | str, exchange: Exchange | str) -> str:
    """A source's name: its market and exchange as --pairs spells them ('spot:binance')."""
    return f"{Market(market).value}:{Exchange(exchange).value}"


@functools.cache
def source_of(tp: TP) -> str:
    """The source a processed.* partition's records come from: the market and exchange its
    collector shard serves, spelled as in --pairs ('spot:binance'); a topic of another shape
    is its own source. Each source has its own close frontier: sources are independent
    clocks (another venue, another shard, a capture of another year)."""
    try:
        t = parse_event_topic(tp[0])
    except ValueError:
        return tp[0]
    return source_key(t.market, t.exchange)


@dataclass(slots=True)
class Engine:
    """The event-time core: buffers, watermarks, frontiers, spec state. No Kafka in here.

    One close frontier per source (source_of): a window of one source closes on that
    source's partitions only. Features are per instrument and an instrument belongs to one
    source, so closing the sources independently changes no row; one frontier over all
    sources made a source whose records were not in yet (idle) follow the others' event
    time, and when they came they were all late (a 2022 capture replayed beside 2024 ones;
    docs/decisions.md, "A close frontier per source")."""

    allowed_lateness_us: int = 500_000
    state: FeatureState = field(default_factory=FeatureState)
    buffers: dict[str, dict[int, Window]] = field(default_factory=dict)  # source -> window_start -> inputs
    maxts: dict[TP, int] = field(default_factory=dict)
    frontiers: dict[str, int] = field(default_factory=dict)  # per source
    base: int = NEG_INF  # every source's frontier is at least this (records with one frontier)
    late: int = 0
    dlq: DlqCounters = field(default_factory=lambda: DlqCounters(DlqStage.FEATURES.value))

    def frontier_of(self, source: str) -> int:
        f = self.frontiers.get(source, NEG_INF)
        return f if f > self.base else self.base

    @property
    def frontier(self) -> int:
        """The oldest frontier of any source seen: every window before it is closed."""
        known = self.sources()
        return min((self.frontier_of(s) for s in known), default=self.base)

    def sources(self) -> set[str]:
        return {*self.frontiers, *self.buffers, *(source_of(tp) for tp in self.maxts)}

    def frontier_record(self) -> dict[str, int]:
        """The frontiers as progress records and checkpoints keep them."""
        out = {ALL_SOURCES: self.base} if self.base > NEG_INF else {}
        out.update((s, f) for s, f in self.frontiers.items() if f > self.base)
        return out

    def closed_through(self, end_us: int, sources: Iterable[str]) -> bool:
        return closed_through(self.frontier_record(), end_us, sources)

    def offer(self, tp: TP, offset: int, value: bytes | None, headers) -> tuple[str | None, pb.Envelope | None]:
        """Take one input record; returns (dlq reason or None, the envelope if buffered).

        The common record (a readable envelope of this schema version, with an id, a payload
        and a feature event type) is accepted in one pass; any other goes through _checked,
        which decides it as decode and the type checks do (the same DLQ reasons), so both
        paths accept exactly the same records. The schema version is decode's: the body's
        (Envelope.schema_version) when it states one, else the ticklake-schema header.
        `headers`: a list, None, or a callable returning one (a consumed message's bound
        .headers), called only for a body that states no version or is refused."""
        env = _Envelope()
        try:
            env.ParseFromString(value)
            code = env.event_type
            ok = code in _FEATURE_CODES and env.event_id and env.WhichOneof("payload") is not None
            if ok and env.schema_version != SCHEMA_VERSION_NUMBER:
                ok = False
                if env.schema_version == 0:  # stated by the header only (or not at all)
                    check_header_version(headers)  # raises SerdeError: _checked gives the reason
                    ok = True
        except Exception:  # noqa: BLE001 - _checked names the reason
            ok = False
        if not ok:
            reason, env = _checked(value, headers)
            if reason is not None:
                return reason, None
            code = env.event_type
        ts = env.exchange_ts
        m = self.maxts.get(tp)
        if m is not None and ts < m - self.allowed_lateness_us:
            self.late += 1
            return (
                f"late: {env.symbol} {_ET_NAME[code]} at {ts} is {m - ts} µs behind the newest record of "
                f"{tp[0]}[{tp[1]}] (allowed lateness {self.allowed_lateness_us} µs)"
            ), None
        ws = ts - ts % WINDOW_US
        source = source_of(tp)
        frontier = self.frontier_of(source)
        if ws + WINDOW_US <= frontier:
            self.late += 1
            return (
                f"late: {env.symbol} {_ET_NAME[code]} at {ts} falls in window {ws}, already closed "
                f"(frontier {frontier} of {source})"
            ), None
        if m is None or ts > m:
            self.maxts[tp] = ts
        self._window(source, ws).add(env, code, tp, offset)
        return None, env

    def _window(self, source: str, ws: int) -> Window:
        windows = self.buffers.get(source)
        if windows is None:
            windows = self.buffers[source] = {}
        w = windows.get(ws)
        if w is None:
            w = windows[ws] = Window()
        return w

    def propose_frontier(self, live: Iterable[TP] | None) -> dict[str, int]:
        """Each source's close frontier from its non-idle partitions (`live`): the lowest
        watermark among them; a source with none (None or []: nothing is live) closes
        everything it buffers."""
        by_source: dict[str, list[TP]] = {}
        for tp in live or ():
            by_source.setdefault(source_of(tp), []).append(tp)
        out: dict[str, int] = {}
        for s in self.sources() | by_source.keys():
            cur = self.frontier_of(s)
            parts = by_source.get(s)
            if parts is None:
                windows = self.buffers.get(s)
                out[s] = max(cur, max(windows) + WINDOW_US) if windows else cur
                continue
            f = min(NEG_INF if (m := self.maxts.get(tp)) is None else m - self.allowed_lateness_us for tp in parts)
            out[s] = max(cur, f)
        return out

    def close(self, frontiers: dict[str, int] | int) -> list[dict]:
        """Advance each source to its frontier (an int or ALL_SOURCES: every source); compute
        and return the rows of every window that closes."""
        for s, f in frontier_map(frontiers).items():
            if s == ALL_SOURCES:
                self.base = max(self.base, f)
            elif f > self.frontiers.get(s, NEG_INF):
                self.frontiers[s] = f
        due: list[tuple[int, str]] = []
        for s, windows in self.buffers.items():
            f = self.frontier_of(s)
            due += [(ws, s) for ws in windows if ws + WINDOW_US <= f]
        if not due:
            return []
        due.sort()
        inputs = InputColumns.table_of([self.buffers[s].pop(ws).cols for ws, s in due])
        for s in {s for _, s in due}:
            if not self.buffers[s]:
                del self.buffers[s]
        table, _ = compute_features(inputs, self.state)
        return table_rows(table)

    def windows(self) -> Iterable[tuple[str, int, Window]]:
        for s, windows in self.buffers.items():
            for ws, w in windows.items():
                yield s, ws, w

    # -- checkpoint payload ---------------------------------------------------------------

    def snapshot(self, offsets: dict[TP, int]) -> dict:
        by_tp: dict[TP, list[int]] = {}
        for _, _, w in self.windows():
            for tp, off in zip(w.tps, w.offsets):
                by_tp.setdefault(tp, []).append(off)
        return {
            "lateness": self.allowed_lateness_us,
            "offsets": {_tp_key(tp): o for tp, o in offsets.items()},
            "frontier": self.frontier_record(),
            "maxts": {_tp_key(tp): m for tp, m in self.maxts.items()},
            "features": self.state.to_state(),
            "buffered": {_tp_key(tp): _ranges(offs) for tp, offs in by_tp.items()},
        }

    def restore(self, ckpt: dict, fetch: Callable[[TP, int, int], Iterable[Message]]) -> None:
        self.allowed_lateness_us = ckpt.get("lateness", self.allowed_lateness_us)
        recorded = frontier_map(ckpt["frontier"])
        self.base = recorded.get(ALL_SOURCES, NEG_INF)
        self.frontiers = {s: f for s, f in recorded.items() if s != ALL_SOURCES}
        self.maxts = {_key_tp(k): v for k, v in ckpt["maxts"].items()}
        self.state = FeatureState.from_state(ckpt["features"])
        self.buffers = {}
        for k, ranges in ckpt["buffered"].items():
            tp = _key_tp(k)
            wanted = set()
            for a, b in ranges:
                wanted.update(range(a, b))
            for m in fetch(tp, ranges[0][0], ranges[-1][1]):
                if m.offset() in wanted:
                    env = decode(m.value(), m.headers())
                    ts = env.exchange_ts
                    self._window(source_of(tp), ts - ts % WINDOW_US).add(env, env.event_type, tp, m.offset())


def _checked(value: bytes | None, headers) -> tuple[str | None, pb.Envelope | None]:
    """decode and the event type checks: (the DLQ reason, None) or (None, the envelope)."""
    try:
        env = decode(value, headers)
    except SerdeError as exc:
        return f"decode: {exc}", None
    try:
        et = event_type_from_pb(env.event_type)
    except (KeyError, ValueError):
        return "mismatch: unspecified event type", None
    if et not in FEATURE_EVENT_TYPES:
        return f"mismatch: {et} is not a feature input", None
    return None, env


def live_partitions(
    assignment: Iterable[TP],
    last_seen: dict[TP, float],
    now: float,
    idle_s: float,
    caught_up: set[TP],
    maxts: dict[TP, int] | None = None,
    behind_us: int | None = None,
    source: Callable[[TP], object] | None = None,
) -> list[TP]:
    """Partitions that hold the close frontier: all but the idle ones.

    A partition is *quiet* when it has nothing left to read (`caught_up`, exact: see
    FeatureProcessor._caught_up) and nothing arrived for ``idle_s`` of wall time. A quiet
    partition is idle only when it is quiet in event time too: the partitions still active
    have moved at least ``idle_s`` of event time past its newest record (or it never had
    one). Live, both clocks agree. At replay speed max the upstream normalizer may write one
    topic seconds of event time ahead of another (it works through its backlog a fetch
    chunk at a time): the lagging partition's next records are then still behind the
    others, and declaring it idle on wall-clock silence alone would close their window
    before they arrive (one missing 1 s window in the acceptance test). When every
    partition is quiet the input has ended for now: [] (the caller closes what is buffered).
    With ``source``, all of this holds per source (each has its own close frontier): the
    partitions of a source are compared with each other only, and a source whose partitions
    are all quiet has none in the result (the caller closes what that source buffers).

    *Left behind by its source* (``behind_us``, the allowed lateness, with ``source``): a
    caught-up partition whose newest record (if it ever had one) is more than ``behind_us`` of
    event time older than the newest record taken from its source (the same market and exchange: one
    collector shard's order, in a replay) is idle without the wall-clock wait. A
    book-snapshot partition gets one record now and then; holding the frontier at that
    record's watermark for ``idle_s`` of wall time after each one delayed every window
    closing in that second (the latency p99, docs/decisions.md). Its next record can only be
    one not yet normalized or not yet fetched, which the caller's upstream gate rules out
    before the frontier skips it (FeatureProcessor._upstream_gate); after that, it comes from
    raw records its source wrote later, whose event time the allowed lateness bounds as it
    does within a partition. Only the same source: another venue or market (another shard)
    may run seconds behind at replay speed max, and its partitions keep the wall-clock wait."""
    assignment = list(assignment)
    if source is None:
        return _live_among(assignment, last_seen, now, idle_s, caught_up, maxts or {}, None)
    groups: dict[object, list[TP]] = {}
    for tp in assignment:
        groups.setdefault(source(tp), []).append(tp)
    live: set[TP] = set()
    for parts in groups.values():
        live.update(_live_among(parts, last_seen, now, idle_s, caught_up, maxts or {}, behind_us))
    return [tp for tp in assignment if tp in live]


def _live_among(
    parts: list[TP],
    last_seen: dict[TP, float],
    now: float,
    idle_s: float,
    caught_up: set[TP],
    maxts: dict[TP, int],
    behind_us: int | None,
) -> list[TP]:
    """live_partitions for the partitions of one source."""
    quiet = {tp for tp in parts if tp in caught_up and now - last_seen.get(tp, now) > idle_s}
    active = [tp for tp in parts if tp not in quiet]
    if not active:
        return []
    seen = [maxts[tp] for tp in active if tp in maxts]
    if not seen:
        return active
    reference = min(seen) - int(idle_s * 1_000_000)
    live = [tp for tp in parts if tp not in quiet or (tp in maxts and maxts[tp] > reference)]
    if behind_us is None:
        return live
    newest = max((maxts[tp] for tp in parts if tp in maxts), default=NEG_INF)
    kept = [tp for tp in live if tp not in caught_up or maxts.get(tp, NEG_INF) >= newest - behind_us]
    return kept or live  # never [] here: the source's newest partition is not behind it ([] closes it all)


def _window_start(row: dict) -> int:
    return row["exchange_ts"]


def feature_records(rows: list[dict]) -> list[OutRecord]:
    out = []
    for r in rows:
        out.append(
            OutRecord(
                feature_topic(r["market"], r["exchange"]),
                encode_row(r),
                r["symbol"].encode(),
                [("content-type", CONTENT_TYPE.encode()), ("event-id", r["event_id"].encode())],
                r["exchange_ts"] // 1000,
            )
        )
    return out


# -- state topic records ------------------------------------------------------------------


def _enc(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def checkpoint_records(ckpt_id: str, payload: dict) -> list[bytes]:
    blob = zlib.compress(_enc(payload), 6)
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    return [
        _enc({"t": "ckpt", "id": ckpt_id, "i": i, "n": len(chunks), "data": base64.b64encode(c).decode()})
        for i, c in enumerate(chunks)
    ]


def assemble_checkpoint(parts: list[dict]) -> dict:
    parts = sorted(parts, key=lambda p: p["i"])
    if not parts or len(parts) != parts[0]["n"]:
        raise ValueError("incomplete checkpoint")
    return json.loads(zlib.decompress(b"".join(base64.b64decode(p["data"]) for p in parts)))


@dataclass(slots=True)
class Chain:
    """The committed history since the newest checkpoint on it."""

    checkpoint: dict | None  # assembled payload, or None (replay from the beginning)
    batches: list[dict]  # progress records after (and including) the checkpoint's batch


def load_state_records(consumer: Consumer, topic: str, start: int, end: int) -> dict[int, dict]:
    return {m.offset(): json.loads(m.value()) for m in read_range(consumer, (topic, 0), start, end)}


def committed_chain(
    consumer: Consumer,
    topic: str,
    committed: int,
    *,
    before: dict[TP, int] | None = None,
    frontier_at_most: int | None = None,
    frontier_sources: Iterable[str] | None = None,
) -> Chain:
    """Walk back from the last committed progress record (offset committed-1) to the newest
    checkpoint written in a committed batch. Replays ask for the newest checkpoint whose
    input offsets are all <= `before` and whose close frontier is <= `frontier_at_most`
    (so every window from there on is still open in it and will be emitted again): the
    frontier of each of `frontier_sources` (default: every source in it)."""
    recs = load_state_records(consumer, topic, 0, committed)
    chain: list[dict] = []
    off = committed - 1
    while off is not None and off >= 0:
        rec = recs.get(off)
        if rec is None or rec.get("t") != "progress":
            raise ValueError(f"state topic {topic} offset {off} is not a progress record")
        chain.append(rec)
        off = rec.get("prev")
    chain.reverse()
    for i in range(len(chain) - 1, -1, -1):
        ck = chain[i].get("ckpt")
        if ck is None:
            continue
        parts = [recs[o] for o in ck["offsets"]]
        payload = assemble_checkpoint(parts)
        if before is not None and any(
            _key_tp(k) in before and v > before[_key_tp(k)] for k, v in payload["offsets"].items()
        ):
            continue
        if frontier_at_most is not None:
            recorded = frontier_map(payload["frontier"])
            wanted = recorded.keys() if frontier_sources is None else {ALL_SOURCES, *frontier_sources}
            if max((recorded.get(s, NEG_INF) for s in wanted), default=NEG_INF) > frontier_at_most:
                continue
        return Chain(payload, chain[i:])
    return Chain(None, chain)


def probe_could_close(proposals: list[tuple[float, int]], held: int, frontier: int, buffered: Iterable[int]) -> float:
    """The oldest stamp among `proposals` (stamp, frontier proposed) whose clearance would
    close a buffered window (start in `buffered`) that `held` keeps open, the frontier capped
    at `frontier` as the gate does; +inf when none would. The gate probes only once this is
    older than the append margin: a probe answers at most its start less the margin, and
    one that clears only proposals closing nothing (the previous window's, left pending)
    costs ~50 ms of the loop and, by the probe interval, delays the probe that could close
    the next window by 0.1 s (docs/decisions.md, "Latency rows: where the time beyond the
    floor goes")."""
    ends = [ws + WINDOW_US for ws in buffered if ws + WINDOW_US > held]
    if not ends:
        return float("inf")
    first_end = min(ends)
    return min((t for t, f in proposals if min(f, frontier) >= first_end), default=float("inf"))


class FeatureProcessor(TransactionalLoop):
    name = "feature-processor"
    partition_eof = True  # the exact caught-up test (_caught_up) reads end-of-partition events

    def __init__(
        self,
        conn: kc.KafkaConnection,
        pairs: list[tuple[Market, Exchange]],
        *,
        processor_name: str = "default",
        allowed_lateness_ms: int = 500,
        idle_timeout_ms: int = 2000,
        checkpoint_interval_s: float = 10.0,
        upstream_group: str | None = NORMALIZER_GROUP,
        **kw,
    ):
        # Each transaction writes a progress record; a floor on the batch interval bounds
        # the state topic's growth (~10 small records/s) at a small latency cost.
        kw.setdefault("batch_min_ms", 100)
        self.processor_name = processor_name
        super().__init__(
            conn,
            group_id=feature_group(processor_name),
            transactional_id=feature_group(processor_name),
            input_topics=input_topics(pairs),
            **kw,
        )
        self.pairs = pairs
        self.allowed_lateness_us = allowed_lateness_ms * 1000
        self.engine = Engine(self.allowed_lateness_us)
        self.idle_timeout_s = idle_timeout_ms / 1000
        self.checkpoint_interval_s = checkpoint_interval_s
        self.state_topic = state_topic(processor_name)
        self.last_seen: dict[TP, float] = {}
        self.eof: dict[TP, int] = {}  # end offset the client's fetcher last reported reaching
        self.next_offset: dict[TP, int] = {}  # offset after the newest record taken from the partition
        self.upstream_group = upstream_group
        self.upstream: UpstreamClearance | None = None
        self.clearance: BackgroundClearance | None = None  # the upstream's probe, off this thread
        # per source: (stamp, frontier proposed then), not yet cleared
        self._proposals: dict[str, list[tuple[float, int]]] = {}
        # Proposal stamps (_proposal_stamp): when the last poll returned, or tighter, the raw
        # records' bound the normalizer writes (RAW_BEFORE_HEADER) where it covers every partition.
        self._taken_at: float | None = None  # when the last poll returned (None: consumed by process_batch)
        self._batch_taken_at = 0.0
        self._raw_before = float("-inf")  # newest RAW_BEFORE_HEADER time taken
        self._covered: dict[TP, bool] = {}  # the last record taken from the partition carried one
        self._writer: dict[TP, str] = {}  # the header's writer per partition
        self._mixed: set[TP] = set()  # partitions written by two writers: never covered
        self._last_probe = 0.0
        self._probe_due: float | None = None  # when the next probe could close a window (poll_due)
        self._backlog = False  # the last batch was a full one: records are waiting
        self.last_progress: int | None = None
        self._pending_ckpt: dict | None = None
        self._last_ckpt_time = 0.0
        self._batch_start: dict[TP, int] = {}
        self._batch_end: dict[TP, int] = {}
        self._frontier_changed = False
        self._dirty = False
        self._seq = 0

    # -- start / restore -------------------------------------------------------------------

    def ensure_state_topic(self) -> None:
        admin = AdminClient(kc.admin_config(self.conn))
        create_topics(admin, {self.state_topic: STATE_TOPIC_SPEC}, replication_factor=1)

    def start(self) -> None:
        # pyarrow imports pandas on the first pa.array of a Python list (0.2-1 s on this machine)
        # and acero/dataset on the first group_by: pay both before the loop starts, not at the
        # first window close (its row's latency).
        events_from_envelopes([])
        import pyarrow.acero  # noqa: F401

        self.ensure_state_topic()
        if self.upstream_group is not None:
            raw = sorted({t for m, x in self.pairs for t in all_event_topics(Stage.RAW, [x], [m])})
            self.upstream = UpstreamClearance(self.conn, self.upstream_group, raw)
            self.clearance = BackgroundClearance(self.upstream)
            # The first probe also creates the group view's client and reads the metadata: 0.3-0.5 s
            # on this machine (0.04-0.06 s later), paid by the first window close if left to it.
            try:
                self.upstream.cleared_until()
            except KafkaException as exc:
                log.warning("upstream clearance warm-up probe failed: %s", exc)
        super().start()

    def close(self) -> None:
        if self.clearance is not None:
            self.clearance.close()  # closes self.upstream too
            self.clearance = self.upstream = None
        super().close()

    def summary(self) -> str:
        return f"{super().summary()} late={self.engine.late} dlq={dict(self.engine.dlq.counts)}"

    def _reader(self) -> Consumer:
        return Consumer(
            kc.consumer_config(self.conn, f"{self.group_id}-restore", read_committed=True, fetch_wait_max_ms=10)
        )

    def warm_up(self, committed: dict[TP, int | None]) -> None:
        st = self.consumer.committed([TopicPartition(self.state_topic, 0)], timeout=10)[0].offset
        now = time.monotonic()
        self.last_seen = dict.fromkeys(self.assignment, now)
        self._last_ckpt_time = now
        if st is None or st < 0:
            if any(v is not None for v in committed.values()):
                raise RuntimeError(
                    f"{self.group_id} has committed input offsets but no state in "
                    f"{self.state_topic}; refusing to guess (reset the group)"
                )
            return
        reader = self._reader()
        try:
            chain = committed_chain(reader, self.state_topic, st)
            replay_chain(self.engine, chain, reader, emit=None)
        finally:
            reader.close()
        self.engine.allowed_lateness_us = self.allowed_lateness_us  # the replay used the recorded values
        self.last_progress = st - 1
        self._seq = chain.batches[-1]["seq"] if chain.batches else 0
        end = {_key_tp(k): v for k, v in chain.batches[-1]["end"].items()} if chain.batches else {}
        for tp, off in committed.items():
            if off is not None and end.get(tp, off) != off:
                raise RuntimeError(f"state chain ends at {end.get(tp)} for {tp} but the group committed {off}")
        log.info(
            "restored feature state: %d batches replayed from %s",
            len(chain.batches),
            "checkpoint" if chain.checkpoint else "the beginning",
        )

    # -- batches -----------------------------------------------------------------------------

    def _poll_batch(self) -> list[Message]:
        msgs = super()._poll_batch()
        self._taken_at = time.time()  # every record taken so far was created (raw) before this
        return msgs

    def _note_raw_before(self, lasts: dict[TP, Message]) -> None:
        """Coverage by the normalizer's RAW_BEFORE_HEADER, from the last record taken per partition."""
        for tp, m in lasts.items():
            got = parse_raw_before(m.headers())
            if got is None:
                self._covered[tp] = False
                continue
            writer, before = got
            if self._writer.setdefault(tp, writer) != writer and tp not in self._mixed:
                self._mixed.add(tp)
                log.warning("%s[%d] has two writers of %s: proposals stamped with wall time", *tp, writer)
            self._covered[tp] = tp not in self._mixed
            if before > self._raw_before:
                self._raw_before = before

    def _proposal_stamp(self) -> float:
        """A time after the raw CreateTime of every record taken so far: what the clearance
        must pass before a frontier proposed now may skip idle partitions. The end of the last
        poll always is one (the raw records behind what it returned were created before).
        Tighter, the newest RAW_BEFORE_HEADER taken, when the last record taken from every
        partition that holds a record (or restored state) carried one: each of the
        normalizer's batches puts it on its last record per output partition, as the running
        maximum of its batch start times, so it bounds the records before it in that
        partition too. Then a proposal is not held until the normalizer has also consumed
        the raw records created while its output travelled here (its lag counted twice)."""
        if self._raw_before > float("-inf") and all(
            self._covered.get(tp, tp not in self.engine.maxts) for tp in self.assignment
        ):
            return min(self._raw_before, self._batch_taken_at)
        return self._batch_taken_at

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        now = time.monotonic()
        # records handed over without _poll_batch (a test, a replay): taken now
        self._batch_taken_at = self._taken_at if self._taken_at is not None else time.time()
        self._taken_at = None
        if self._dirty and now - self._last_ckpt_time >= self.checkpoint_interval_s:
            self._dirty = False
            self._pending_ckpt = self.engine.snapshot({tp: self.positions.get(tp, 0) for tp in self.assignment})
            self._last_ckpt_time = now
        self._batch_start = {tp: self.positions.get(tp, 0) for tp in self.assignment}
        self._backlog = len(msgs) >= self.batch_max_records  # the poll stopped at its record cap
        out: list[OutRecord] = []
        batch_end: dict[TP, int] = {}  # offset after the newest record taken, per partition
        offer = self.engine.offer
        lasts: dict[TP, Message] = {}
        for m in msgs:
            tp = (m.topic(), m.partition())
            off = m.offset()
            batch_end[tp] = off + 1
            lasts[tp] = m
            value = m.value()
            reason, _ = offer(tp, off, value, m.headers)  # headers read only if the body states no version
            if reason is not None:
                self.engine.dlq.count(reason)
                if reason.startswith("late"):
                    metrics.LATE.labels(self.name).inc()
                dl = dead_letter(DlqStage.FEATURES, reason, source=record_source(*tp, off), raw=value)
                out.append(OutRecord(dl.topic, dl.value, dl.key, dl.headers))
        self._batch_end = batch_end
        self._note_raw_before(lasts)
        self.next_offset.update(batch_end)
        self.last_seen.update(dict.fromkeys(batch_end, now))
        live = live_partitions(
            self.assignment,
            self.last_seen,
            now,
            self.idle_timeout_s,
            self._caught_up(),
            self.engine.maxts,
            self.engine.allowed_lateness_us,
            source_of,
        )
        before = self.engine.frontier_record()
        frontiers = self.engine.propose_frontier(live)
        if len(live) < len(self.assignment):
            live_set = set(live)
            frontiers = self._upstream_gate(frontiers, [tp for tp in self.assignment if tp not in live_set])
        rows = self.engine.close(frontiers)
        if rows:
            wall = time.time()
            for r in rows:
                metrics.FEATURE_DELAY.labels(self.name).observe(max(0.0, wall - r["last_event_ts"] / 1e6))
        # Published window by window (compute order is instrument by instrument): a feature
        # topic holds one source, whose windows close in order, so each partition's record
        # timestamps never go back and a search by time (recompute) lands exactly.
        rows.sort(key=_window_start)
        out += feature_records(rows)
        after = self.engine.frontier_record()
        self._frontier_changed = after != before
        if self._frontier_changed:
            metrics.WATERMARK.labels(self.name).set(self.engine.frontier)
            for source in self.engine.sources():
                if after.get(source) != before.get(source):
                    metrics.SOURCE_FRONTIER.labels(self.name, source).set(self.engine.frontier_of(source))
        if msgs or self._frontier_changed:
            self._dirty = True
        return out

    def _upstream_gate(self, proposed: dict[str, int], idle: list[TP]) -> dict[str, int]:
        """The frontiers the `idle` partitions may let through: a source's `proposed` frontier
        (which skips its idle partitions) only as far as the upstream has been found clear,
        else the frontier that holds every partition of it. A quiet partition's next records
        can only come from raw records not yet normalized (or normalized but not yet fetched
        here). So: note (T, frontier proposed at T) per source at every batch; a probe finds
        the time U before which the normalizer's group has consumed every raw record (its
        transactions make the output visible with the offsets), then a direct read finds no
        committed record after what this processor had taken from the idle partitions when it
        asked. Whatever reaches them later comes from raw records created after U, i.e. after
        every record behind a frontier proposed at any T < U: close up to min(newest such
        frontier, frontier now). Keeping every proposal and asking "until when" (not "is T
        clear", one T per probe) closes a window one probe after its frontier was proposed,
        not one probe interval after the previous clearance. One probe serves every source.
        Asked only when skipping the idle partitions would close a buffered window (never on
        an idle stack), and only when a probe could clear a proposal: T is not a wall time but
        a bound on the raw CreateTime of what was taken (_proposal_stamp), and a probe answers
        at most its start less the append margin. The probe runs on its own thread
        (BackgroundClearance) while this loop goes on taking records; its answer is used by
        the first batch after it, for the sources whose idle partitions it checked."""
        held = self.engine.propose_frontier(self.assignment)
        if self.clearance is None:
            return proposed
        out = dict(held)
        candidates: dict[str, dict[int, Window]] = {}  # source -> its buffered windows
        stamp = None
        for s, f in proposed.items():
            h = out.setdefault(s, self.engine.frontier_of(s))
            windows = self.engine.buffers.get(s, {})
            if not any(h < ws + WINDOW_US <= f for ws in windows):
                continue
            candidates[s] = windows
            props = self._proposals.setdefault(s, [])
            if not props or f > props[-1][1]:
                stamp = self._proposal_stamp() if stamp is None else stamp
                props.append((stamp, f))
        answer = self.clearance.answer()
        if answer is not None and answer.clear and answer.until is not None:
            for s in candidates:
                if not all(tp in answer.starts for tp in idle if source_of(tp) == s):
                    continue  # a partition went idle after the probe was asked: not checked
                got = [f for t, f in self._proposals[s] if t < answer.until]
                if got:
                    self._proposals[s] = [(t, f) for t, f in self._proposals[s] if t >= answer.until]
                    out[s] = max(out[s], min(max(got), proposed[s]))
        waiting = {}  # source -> the oldest stamp whose clearance closes a window
        for s, windows in candidates.items():
            oldest = probe_could_close(self._proposals[s], out[s], proposed[s], windows)
            if oldest != float("inf"):
                waiting[s] = oldest
        now = time.monotonic()
        if not self.clearance.busy:
            if not waiting:
                return out
            # cleared_until() <= its start - APPEND_MARGIN_S: a probe before then could close none
            due = max(
                self._last_probe + UPSTREAM_PROBE_EVERY_S, now + min(waiting.values()) + APPEND_MARGIN_S - time.time()
            )
            if due > now:
                self._probe_due = due + PROBE_DUE_SLACK_S  # the next poll returns by then (poll_due)
                return out
            self._last_probe = now
            self.clearance.ask(
                {tp: max(self.eof.get(tp, 0), self.next_offset.get(tp, 0)) for tp in idle if source_of(tp) in waiting}
            )
        if not self._backlog:
            # the next poll returns about when the probe should have answered (through a backlog
            # the batches are short anyway, and cutting them adds transactions)
            started = self.clearance.started_at
            self._probe_due = max(now, started + self.clearance.last_took_s) + PROBE_DUE_SLACK_S
        return out

    def on_partition_eof(self, tp: TP, offset: int) -> None:
        self.eof[tp] = offset

    def poll_due(self) -> float | None:
        """When the probe the last batch deferred becomes possible (once: each batch's gate
        sets it again), so the poll ends then rather than at its batch limits."""
        due, self._probe_due = self._probe_due, None
        return due

    def _caught_up(self) -> set[TP]:
        """Partitions with nothing left to read, exactly: the client's fetcher reported the
        partition's end (an end-of-partition event; its fetch position passes transaction
        markers, which occupy offsets but are never delivered, so a trailing marker cannot
        keep a partition "behind" forever), no record was taken from it after that, and the
        newest high watermark the client saw is not beyond that end (records of a
        transaction still open upstream count: the embedded broker's fetch responses carry
        the high watermark including them, so the partition is not quiet while they may
        still be committed). No wall-clock escape: a partition that is behind stays held."""
        out: set[TP] = set()
        if self.consumer is None:
            return out
        for tp in self.assignment:
            end = self.eof.get(tp)
            if end is None or end < self.next_offset.get(tp, 0):
                continue
            _, hi = self.consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            if hi <= end:
                out.add(tp)
        return out

    def wants_txn(self, msgs, outs) -> bool:
        return bool(msgs or outs or self._frontier_changed or self._pending_ckpt is not None)

    def finalize_txn(self, producer: Producer, msgs: list[Message], outs: list[OutRecord]) -> list[TopicPartition]:
        end = {**self._batch_start, **self._batch_end}  # records of a partition come in offset order
        delivered: dict[int, int] = {}

        def on_delivery(i):
            def cb(err, msg):
                if err is None:
                    delivered[i] = msg.offset()

            return cb

        ckpt_ref = None
        if self._pending_ckpt is not None:
            self._seq_ckpt = f"{self.processor_name}-{self._seq + 1}"
            parts = checkpoint_records(self._seq_ckpt, self._pending_ckpt)
            for i, value in enumerate(parts):
                producer.produce(self.state_topic, value=value, key=b"ckpt", partition=0, on_delivery=on_delivery(i))
            producer.flush(60)
            if len(delivered) != len(parts):
                raise RuntimeError("checkpoint records were not delivered")
            ckpt_ref = {"offsets": [delivered[i] for i in range(len(parts))]}
        progress = {
            "t": "progress",
            "seq": self._seq + 1,
            "prev": self.last_progress,
            "start": {_tp_key(tp): o for tp, o in self._batch_start.items()},
            "end": {_tp_key(tp): o for tp, o in end.items()},
            "frontier": self.engine.frontier_record(),
            "lateness": self.engine.allowed_lateness_us,
            "ckpt": ckpt_ref,
        }
        delivered.clear()
        producer.produce(
            self.state_topic, value=_enc(progress), key=b"progress", partition=0, on_delivery=on_delivery(-1)
        )
        producer.flush(60)
        if -1 not in delivered:
            raise RuntimeError("progress record was not delivered")
        self._progress_offset = delivered[-1]
        return [TopicPartition(self.state_topic, 0, delivered[-1] + 1)]

    def after_commit(self) -> None:
        self.last_progress = self._progress_offset
        self._seq += 1
        self._pending_ckpt = None


class Prefetch:
    """Input records a replay needs, read once per partition (a batch-by-batch assign would
    cost a fetch round trip per partition per batch)."""

    def __init__(self, reader: Consumer, spans: dict[TP, tuple[int, int]]):
        self.msgs: dict[TP, list[Message]] = {}
        self.offs: dict[TP, list[int]] = {}
        for tp, (a, b) in spans.items():
            ms = list(read_range(reader, tp, a, b)) if b > a else []
            self.msgs[tp] = ms
            self.offs[tp] = [m.offset() for m in ms]

    def __call__(self, tp: TP, a: int, b: int) -> list[Message]:
        offs = self.offs.get(tp, [])
        return self.msgs.get(tp, [])[bisect_left(offs, a) : bisect_left(offs, b)]


def _chain_spans(chain: Chain) -> dict[TP, tuple[int, int]]:
    spans: dict[TP, list[int]] = {}

    def widen(tp: TP, a: int, b: int) -> None:
        cur = spans.get(tp)
        spans[tp] = [min(a, cur[0]), max(b, cur[1])] if cur else [a, b]

    if chain.checkpoint is not None:
        for k, ranges in chain.checkpoint["buffered"].items():
            widen(_key_tp(k), ranges[0][0], ranges[-1][1])
    for rec in chain.batches:
        for k, e in rec["end"].items():
            widen(_key_tp(k), rec["start"].get(k, 0), e)
    return {tp: (a, b) for tp, (a, b) in spans.items()}


def replay_chain(
    engine: Engine,
    chain: Chain,
    reader: Consumer,
    emit: Callable[[list[dict], list[tuple[str, str, bytes | None]]], None] | None,
    stop_after: Callable[[Engine], bool] | None = None,
) -> None:
    """Rebuild `engine` by re-running committed batches with their recorded frontiers.
    `emit(rows, dead_letters)` receives what each batch produced (None: discard)."""
    fetch = Prefetch(reader, _chain_spans(chain))
    if chain.checkpoint is not None:
        engine.restore(chain.checkpoint, fetch)
    for rec in chain.batches:
        engine.allowed_lateness_us = rec.get("lateness", engine.allowed_lateness_us)
        dls = []
        for k, e in rec["end"].items():
            tp = _key_tp(k)
            for m in fetch(tp, rec["start"].get(k, 0), e):
                reason, _ = engine.offer(tp, m.offset(), m.value(), m.headers())
                if reason is not None:
                    dls.append((reason, record_source(*tp, m.offset()), m.value()))
        rows = engine.close(rec["frontier"])
        if emit is not None:
            emit(rows, dls)
        if stop_after is not None and stop_after(engine):
            return


def parse_pairs(values: list[str] | None) -> list[tuple[Market, Exchange]]:
    """'spot:binance' items; default every market of every exchange."""
    if not values:
        return [(m, x) for x in Exchange for m in Market]
    out = []
    for v in values:
        m, _, x = v.partition(":")
        out.append((Market(m), Exchange(x)))
    return out


class FeatureProcessorSettings(LoopSettings):
    """The feature processor's settings: the Dagster run config (pipelines/services/processors.py)
    and the `python -m streaming.processors.feature_processor` options (runtime/service_cli.py)."""

    pairs: list[str] = []
    """MARKET:EXCHANGE pairs to process (empty: all)."""
    name: str = "default"
    """Processor name: its state topic, consumer group and transactional id."""
    allowed_lateness_ms: int = 500
    idle_timeout_ms: int = 2000
    checkpoint_interval_s: float = 10.0
    batch_max_ms: int = 200


def feature_processor_from_settings(conn: kc.KafkaConnection, settings: FeatureProcessorSettings) -> FeatureProcessor:
    """The processor a Dagster run and the standalone entry both run."""
    return FeatureProcessor(
        conn,
        parse_pairs(settings.pairs or None),
        processor_name=settings.name,
        allowed_lateness_ms=settings.allowed_lateness_ms,
        idle_timeout_ms=settings.idle_timeout_ms,
        checkpoint_interval_s=settings.checkpoint_interval_s,
        batch_max_ms=settings.batch_max_ms,
    )


main = service_main(
    __name__,
    FeatureProcessorSettings,
    lambda conn, _a, s: feature_processor_from_settings(conn, s),
    service=FeatureProcessor.name,
)


if __name__ == "__main__":
    sys.exit(main())

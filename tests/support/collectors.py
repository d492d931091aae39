"""Test helpers for the collector tests: run shards against the emulator and the real broker,
read back what they published, and check the books the raw topics describe.

The book check rebuilds each symbol from its BOOK_SNAPSHOT and BOOK_DELTA events alone (what
a downstream consumer sees), so it judges the published stream, not the adapter's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from collectors.config import ShardConfig
from collectors.runner import ShardRunner
from orderbook import L2Book
from runtime import kafka_config as kc
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id
from schemas.model import EventType, Exchange, Market
from schemas.scaled import to_scaled
from schemas.serde import decode, header
from schemas.topics import DlqStage, Stage, all_event_topics, dlq_topic
from streaming.kafka.topic_admin import admin_client, ensure_topics
from streaming.kafka.topic_config import TopicConfig

EIPS = tuple(f"127.0.0.{i}" for i in range(2, 12))
EVENT_BOOK_SNAPSHOT = EventType.BOOK_SNAPSHOT.pb
EVENT_BOOK_DELTA = EventType.BOOK_DELTA.pb

_ensured: set[str] = set()


def ensure_collector_topics(bootstrap: str) -> None:
    if bootstrap not in _ensured:
        ensure_topics(admin_client(bootstrap), TopicConfig.local(3))
        _ensured.add(bootstrap)


def producer_config(bootstrap: str) -> dict:
    return kc.producer_config(kc.KafkaConnection(bootstrap), linger_ms=5)


@contextlib.asynccontextmanager
async def synthetic_okx_spot(name: str) -> AsyncIterator[ShardConfig]:
    """A running emulator with one synthetic OKX spot symbol (50 frames/s); yields a shard config for it."""
    from collectors.replay import Emulator

    emu = Emulator()
    emu.play_synthetic("okx", "spot", n_symbols=1, rate=50, gate=False)
    await emu.start()
    try:
        yield emu.shard_configs(unique(name))[0]
    finally:
        await emu.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_topics(bootstrap: str, topics: Iterable[str], idle_s: float = 1.5, max_s: float = 60.0) -> list:
    """Every record of ``topics`` from the beginning, until nothing new arrives for idle_s."""
    topics = list(topics)
    c = Consumer(
        kc.consumer_config(kc.KafkaConnection(bootstrap), unique("t"), fetch_wait_max_ms=10, session_timeout_ms=6000)
    )
    md = c.list_topics(timeout=10)
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics if t in md.topics for p in md.topics[t].partitions]
    c.assign(parts)
    out = []
    last = time.monotonic()
    start = last
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - start < max_s:
            batch = c.consume(1000, 0.2)
            for m in batch:
                if m.error():
                    continue
                out.append(m)
            if batch:
                last = time.monotonic()
    finally:
        c.close()
    return out


def shard_events(
    bootstrap: str, shard: str, exchange: Exchange | str, markets: Iterable[Market] = tuple(Market)
) -> list[pb.Envelope]:
    """The shard's envelopes on the raw topics, each with its event id verified.

    The session broker's raw topics also hold every earlier test's shards; their records are
    only parsed to be told apart, the (costly) id check is for this shard's records."""
    topics = all_event_topics(Stage.RAW, exchanges=(Exchange(exchange),), markets=tuple(markets))
    envs = []
    for m in read_topics(bootstrap, topics):
        env = decode(m.value(), m.headers())
        if env.shard == shard:
            assert compute_event_id(env) == env.event_id, f"event_id does not match the record's content: {env}"
            envs.append(env)
    return envs


def shard_dead_letters(bootstrap: str, shard: str) -> list[pb.DeadLetter]:
    out = []
    for m in read_topics(bootstrap, [dlq_topic(DlqStage.COLLECTOR)]):
        if header(m.headers(), "shard") == shard.encode():
            dl = pb.DeadLetter()
            dl.ParseFromString(m.value())
            out.append(dl)
    return out


@dataclass
class Chain:
    book: L2Book = field(default_factory=L2Book)
    seq: int | None = None
    snapshots: int = 0
    resets: int = 0  # snapshots that moved the book forward past a hole
    snapshot_mismatch: int = 0
    deltas: int = 0
    stale: int = 0
    gaps: int = 0
    crossed: int = 0
    price_scale: int = 0
    size_scale: int = 0


def _levels(lvs) -> list[tuple[int, int]]:
    return [(lv.px, lv.qty) for lv in lvs]


def verify_books(envs: Iterable[pb.Envelope]) -> dict[str, Chain]:
    """Rebuild every symbol's book from the published snapshots and deltas.

    Sequenced venues are replayed in venue sequence order (a snapshot before deltas with
    the same id; a delta must link to the book: prev_seq == book id where the venue sends
    a link, else first_seq <= book id + 1). Unsequenced books (old OKX captures) are
    replayed in receive order. A gap is a delta that does not link; a snapshot newer than
    the book is a reset (legitimate after a resync or a new connection)."""
    by_sym: dict[str, list[pb.Envelope]] = defaultdict(list)
    for e in envs:
        if e.event_type in (EVENT_BOOK_SNAPSHOT, EVENT_BOOK_DELTA):
            by_sym[e.symbol].append(e)
    chains: dict[str, Chain] = {}
    for sym, evs in by_sym.items():
        ch = chains[sym] = Chain()
        sequenced = any(e.seq for e in evs)
        if sequenced:
            # A snapshot at id S already contains every update up to S; a delta ending at S
            # (Binance USD-M may apply one after the snapshot) is then redundant.
            evs.sort(key=lambda e: (e.seq, 0 if e.event_type == EVENT_BOOK_SNAPSHOT else 1, e.ingest_ts))
        else:
            evs.sort(key=lambda e: (e.ingest_ts, 0 if e.event_type == EVENT_BOOK_SNAPSHOT else 1))
        for e in evs:
            ch.price_scale, ch.size_scale = e.price_scale, e.size_scale
            if e.event_type == EVENT_BOOK_SNAPSHOT:
                s = e.book_snapshot
                if ch.seq is None or not sequenced or e.seq > ch.seq:
                    if ch.seq is not None:
                        ch.resets += 1
                    ch.book.apply_snapshot(_levels(s.bids), _levels(s.asks), e.seq)
                    ch.seq = e.seq
                    ch.snapshots += 1
                elif e.seq == ch.seq:
                    n = min(len(s.bids), len(s.asks), 20)
                    if ch.book.top_bids(n) != _levels(s.bids)[:n] or ch.book.top_asks(n) != _levels(s.asks)[:n]:
                        ch.snapshot_mismatch += 1
                continue
            d = e.book_delta
            if ch.seq is None:
                continue
            if sequenced:
                if e.seq <= ch.seq:
                    ch.stale += 1
                    continue
                linked = (
                    (d.prev_seq == ch.seq or d.first_seq <= ch.seq < e.seq)
                    if d.prev_seq != -1
                    else d.first_seq <= ch.seq + 1
                )
                if not linked:
                    ch.gaps += 1
            ch.book.apply(_levels(d.bids), _levels(d.asks))
            ch.seq = e.seq
            ch.deltas += 1
            if ch.book.crossed():
                ch.crossed += 1
    return chains


def venue_top(emu_book, n: int, price_scale: int, size_scale: int) -> tuple[list, list]:
    bids = [(to_scaled(lv[0], price_scale), to_scaled(lv[1], size_scale)) for lv in emu_book.top_bids(n)]
    asks = [(to_scaled(lv[0], price_scale), to_scaled(lv[1], size_scale)) for lv in emu_book.top_asks(n)]
    return bids, asks


async def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


class RunningShard:
    """A ShardRunner task with a stop switch (async context manager)."""

    def __init__(self, cfg: ShardConfig, bootstrap: str, **kw) -> None:
        self.runner = ShardRunner(cfg, producer_config=producer_config(bootstrap), **kw)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> ShardRunner:
        self.task = asyncio.create_task(self.runner.run(self.stop))
        await asyncio.wait_for(self.runner.running.wait(), 30)
        return self.runner

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)

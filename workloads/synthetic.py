"""A deterministic synthetic market (trades, book snapshots, book deltas) as canonical envelopes.

Used where a test or benchmark needs more volume or more control than the captures give:
several instruments, a known time span, duplicates, late and malformed records on demand.
Books are self-consistent (deltas follow the snapshot's sequence, never cross), so the
normalizer and the feature spec see what a real venue would send.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.instruments import InstrumentRef
from schemas.model import EventType, Exchange, Market
from schemas.symbols import native_symbol
from streaming.processors.instruments import InstrumentCatalog

BASE_TS = 1_723_161_600_000_000  # 2024-08-09T00:00:00Z


@dataclass(frozen=True)
class SynthInstrument:
    symbol: str
    exchange: Exchange = Exchange.BINANCE
    market: Market = Market.SPOT
    mid: int = 6_000_000  # price units at price_scale (60000.00)
    tick: int = 1
    lot: int = 1
    price_scale: int = 2
    size_scale: int = 3

    @property
    def native(self) -> str:
        return native_symbol(self.exchange, self.market, self.symbol)


DEFAULT_INSTRUMENTS = (
    SynthInstrument("BTC-USDT", mid=6_000_000, price_scale=2, size_scale=5),
    SynthInstrument("ETH-USDT", mid=300_000, price_scale=2, size_scale=4),
    SynthInstrument("SOL-USDT", mid=15_000, price_scale=2, size_scale=2),
)


def _env(inst: SynthInstrument, et: EventType, ts: int, seq: int, ingest_delay: int) -> pb.Envelope:
    return pb.Envelope(
        exchange=inst.exchange.pb,
        market=inst.market.pb,
        event_type=et.pb,
        symbol=inst.symbol,
        native_symbol=inst.native,
        exchange_ts=ts,
        ingest_ts=ts + ingest_delay,
        seq=seq,
        price_scale=inst.price_scale,
        size_scale=inst.size_scale,
        shard="synthetic",
    )


class SyntheticMarket:
    """Yields envelopes in exchange-time order; each instrument keeps its own book."""

    def __init__(
        self,
        instruments=DEFAULT_INSTRUMENTS,
        seed: int = 7,
        depth: int = 20,
        start_ts: int = BASE_TS,
        trade_share: float = 0.4,
    ):
        self.instruments = list(instruments)
        self.rng = random.Random(seed)
        self.depth = depth
        self.ts = start_ts
        self.trade_share = trade_share
        self.seq = {i.symbol: 1000 for i in self.instruments}
        self.trade_id = {i.symbol: 1 for i in self.instruments}
        self.mid = {i.symbol: i.mid for i in self.instruments}
        self.books: dict[str, tuple[dict[int, int], dict[int, int]]] = {}

    def _snapshot(self, inst: SynthInstrument, ts: int) -> pb.Envelope:
        m = self.mid[inst.symbol]
        bids = {m - k * inst.tick: self.rng.randint(1, 50) * inst.lot * 100 for k in range(1, self.depth + 1)}
        asks = {m + k * inst.tick: self.rng.randint(1, 50) * inst.lot * 100 for k in range(1, self.depth + 1)}
        self.books[inst.symbol] = (bids, asks)
        self.seq[inst.symbol] += 1
        env = _env(inst, EventType.BOOK_SNAPSHOT, ts, self.seq[inst.symbol], 800)
        env.book_snapshot.CopyFrom(
            pb.BookSnapshot(
                bids=[pb.PriceLevel(px=p, qty=q) for p, q in sorted(bids.items(), reverse=True)],
                asks=[pb.PriceLevel(px=p, qty=q) for p, q in sorted(asks.items())],
                depth=self.depth,
                reason=pb.SNAPSHOT_REASON_INITIAL,
            )
        )
        return stamp_event_id(env)

    def _delta(self, inst: SynthInstrument, ts: int) -> pb.Envelope:
        bids, asks = self.books[inst.symbol]
        step = self.rng.choice((-1, 0, 0, 1)) * inst.tick
        m = self.mid[inst.symbol] = self.mid[inst.symbol] + step
        db: list[tuple[int, int]] = []
        da: list[tuple[int, int]] = []
        # keep the book uncrossed around the new mid: remove levels on the wrong side
        for p in [p for p in bids if p >= m]:
            del bids[p]
            db.append((p, 0))
        for p in [p for p in asks if p <= m]:
            del asks[p]
            da.append((p, 0))
        for _ in range(self.rng.randint(1, 3)):
            k = self.rng.randint(1, self.depth)
            if self.rng.random() < 0.5:
                p, q = m - k * inst.tick, self.rng.randint(0, 50) * inst.lot * 100
                (bids.__setitem__(p, q) if q else bids.pop(p, None))
                db.append((p, q))
            else:
                p, q = m + k * inst.tick, self.rng.randint(0, 50) * inst.lot * 100
                (asks.__setitem__(p, q) if q else asks.pop(p, None))
                da.append((p, q))
        first = self.seq[inst.symbol] + 1
        self.seq[inst.symbol] += 1
        env = _env(inst, EventType.BOOK_DELTA, ts, self.seq[inst.symbol], 400)
        env.book_delta.CopyFrom(
            pb.BookDelta(
                bids=[pb.PriceLevel(px=p, qty=q) for p, q in db],
                asks=[pb.PriceLevel(px=p, qty=q) for p, q in da],
                first_seq=first,
                prev_seq=first - 1,
            )
        )
        return stamp_event_id(env)

    def _trade(self, inst: SynthInstrument, ts: int) -> pb.Envelope:
        bids, asks = self.books[inst.symbol]
        buy = self.rng.random() < 0.5
        side = asks if buy else bids
        px = (min(side) if buy else max(side)) if side else self.mid[inst.symbol]
        tid = self.trade_id[inst.symbol]
        self.trade_id[inst.symbol] += 1
        env = _env(inst, EventType.TRADE, ts, tid, 300)
        env.trade.CopyFrom(
            pb.Trade(
                trade_id=str(tid),
                px=px,
                qty=self.rng.randint(1, 40) * inst.lot,
                taker_side=pb.SIDE_BUY if buy else pb.SIDE_SELL,
            )
        )
        return stamp_event_id(env)

    def events(self, n: int, spacing_us: int = 1_000) -> list[pb.Envelope]:
        """n envelopes, one every `spacing_us` of exchange time, snapshots first."""
        out: list[pb.Envelope] = []
        for inst in self.instruments:
            if inst.symbol not in self.books:
                out.append(self._snapshot(inst, self.ts))
        while len(out) < n:
            self.ts += spacing_us
            inst = self.rng.choice(self.instruments)
            if self.rng.random() < self.trade_share:
                out.append(self._trade(inst, self.ts))
            else:
                out.append(self._delta(inst, self.ts))
        return out


def synthetic_catalog(instruments=DEFAULT_INSTRUMENTS) -> InstrumentCatalog:
    """The instrument catalog the normalizer needs for the synthetic market (tick and lot
    one unit at each instrument's scales)."""
    return InstrumentCatalog(
        InstrumentRef(
            i.exchange.value,
            i.market.value,
            i.native,
            i.symbol,
            i.symbol.split("-")[0],
            i.symbol.split("-")[1],
            "0." + "0" * (i.price_scale - 1) + "1",
            "0." + "0" * (i.size_scale - 1) + "1",
            "TRADING",
        )
        for i in instruments
    )

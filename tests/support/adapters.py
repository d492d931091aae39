"""Driving a venue adapter with a genuine capture (workloads/samples.py names them): no
sockets, adapters are pure protocol logic."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from collectors.capture import REST, WS, Record, read, rest_params
from collectors.exchanges.base import FrameResult, RestRequest
from schemas.model import EventType, event_type_from_pb
from schemas.scaled import from_scaled


@dataclass
class Run:
    """Everything an adapter produced over a sequence of records."""

    results: list[FrameResult] = field(default_factory=list)

    @property
    def events(self):
        return [e for r in self.results for e in r.events]

    @property
    def dead_letters(self):
        return [d for r in self.results for d in r.dead_letters]

    @property
    def requests(self):
        return [q for r in self.results for q in r.requests]

    @property
    def sends(self):
        return [s for r in self.results for s in r.sends]

    @property
    def resyncs(self):
        return [s for r in self.results for s in r.resyncs]

    def of(self, event_type: EventType, native: str | None = None):
        return [
            e
            for e in self.events
            if event_type_from_pb(e.event_type) is event_type and (native is None or e.native_symbol == native)
        ]


def rest_request_for(rec: Record) -> RestRequest:
    params = rest_params(rec.url)
    return RestRequest(
        path=urlsplit(rec.url).path, params=tuple(params.items()), native_symbol=params.get("symbol", "")
    )


def feed(adapter, records, run: Run | None = None) -> Run:
    run = run or Run()
    for rec in records:
        if rec.kind == WS:
            run.results.append(adapter.on_frame(rec.payload, rec.recv_ts_us))
        elif rec.kind == REST:
            run.results.append(adapter.on_rest(rest_request_for(rec), 200, rec.payload, rec.recv_ts_us))
    return run


def records(path: Path) -> list[Record]:
    return list(read(path))


def frame_json(rec: Record) -> dict:
    return json.loads(rec.payload)


def dec(value: int, scale: int) -> Decimal:
    """A scaled integer back as an exact Decimal."""
    return Decimal(from_scaled(value, scale))


def book_levels_json(book, price_scale: int, size_scale: int, depth: int = 100_000):
    bids = [[from_scaled(p, price_scale), from_scaled(q, size_scale)] for p, q in book.top_bids(depth)]
    asks = [[from_scaled(p, price_scale), from_scaled(q, size_scale)] for p, q in book.top_asks(depth)]
    return bids, asks


def same_book(a, b) -> bool:
    return a.bids == b.bids and a.asks == b.asks and a.seq == b.seq

"""The normalizer's fast path (Normalizer._fast) against its full path (Normalizer._process).

`process` tries the fast path and falls back to the full one, which it declines silently:
the two must decide every record the same way (kind, reason, output topic), leave the same
state behind (dedup window, sequence floors, counters) and produce byte-identical records.
Checked here on the genuine Binance capture (where every record takes the fast path), on the
same capture against reference data that makes it re-scale (every record takes the full
path), and on synthetic records built to fail each check the fast path repeats."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import replace

import pytest

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.serde import encode
from streaming.processors.instruments import InstrumentCatalog
from streaming.processors.normalizer import Normalizer, NormalizerService, ok_record, outcome_records
from workloads.binance_hour import BTCUSDT_SPOT_INFO, capture_raw_events
from workloads.kafka import raw_topic
from workloads.synthetic import SyntheticMarket, synthetic_catalog


def _records(envs: list[pb.Envelope]) -> list[tuple[str, int, int, bytes, list]]:
    """(topic, partition, offset, value, headers) per envelope, offsets counted per topic."""
    offsets: dict[str, int] = defaultdict(int)
    out = []
    for e in envs:
        topic = raw_topic(e)
        rec = encode(e)
        out.append((topic, 0, offsets[topic], rec.value, rec.headers))
        offsets[topic] += 1
    return out


def _both(records, catalog_factory, between=None) -> tuple[int, list]:
    """Every record through `process` (fast path first) and through the full path alone, on
    two normalizers; asserts equal decisions, records and state; returns (records the fast
    path decided, the outcomes)."""
    a, b = Normalizer(catalog_factory()), Normalizer(catalog_factory())
    fast_hits = 0
    outs = []
    for i, (topic, part, off, value, headers) in enumerate(records):
        if between is not None:
            between(i, a, b)
        oa = a._fast(topic, part, off, value, headers)
        fast_hits += oa is not None
        if oa is None:
            oa = a.process_full(topic, part, off, value, headers)
        ob = b.process_full(topic, part, off, value, headers)
        assert (oa.kind, oa.topic, oa.reason) == (ob.kind, ob.topic, ob.reason), (i, oa.reason, ob.reason)
        ra = outcome_records(oa, topic, part, off, value)
        rb = outcome_records(ob, topic, part, off, value)
        assert [(r.topic, r.value, r.key, r.headers, r.timestamp_ms) for r in ra] == [
            (r.topic, r.value, r.key, r.headers, r.timestamp_ms) for r in rb
        ], i
        if ob.kind == "ok":  # the record is what schemas.serde.encode makes of the envelope
            enc = encode(ob.env)
            assert (ra[0].value, ra[0].key, ra[0].headers) == (enc.value, enc.key, enc.headers)
        outs.append(oa)
    assert a.last_seq == b.last_seq
    assert {tp: set(d._seen) for tp, d in a.dedup.items()} == {tp: set(d._seen) for tp, d in b.dedup.items()}
    assert (a.ok, a.duplicates, dict(a.counters.counts)) == (b.ok, b.duplicates, dict(b.counters.counts))
    return fast_hits, outs


def _binance_catalog(info=BTCUSDT_SPOT_INFO) -> InstrumentCatalog:
    cat = InstrumentCatalog()
    cat.load_exchange_info("binance", "spot", info)
    return cat


def test_genuine_capture_takes_the_fast_path_with_identical_output():
    envs = capture_raw_events()
    records = _records(envs)
    hits, outs = _both(records, _binance_catalog)
    assert hits == len(records)  # trades, book deltas, the snapshot and bookTicker alike
    assert all(o.kind == "ok" for o in outs)
    # nothing re-scaled or re-symbolled: the processed id is the raw one
    assert [o.env.event_id for o in outs] == [e.event_id for e in envs]
    # process() itself (fast path first) gives the same records
    n = Normalizer(_binance_catalog())
    assert [ok_record(o.topic, o.env).value for o in (n.process(*r) for r in records[:2000])] == [
        ok_record(o.topic, o.env).value for o in outs[:2000]
    ]


def test_capture_that_needs_a_rescale_takes_the_full_path():
    """Reference data one decimal finer than the capture's sizes: every trade and book record is
    re-expressed (and re-stamped) by the full path; the fast path declines them all."""
    info = copy.deepcopy(BTCUSDT_SPOT_INFO)
    info["symbols"][0]["baseAssetPrecision"] += 1
    envs = [e for e in capture_raw_events()[:4000] if e.WhichOneof("payload") in ("trade", "book_delta")]
    records = _records(envs)
    hits, outs = _both(records, lambda: _binance_catalog(info))
    assert hits == 0
    assert all(o.kind == "ok" for o in outs)
    assert all(o.env.size_scale == e.size_scale + 1 for o, e in zip(outs, envs, strict=True))
    assert all(o.env.event_id != e.event_id for o, e in zip(outs, envs, strict=True))


def _restamp(e: pb.Envelope) -> pb.Envelope:
    return stamp_event_id(e)


def _variants(envs: list[pb.Envelope]) -> list[tuple[str, pb.Envelope | bytes, list | None]]:
    """Synthetic records, each mutated to fail (or pass) one check of the fast path."""
    out: list[tuple[str, pb.Envelope | bytes, list | None]] = []
    for i, src in enumerate(envs):
        e = pb.Envelope()
        e.CopyFrom(src)
        kind = e.WhichOneof("payload")
        k = i % 23
        if k == 1 and kind == "trade":
            e.trade.px = -e.trade.px
        elif k == 2 and kind == "book_delta" and e.book_delta.bids:
            e.book_delta.bids[0].qty = -1
        elif k == 3:
            e.exchange_ts = e.ingest_ts + 10_000_000  # beyond the allowed skew
        elif k == 4:
            e.symbol = e.symbol.lower()  # not canonical: re-symbolled by the full path
        elif k == 5:
            e.price_scale += 1  # finer than the instrument: re-scaled (grid types)
            if kind == "trade":
                e.trade.px *= 10
        elif k == 6:
            e.native_symbol = "NOSUCHUSDT"
        elif k == 7:
            e.seq = max(0, e.seq - 500)  # goes backwards
        elif k == 8:
            e.seq = -5
        elif k == 9:
            e.event_id = "0" * 32  # does not match the content
            out.append((raw_topic(e), e.SerializeToString(), encode(e).headers))
            continue
        elif k == 10:  # another version's record, its body stating no version: the header decides
            out.append((raw_topic(e), _restamp(e).SerializeToString(), [("ticklake-schema", b"2")]))
            continue
        elif k == 18:  # another version's record stating it in the body (Envelope.schema_version) too
            e.schema_version = 2
            out.append((raw_topic(e), _restamp(e).SerializeToString(), [("ticklake-schema", b"2")]))
            continue
        elif k == 11:
            out.append((raw_topic(e), b"\x08\x96\x01garbage", None))
            continue
        elif k == 12 and kind == "book_snapshot":
            e.book_snapshot.bids[0].px = e.book_snapshot.asks[0].px  # crossed
        elif k == 13:
            out.append(out[-1] if out else (raw_topic(e), encode(_restamp(e)).value, None))  # a duplicate
            continue
        elif k == 14:
            e.ingest_ts = 5  # before 2010
        elif k == 15 and kind == "book_delta":
            e.book_delta.prev_seq = -7
        elif k == 16:
            t = raw_topic(e)
            topic = "raw.spot.trades.binance" if kind != "trade" else "raw.spot.orderbook.delta.binance"
            assert topic != t
            out.append((topic, encode(_restamp(e)).value, None))  # record not of its topic
            continue
        elif k == 17:
            e.exchange_ts_is_receipt = True
        out.append((raw_topic(e), encode(_restamp(e)).value, encode(e).headers))
    return out


def test_each_check_decides_as_the_full_path():
    envs = SyntheticMarket(seed=3, trade_share=0.4).events(6000, 100)
    variants = _variants(envs)
    records = [(t, 0, off, v, h) for off, (t, v, h) in enumerate(variants)]
    hits, outs = _both(records, synthetic_catalog)
    kinds = {o.kind for o in outs}
    assert kinds == {"ok", "duplicate", "dlq"}
    reasons = {o.reason.split(":")[0] for o in outs if o.kind == "dlq"}
    assert {"range", "ts_range", "decode", "unknown_instrument", "seq_regression", "mismatch"} <= reasons
    other_version = [o for r, o in zip(records, outs, strict=True) if r[2] % 23 in (10, 18)]
    assert other_version and all("unsupported schema version b'2'" in (o.reason or "") for o in other_version)
    assert 0 < hits < len(records)


def test_ticks_above_one_and_a_catalog_change_mid_stream():
    """A tick of 5 units: a price off that grid is refused by both paths; then the catalog
    changes (tick 1) between two records and the fast path's per-symbol entries follow it."""

    def coarse() -> InstrumentCatalog:
        refs = list(synthetic_catalog())
        return InstrumentCatalog(replace(r, tick_size="0.05") for r in refs)

    envs = SyntheticMarket(seed=4).events(3000, 50)
    records = _records(envs)

    def between(i, a, b):
        if i == 1500:
            for n in (a, b):
                n.catalog.add(list(synthetic_catalog()))

    hits, outs = _both(records, coarse, between)
    first, second = outs[:1500], outs[1500:]
    assert any(o.reason.startswith("off_grid") for o in first)
    assert not any(o.reason.startswith("off_grid") for o in second)
    assert hits > 0


def test_a_replaced_catalog_and_a_changed_skew_are_followed():
    """The settings the fast path reads may change between records: a catalog object swapped
    for another (same revision number, different tick) and a tighter allowed skew."""

    def coarse() -> InstrumentCatalog:
        return InstrumentCatalog(replace(r, tick_size="0.05") for r in synthetic_catalog())

    envs = SyntheticMarket(seed=6).events(3000, 50)
    for e in envs[2000:]:
        e.exchange_ts = e.ingest_ts + 2_000_000  # 2 s after receipt: allowed at 5 s, not at 1 s
        stamp_event_id(e)
    records = _records(envs)

    def between(i, a, b):
        if i == 1000:
            for n in (a, b):
                assert n.catalog.revision == coarse().revision
                n.catalog = coarse()
        if i == 2500:
            for n in (a, b):
                n.max_future_skew_us = 1_000_000

    hits, outs = _both(records, synthetic_catalog, between)
    assert not any(o.reason.startswith("off_grid") for o in outs[:1000])
    assert any(o.reason.startswith("off_grid") for o in outs[1000:2000])
    assert not any(o.reason.startswith("ts_range") for o in outs[2000:2500])
    assert all(o.reason.startswith(("ts_range", "off_grid")) for o in outs[2500:] if o.kind == "dlq")
    assert any(o.reason.startswith("ts_range") for o in outs[2500:])
    assert hits > 0


def test_service_batch_records_equal_the_outcome_records():
    """NormalizerService.process_batch builds accepted records itself (ok_record) and counts the
    rest: the same list outcome_records gives record by record."""

    class Msg:
        def __init__(self, topic, off, value, headers):
            self._t, self._o, self._v, self._h = topic, off, value, headers

        def topic(self):
            return self._t

        def partition(self):
            return 0

        def offset(self):
            return self._o

        def value(self):
            return self._v

        def headers(self):
            return self._h

    envs = SyntheticMarket(seed=5).events(3000, 100)
    variants = _variants(envs)
    msgs = [Msg(t, off, v, h) for off, (t, v, h) in enumerate(variants)]
    svc = NormalizerService.__new__(NormalizerService)
    svc.name = "normalizer-test"
    svc.normalizer = Normalizer(synthetic_catalog())
    got = svc.process_batch(msgs)
    ref = Normalizer(synthetic_catalog())
    want = []
    for m in msgs:
        o = ref.process_full(m.topic(), 0, m.offset(), m.value(), m.headers())
        want += outcome_records(o, m.topic(), 0, m.offset(), m.value())
    key = lambda r: (r.topic, r.value, r.key, r.headers, r.timestamp_ms)  # noqa: E731
    assert [key(r) for r in got] == [key(r) for r in want]


def test_observe_many_fills_the_buckets_and_sum_observe_would():
    """The per-batch histogram update against prometheus_client's own observe, value by value,
    bucket bounds themselves included."""
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram

    from streaming.processors.normalizer import observe_many

    reg = CollectorRegistry()
    bounds = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
    one, many = (Histogram(n, n, buckets=bounds, registry=reg) for n in ("one", "many"))
    values = [*bounds, 0.0, 61.0, 1e9, *(i * 0.0137 for i in range(5000))]
    for v in values:
        one.observe(v)
    observe_many(many, np.asarray(values))

    def samples(name):
        return [
            (s.name.removeprefix(name), s.labels, s.value) for m in reg.collect() if m.name == name for s in m.samples
        ]

    a, b = samples("one"), samples("many")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b, strict=True):
        assert y[2] == pytest.approx(x[2], rel=1e-12), x

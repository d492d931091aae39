"""The adapters' fast event-id path (AdapterBase.envelope from cached header bytes, then
``seal`` from the identity fields the handler holds) must give exactly the envelope and the
id the generic path (attribute sets + schemas.ids.compute_event_id) gives."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from collectors.exchanges.binance import BinanceSpotAdapter, BinanceUsdmAdapter
from collectors.exchanges.bybit import BybitAdapter
from collectors.exchanges.okx import OkxAdapter
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id
from tests.support.adapters import feed, records
from workloads.samples import BINANCE_SPOT_CF, BINANCE_USDM_CF, BYBIT_TARDIS_DERIV, OKX_CF, OKX_TARDIS_SPOT


def _has_map(desc, seen=()) -> bool:
    for f in desc.fields:
        if f.message_type is None or f.message_type in seen:
            continue
        if f.message_type.GetOptions().map_entry or _has_map(f.message_type, (*seen, desc)):
            return True
    return False


def test_payloads_have_no_maps_so_plain_serialization_is_the_deterministic_one():
    # seal() hashes payload.SerializeToString(); compute_event_id the deterministic form.
    # They differ only in map ordering, so a map field in a payload would break the ids.
    oneof = pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
    assert len(oneof.fields) == 7
    for f in oneof.fields:
        assert f.type == FieldDescriptor.TYPE_MESSAGE
        assert not _has_map(f.message_type), f.name


def _generic(e: pb.Envelope) -> pb.Envelope:
    """The same event built field by field, as before the cached header."""
    g = pb.Envelope()
    for name in ("exchange", "market", "event_type", "symbol", "native_symbol", "exchange_ts", "ingest_ts", "seq"):
        setattr(g, name, getattr(e, name))
    g.price_scale, g.size_scale, g.shard = e.price_scale, e.size_scale, e.shard
    g.exchange_ts_is_receipt = e.exchange_ts_is_receipt
    which = e.WhichOneof("payload")
    getattr(g, which).CopyFrom(getattr(e, which))
    g.event_id = compute_event_id(g)
    return g


def test_fast_envelopes_and_ids_equal_the_generic_ones_with_and_without_a_shard():
    spot = records(BINANCE_SPOT_CF)[:1500]  # depth, trade, bookTicker without time (receipt)
    usdm = records(BINANCE_USDM_CF)[:1500]  # depth (pu), aggTrade, bookTicker, markPrice
    kinds: set[tuple[int, bool]] = set()
    for cls, recs in ((BinanceSpotAdapter, spot), (BinanceUsdmAdapter, usdm)):
        for shard in ("", "shard-3"):
            events = feed(cls(shard=shard), recs).events
            assert events
            for e in events:
                g = _generic(e)
                assert e.shard == shard
                assert e.SerializeToString() == g.SerializeToString()
                kinds.add((e.event_type, e.exchange_ts_is_receipt))
    et = pb.EventType
    for want in (et.EVENT_TYPE_BOOK_SNAPSHOT, et.EVENT_TYPE_BOOK_DELTA, et.EVENT_TYPE_TRADE):
        assert (want, False) in kinds
    assert (et.EVENT_TYPE_TICKER, True) in kinds and (et.EVENT_TYPE_TICKER, False) in kinds


def test_bybit_and_okx_trades_and_books_equal_the_generic_ones():
    def lines(path):
        return [x for x in path.read_text().splitlines() if x.strip() and '"generated":true' not in x]

    runs = [
        (lambda shard: BybitAdapter(category="inverse", shard=shard), lines(BYBIT_TARDIS_DERIV)),
        (lambda shard: OkxAdapter(shard=shard), lines(OKX_TARDIS_SPOT)),
    ]
    seen: set[int] = set()
    for make, frames in runs:
        for shard in ("", "shard-5"):
            ad = make(shard)
            for i, x in enumerate(frames):
                for e in ad.on_frame(x, i).events:
                    assert e.SerializeToString() == _generic(e).SerializeToString()
                    seen.add(e.event_type)
    for shard in ("", "shard-5"):  # OKX books (snapshot, deltas with checksums) and trades
        for e in feed(OkxAdapter(shard=shard), records(OKX_CF)[:1500]).events:
            assert e.SerializeToString() == _generic(e).SerializeToString()
            seen.add(e.event_type)
    et = pb.EventType
    assert {et.EVENT_TYPE_TRADE, et.EVENT_TYPE_BOOK_SNAPSHOT, et.EVENT_TYPE_BOOK_DELTA} <= seen

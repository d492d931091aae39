"""The feature spec (features/): formulas on hand-built books and trades, hour alignment,
and exact equality of window-by-window (streaming) and all-at-once (batch) evaluation."""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.compute import (
    FeatureState,
    LateWindowError,
    compute_features,
    features_for_group,
)
from features.inputs import (
    INPUT_SCHEMA,
    events_from_envelopes,
    events_from_lake,
    rows_to_table,
)
from features.records import decode_row, encode_row, table_rows
from features.records import rows_to_table as feature_rows_to_table
from features.spec import (
    FEATURE_SCHEMA,
    FEATURES_TABLE,
    HOUR_US,
    WINDOW_US,
    feature_event_id,
)
from schemas.arrow_convert import envelopes_to_table, group_by_event_type
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import EventType
from workloads.synthetic import BASE_TS, SyntheticMarket

T0 = BASE_TS + 5 * HOUR_US  # an hour boundary


def ev(kind, ts, *, seq=0, px=0, qty=0, side="", bids=(), asks=(), symbol="BTC-USDT", ps=2, ss=3, eid=None):
    return {
        "event_id": eid or f"{kind}-{ts}-{seq}-{px}",
        "exchange": "binance",
        "market": "spot",
        "symbol": symbol,
        "kind": kind,
        "exchange_ts": ts,
        "seq": seq,
        "price_scale": ps,
        "size_scale": ss,
        "px": px,
        "qty": qty,
        "side": side,
        "bids": [{"px": p, "qty": q} for p, q in bids],
        "asks": [{"px": p, "qty": q} for p, q in asks],
    }


def test_book_features_from_exact_integers():
    # bid 100.00 x 3.000, 99.99 x 1.000, 99.80 x 5.000 ; ask 100.02 x 1.000, 100.10 x 2.000, 100.50 x 9.000
    snap = ev(
        "book_snapshot",
        T0 + 10,
        seq=5,
        bids=[(10000, 3000), (9999, 1000), (9980, 5000)],
        asks=[(10002, 1000), (10010, 2000), (10050, 9000)],
    )
    out, _ = compute_features(rows_to_table([snap]))
    r = out.to_pylist()[0]
    assert (r["best_bid_px"], r["best_bid_qty"], r["best_ask_px"], r["best_ask_qty"]) == (10000, 3000, 10002, 1000)
    assert r["spread_px"] == 2
    assert r["mid_px"] == 100.01
    assert r["microprice"] == (10000 * 1000 + 10002 * 3000) / (4000 * 100)  # 100.015
    assert r["imbalance_10"] == (9000 - 12000) / 21000
    # mid 100.01: +-10 bps = [99.90999, 100.11001] -> bids 100.00, 99.99 ; asks 100.02, 100.10
    assert r["depth_bid_10bps"] == 4000 and r["depth_ask_10bps"] == 3000
    assert r["book_seq"] == 5 and r["trade_count"] == 0 and r["vwap"] is None
    assert r["exchange_ts"].timestamp() * 1_000_000 == T0


def test_deltas_apply_in_sequence_and_stale_ones_are_ignored():
    rows = [
        ev("book_snapshot", T0 + 1, seq=10, bids=[(100, 5)], asks=[(102, 5)]),
        ev("book_delta", T0 + 2, seq=9, bids=[(101, 7)]),  # already in the snapshot
        ev("book_delta", T0 + 3, seq=11, bids=[(100, 0), (99, 4)], asks=[(101, 2)]),
    ]
    r = compute_features(rows_to_table(rows))[0].to_pylist()[0]
    assert (r["best_bid_px"], r["best_bid_qty"], r["best_ask_px"], r["best_ask_qty"]) == (99, 4, 101, 2)
    assert r["book_seq"] == 11 and r["book_event_count"] == 3


def test_trade_features():
    trades = [
        ev("trade", T0 + 100, seq=1, px=10000, qty=2000, side="buy"),
        ev("trade", T0 + 200, seq=2, px=10050, qty=1000, side="sell"),
        ev("trade", T0 + 300, seq=3, px=9990, qty=3000, side="buy"),
        ev("trade", T0 + 400, seq=4, px=10010, qty=4000, side="sell"),
    ]
    random.Random(1).shuffle(trades)
    r = compute_features(rows_to_table(trades))[0].to_pylist()[0]
    assert r["trade_count"] == 4 and r["volume"] == 10_000
    assert (r["buy_volume"], r["sell_volume"]) == (5000, 5000)
    assert (r["open_px"], r["high_px"], r["low_px"], r["close_px"]) == (10000, 10050, 9990, 10010)
    notional = 10000 * 2000 + 10050 * 1000 + 9990 * 3000 + 10010 * 4000
    assert r["vwap"] == notional / (10_000 * 100)
    assert r["trade_imbalance"] == 0.0
    assert r["mid_px"] is None  # no book yet


def test_windows_tile_hours_and_rows_only_where_events_are():
    rows = [
        ev("trade", T0 - 1, px=100, qty=1, side="buy"),  # last µs of the previous hour
        ev("trade", T0, px=101, qty=1, side="buy"),  # first µs of the hour
        ev("trade", T0 + 3 * WINDOW_US + 5, px=102, qty=1, side="sell"),
    ]
    out = compute_features(rows_to_table(rows))[0]
    starts = [int(x.timestamp() * 1_000_000) for x in out["exchange_ts"].to_pylist()]
    assert starts == [T0 - WINDOW_US, T0, T0 + 3 * WINDOW_US]
    assert all(s % WINDOW_US == 0 for s in starts) and HOUR_US % WINDOW_US == 0
    assert out["event_id"].to_pylist()[1] == feature_event_id("binance", "spot", "BTC-USDT", T0)


def test_realized_volatility_over_sixty_seconds():
    mids = [10000, 10010, 9990, 10000, 10020]
    rows = []
    for i, m in enumerate(mids):  # one window every 20 s; the book moves by replacing it
        rows.append(ev("book_snapshot", T0 + i * 20 * WINDOW_US, seq=i + 1, bids=[(m - 1, 1)], asks=[(m + 1, 1)]))
    out = compute_features(rows_to_table(rows))[0].to_pylist()
    rv = [r["realized_vol_60s"] for r in out]
    mid = [m / 100 for m in mids]  # mid_px as the row reports it; returns are ln(mid_t / mid_t-1)
    r2 = [math.log(mid[i] / mid[i - 1]) ** 2 for i in range(1, len(mid))]
    assert rv[0] is None
    assert rv[1] == math.sqrt(math.fsum(r2[0:1]))
    assert rv[3] == math.sqrt(math.fsum(r2[0:3]))  # returns at 20, 40, 60 s: all within 60 s
    assert rv[4] == math.sqrt(math.fsum(r2[1:4]))  # the return ending at 20 s has left the window


def test_streaming_equals_batch_exactly():
    envs = SyntheticMarket(seed=11).events(12_000, 700)
    table = events_from_envelopes(envs)
    batch, _ = compute_features(table)
    assert batch.num_rows > 20
    # streaming: window by window, state through JSON (a checkpoint), rows shuffled
    ws = pc.multiply(pc.divide(table["exchange_ts"], WINDOW_US), WINDOW_US)
    state, parts, rng = FeatureState(), [], random.Random(3)
    for w in sorted(set(ws.to_pylist())):
        sub = table.filter(pc.equal(ws, w))
        idx = list(range(sub.num_rows))
        rng.shuffle(idx)
        state = FeatureState.from_state(json.loads(json.dumps(state.to_state())))
        out, state = compute_features(sub.take(idx), state)
        parts.append(out)
    stream = pa.concat_tables(parts).sort_by([("symbol", "ascending"), ("exchange_ts", "ascending")])
    assert stream.equals(batch)
    # the same events again for an already computed window are refused
    with pytest.raises(LateWindowError):
        compute_features(table.slice(0, 5), state)


def test_spark_style_groups_equal_whole_batch():
    """applyInArrow calls the spec once per symbol group; the union equals one batch call."""
    table = events_from_envelopes(SyntheticMarket(seed=5).events(6000, 900))
    whole, _ = compute_features(table)
    groups = [
        features_for_group(table.filter(pc.equal(table["symbol"], s))) for s in pc.unique(table["symbol"]).to_pylist()
    ]
    union = pa.concat_tables(groups).sort_by([("symbol", "ascending"), ("exchange_ts", "ascending")])
    assert union.equals(whole)


def test_lake_rows_and_envelopes_give_the_same_input():
    envs = SyntheticMarket(seed=2).events(3000, 1000)
    by_type = group_by_event_type(envs)
    lake = events_from_lake(
        envelopes_to_table(EventType.TRADE, by_type[EventType.TRADE]),
        envelopes_to_table(EventType.BOOK_SNAPSHOT, by_type[EventType.BOOK_SNAPSHOT]),
        envelopes_to_table(EventType.BOOK_DELTA, by_type[EventType.BOOK_DELTA]),
    )
    assert lake.schema == INPUT_SCHEMA
    assert compute_features(lake)[0].equals(compute_features(events_from_envelopes(envs))[0])


def test_contract_sized_books_give_the_same_input_from_envelopes_and_lake_rows():
    """Book levels in contracts are converted to base asset level by level at their own
    price by the one columnar level builder of both paths: processed envelopes (the stream)
    and lake rows (local batch, Spark), also when the lake columns arrive in several chunks
    and sliced."""
    envs = []
    for i, e in enumerate(SyntheticMarket(seed=3).events(3000, 1000)):
        c = pb.Envelope()
        c.CopyFrom(e)
        if i % 3:  # a third stays base: mixed units in one batch
            c.qty_unit, c.contract_value, c.contract_value_ccy = pb.QTY_UNIT_INVERSE_CONTRACT, "100", "USD"
        envs.append(c)
    stream = events_from_envelopes(envs)
    by_type = group_by_event_type(envs)

    def chunked(t: pa.Table) -> pa.Table:  # two chunks, the second a slice of a larger table
        cut = t.num_rows // 3
        return pa.concat_tables([t.slice(0, cut), pa.concat_tables([t, t]).slice(cut, t.num_rows - cut)])

    lake = events_from_lake(
        *(
            chunked(envelopes_to_table(k, by_type[k]))
            for k in (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)
        )
    )
    order = [("event_id", "ascending")]
    assert lake.sort_by(order).equals(stream.sort_by(order))
    # converted: an inverse level of q contracts of 100 USD at px holds q * 100 / px BTC
    snap = next(e for i, e in enumerate(envs) if i % 3 and e.HasField("book_snapshot"))
    row = stream.filter(pc.equal(stream["event_id"], snap.event_id)).to_pylist()[0]
    lvl, got = snap.book_snapshot.bids[0], row["bids"][0]
    unit = 10**snap.price_scale
    assert row["size_scale"] == snap.size_scale + 8 and got["px"] == lvl.px
    assert abs(got["qty"] - lvl.qty * 100 * unit * 10**8 // lvl.px) <= 1 and got["qty"] != lvl.qty
    assert compute_features(lake)[0].equals(compute_features(stream)[0])


def test_feature_record_round_trip_is_exact():
    out, _ = compute_features(events_from_envelopes(SyntheticMarket(seed=9).events(4000, 800)))
    rows = table_rows(out)
    back = feature_rows_to_table(decode_row(encode_row(r)) for r in rows)
    assert back.equals(out)
    assert encode_row(rows[0]) == encode_row(decode_row(encode_row(rows[0])))  # deterministic bytes
    assert FEATURES_TABLE.schema == FEATURE_SCHEMA and FEATURES_TABLE.identifier == "market.features_1s"

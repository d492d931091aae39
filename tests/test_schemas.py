"""Canonical data model: scaled integers, event ids, symbols, topics, table specs."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.arrow_convert import envelopes_to_table, table_to_envelopes
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import compute_event_id
from schemas.model import EventType, Exchange, Market
from schemas.scaled import INT64_MAX, ScaleError, from_scaled, scale_of, to_scaled
from schemas.symbols import SymbolError, canonical_symbol, native_symbol, validate_canonical
from schemas.tables import TABLES
from schemas.topics import (
    all_event_topics,
    dlq_topic,
    event_topic,
    feature_topic,
    parse_event_topic,
    prediction_topic,
)
from schemas.units import QtyUnit
from schemas.validation import validate_table
from tests.support.envelopes import envelope, one_of_each

# ---------------------------------------------------------------- scaled integers

decimals = st.decimals(min_value=0, max_value=Decimal("92233720368"), places=8, allow_nan=False, allow_infinity=False)


@given(decimals, st.integers(min_value=8, max_value=8))
def test_scaled_roundtrip_matches_decimal(d: Decimal, scale: int) -> None:
    text = format(d, "f")
    n = to_scaled(text, scale)
    assert n == int(d.scaleb(scale))
    assert Decimal(from_scaled(n, scale)) == d


@given(st.integers(min_value=-(10**17), max_value=10**17), st.integers(min_value=0, max_value=12))
def test_from_scaled_is_inverse(n: int, scale: int) -> None:
    assert to_scaled(from_scaled(n, scale), scale, signed=True) == n


@given(
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=-6, max_value=6),
)
def test_exponent_notation_is_exact(mant: int, scale: int, exp: int) -> None:
    text = f"{mant}e{exp}"
    expect = Decimal(mant).scaleb(exp).scaleb(scale)
    if expect != expect.to_integral_value() or expect > INT64_MAX:
        with pytest.raises(ScaleError):
            to_scaled(text, scale)
    else:
        assert to_scaled(text, scale) == int(expect)


@given(st.text(alphabet="0123456789.-+eE\u0663\uff11 ", max_size=14), st.integers(min_value=0, max_value=10))
def test_fast_and_slow_paths_agree_with_decimal(text: str, scale: int) -> None:
    """Whatever the string, to_scaled either equals exact Decimal arithmetic or refuses it."""
    import re

    plain = re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,4})?", text.strip())
    try:
        got = to_scaled(text, scale, signed=True)
    except ScaleError:
        if plain:
            exact = Decimal(text.strip()).scaleb(scale)
            assert exact != exact.to_integral_value() or abs(exact) > INT64_MAX
        return
    assert plain, f"accepted non-decimal {text!r}"
    assert Decimal(got) == Decimal(text.strip()).scaleb(scale)


@pytest.mark.parametrize(
    "bad", ["\uff11\uff12", "\u0663", "NaN", "nan", "inf", "-Infinity", "", ".", "1.2.3", "0x10", "1,5", " ", "--1"]
)
def test_rejects_non_numbers(bad: str) -> None:
    with pytest.raises(ScaleError):
        to_scaled(bad, 8)


def test_rejects_negative_unless_signed_and_lost_precision_and_overflow() -> None:
    with pytest.raises(ScaleError, match="negative"):
        to_scaled("-0.1", 8)
    assert to_scaled("-0.1", 8, signed=True) == -10_000_000
    assert to_scaled("-0", 8) == 0
    with pytest.raises(ScaleError, match="precision"):
        to_scaled("0.123", 2)
    assert to_scaled("0.1200000", 2) == 12  # trailing zeros lose nothing
    with pytest.raises(ScaleError, match="overflow"):
        to_scaled("92233720368.54775808", 8)
    assert to_scaled("92233720368.54775807", 8) == INT64_MAX


def test_no_float_on_the_path() -> None:
    with pytest.raises(ScaleError):
        to_scaled(0.1, 8)  # type: ignore[arg-type]
    assert to_scaled("0.3", 1) == to_scaled("0.1", 1) + to_scaled("0.2", 1)


def test_scale_of_tick_sizes() -> None:
    assert [scale_of(s) for s in ("0.01000000", "1", "10", "0.5", "1e-8", "0.0001")] == [2, 0, 0, 1, 8, 4]
    with pytest.raises(ScaleError):
        scale_of("0")


# ---------------------------------------------------------------- event ids


@settings(max_examples=50)
@given(st.sampled_from(list(EventType)), st.integers(min_value=0, max_value=10_000))
def test_event_id_deterministic_and_ignores_ingest_metadata(et: EventType, i: int) -> None:
    a = envelope(et, i)
    b = envelope(et, i)
    b.ingest_ts += 12345
    b.shard = "other-shard"
    b.ingest_latency_us = 99
    assert compute_event_id(a) == compute_event_id(b) == a.event_id
    assert len(a.event_id) == 32


@settings(max_examples=50)
@given(st.sampled_from(list(EventType)), st.integers(min_value=0, max_value=10_000))
def test_event_id_changes_with_identity(et: EventType, i: int) -> None:
    base = envelope(et, i)
    for mutate in (
        lambda e: setattr(e, "exchange_ts", e.exchange_ts + 1),
        lambda e: setattr(e, "symbol", "ETH-USDT-PERP"),
        lambda e: setattr(e, "exchange", Exchange.OKX.pb),
        lambda e: setattr(e, "market", Market.SPOT.pb),
        lambda e: setattr(e, "seq", e.seq + 1),
    ):
        other = pb.Envelope()
        other.CopyFrom(base)
        mutate(other)
        assert compute_event_id(other) != base.event_id


def test_event_id_covers_payload() -> None:
    a = envelope(EventType.TRADE, 1)
    b = pb.Envelope()
    b.CopyFrom(a)
    b.trade.qty += 1
    assert compute_event_id(b) != a.event_id


# ---------------------------------------------------------------- enums mirror the proto


def test_python_enums_mirror_proto() -> None:
    for py, proto, prefix in (
        (Exchange, pb.Exchange, "EXCHANGE_"),
        (Market, pb.Market, "MARKET_"),
        (EventType, pb.EventType, "EVENT_TYPE_"),
        (QtyUnit, pb.QtyUnit, "QTY_UNIT_"),
    ):
        proto_names = {n.removeprefix(prefix) for n in proto.keys()} - {"UNSPECIFIED"}  # noqa: SIM118 - a protobuf enum wrapper, not a dict
        assert proto_names == {m.name for m in py}
        for m in py:
            assert m.pb == proto.Value(prefix + m.name)
            assert py.from_pb(m.pb) is m
        with pytest.raises(KeyError):
            py.from_pb(0)  # UNSPECIFIED is no member
    payloads = {f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert payloads == {et.payload_field for et in EventType}


# ---------------------------------------------------------------- symbols


@pytest.mark.parametrize(
    ("exchange", "market", "native", "canonical"),
    [
        ("binance", "spot", "BTCUSDT", "BTC-USDT"),
        ("binance", "spot", "RUNEEUR", "RUNE-EUR"),
        ("binance", "spot", "BTCFDUSD", "BTC-FDUSD"),
        ("binance", "perp", "ETHUSDT", "ETH-USDT-PERP"),
        ("binance", "perp", "BTCUSD_PERP", "BTC-USD-PERP"),
        ("binance", "future", "BTCUSDT_250328", "BTC-USDT-250328"),
        ("bybit", "spot", "XRPUSDT", "XRP-USDT"),
        ("bybit", "perp", "XRPUSDT", "XRP-USDT-PERP"),
        ("bybit", "perp", "BTCPERP", "BTC-USDC-PERP"),
        ("bybit", "perp", "BTCUSD", "BTC-USD-PERP"),
        ("bybit", "future", "BTC-27DEC24", "BTC-USDC-241227"),
        ("okx", "spot", "BTC-USDT", "BTC-USDT"),
        ("okx", "perp", "UNI-USD-SWAP", "UNI-USD-PERP"),
        ("okx", "future", "BTC-USD-220527", "BTC-USD-220527"),
    ],
)
def test_canonical_symbols(exchange: str, market: str, native: str, canonical: str) -> None:
    assert canonical_symbol(exchange, market, native) == canonical
    if not (exchange == "bybit" and market == "future"):
        assert native_symbol(exchange, market, canonical) == native


@pytest.mark.parametrize(
    ("exchange", "market", "native"),
    [
        ("okx", "perp", "BTC-USDT"),
        ("okx", "spot", "BTC-USDT-SWAP"),
        ("binance", "future", "BTCUSDT"),
        ("binance", "spot", "../etc"),
        ("binance", "spot", "BTC USDT"),
        ("binance", "spot", "XYZ"),
        ("bybit", "spot", "'; DROP TABLE x;--"),
    ],
)
def test_bad_symbols_rejected(exchange: str, market: str, native: str) -> None:
    with pytest.raises(SymbolError):
        canonical_symbol(exchange, market, native)


@pytest.mark.parametrize("bad", ["btc-usdt", "BTC/USDT", "BTC-USDT-PERP-X", "BTC--USDT", "", "BTC-USDT-1234"])
def test_validate_canonical_rejects(bad: str) -> None:
    with pytest.raises(SymbolError):
        validate_canonical(bad)


# ---------------------------------------------------------------- topics


def test_topic_names_follow_convention() -> None:
    assert event_topic("raw", "spot", "book_delta", "binance") == "raw.spot.orderbook.delta.binance"
    assert event_topic("processed", "perp", "trade", "okx") == "processed.perp.trades.okx"
    assert event_topic("raw", "spot", "book_snapshot", "binance") == "raw.spot.orderbook.snapshot.binance"
    assert feature_topic("spot", "bybit") == "feature.spot.signals.bybit"
    assert prediction_topic("perp", "mid_1s") == "prediction.perp.mid_1s"
    assert dlq_topic("collector") == "dlq.collector"
    with pytest.raises(ValueError):
        prediction_topic("perp", "../x")
    with pytest.raises(ValueError):
        event_topic("feature", "spot", "trade", "okx")


def test_every_event_topic_parses_back() -> None:
    topics = all_event_topics("raw") + all_event_topics("processed")
    assert len(topics) == len(set(topics))
    for t in topics:
        p = parse_event_topic(t)
        assert event_topic(p.stage, p.market, p.event_type, p.exchange) == t
    assert not any(".funding." in t for t in topics if t.split(".")[1] == "spot")


# ---------------------------------------------------------------- lake rows


@pytest.mark.parametrize("et", list(EventType))
def test_arrow_rows_roundtrip_and_validate(et: EventType) -> None:
    envs = [envelope(et, i) for i in range(5)]
    table = envelopes_to_table(et, envs)
    assert table.schema == TABLES[et].schema
    assert table.num_rows == 5
    assert table.column("exchange_ts").type == pa.timestamp("us", tz="UTC")
    validate_table(TABLES[et], table)
    back = table_to_envelopes(et, table)
    assert [e.SerializeToString(deterministic=True) for e in back] == [
        e.SerializeToString(deterministic=True) for e in envs
    ]
    assert all(compute_event_id(e) == e.event_id for e in back)


def test_validation_catches_bad_rows() -> None:
    import pandera.errors

    envs = [envelope(EventType.TRADE, i) for i in range(3)]
    table = envelopes_to_table(EventType.TRADE, envs)
    bad = table.set_column(
        table.schema.get_field_index("symbol"),
        table.schema.field("symbol"),
        pa.array(["BTC-USDT-PERP", "btc", "BTC-USDT-PERP"]),
    )
    with pytest.raises(pandera.errors.SchemaErrors, match="symbol"):
        validate_table(TABLES[EventType.TRADE], bad)
    snap = envelopes_to_table(EventType.BOOK_SNAPSHOT, [envelope(EventType.BOOK_SNAPSHOT, 0)])
    bids = snap.column("bids").to_pylist()
    bids[0][0]["qty"] = -1
    bad_snap = snap.set_column(
        snap.schema.get_field_index("bids"),
        snap.schema.field("bids"),
        pa.array(bids, type=snap.schema.field("bids").type),
    )
    with pytest.raises(pandera.errors.SchemaErrors):
        validate_table(TABLES[EventType.BOOK_SNAPSHOT], bad_snap)


def test_mixed_types_rejected_by_table_builder() -> None:
    with pytest.raises(ValueError):
        envelopes_to_table(EventType.TRADE, one_of_each(1))

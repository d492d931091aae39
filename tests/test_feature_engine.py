"""The feature processor's event-time core (Engine, no Kafka) builds each window's input columns
as records are offered (features.inputs.InputColumns, the appender events_from_envelopes uses
too). These tests hold it to the batch spec on a workload with contract units (linear and
inverse sizes, converted to base level by level), and restore it from a checkpoint taken in
the middle of open windows: the rows afterwards are identical to an uninterrupted run's."""

from __future__ import annotations

import pytest

from features.compute import compute_features
from features.inputs import InputColumns, events_from_envelopes, events_from_lake
from features.records import table_rows
from features.spec import WINDOW_US
from schemas.arrow_convert import envelopes_to_table
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.model import EventType
from schemas.serde import SCHEMA_HEADER, VERSION_FIELD, encode
from streaming.processors.feature_processor import Engine
from workloads.synthetic import SyntheticMarket

#: symbol -> (qty_unit, contract_value, ccy); the third instrument stays in base units
UNITS = {
    "BTC-USDT": (pb.QTY_UNIT_INVERSE_CONTRACT, "100", "USDT"),
    "ETH-USDT": (pb.QTY_UNIT_LINEAR_CONTRACT, "0.01", "ETH"),
}
LATENESS_US = 500_000


def _with_units(envs: list[pb.Envelope]) -> list[pb.Envelope]:
    out = []
    for src in envs:
        e = pb.Envelope()
        e.CopyFrom(src)
        unit = UNITS.get(e.symbol)
        if unit is not None:
            e.qty_unit, e.contract_value, e.contract_value_ccy = unit
        out.append(stamp_event_id(e))
    return out


@pytest.fixture(scope="module")
def envs() -> list[pb.Envelope]:
    got = _with_units(SyntheticMarket(seed=21).events(9000, 1500))  # ~13.5 s of three instruments
    assert {e.symbol for e in got} >= set(UNITS) | {"SOL-USDT"}
    return got


class _Rec:
    """A consumed record as Engine.restore reads it (confluent_kafka.Message's accessors)."""

    __slots__ = ("_h", "_o", "_v")

    def __init__(self, offset: int, value: bytes | None, headers):
        self._o, self._v, self._h = offset, value, headers

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def headers(self):
        return self._h


def _log(envs: list[pb.Envelope]) -> list[tuple[tuple[str, int], _Rec]]:
    """The input as three partitions (by symbol, as the key would place them), offsets per
    partition; a few records the engine must refuse are mixed in (another schema version, a
    body that is no envelope, a late copy), so offsets of refused records sit among the buffered."""
    parts = {s: ("processed.in", i) for i, s in enumerate(sorted({e.symbol for e in envs}))}
    nxt = dict.fromkeys(parts.values(), 0)
    out = []

    def add(tp, value, headers):
        out.append((tp, _Rec(nxt[tp], value, headers)))
        nxt[tp] += 1

    for i, e in enumerate(envs):
        tp = parts[e.symbol]
        r = encode(e)
        add(tp, r.value, r.headers)
        if i % 997 == 500:
            other = pb.Envelope()
            other.CopyFrom(e)
            other.schema_version = 2  # a writer of the next version states it in the body
            add(tp, other.SerializeToString(), [(SCHEMA_HEADER, b"2"), *r.headers[1:]])
            add(tp, e.SerializeToString(), [(SCHEMA_HEADER, b"2"), *r.headers[1:]])  # in the header only
            add(tp, b"\x01\x02not an envelope", r.headers)
            late = pb.Envelope()
            late.CopyFrom(e)
            late.exchange_ts -= 3 * LATENESS_US
            add(tp, encode(stamp_event_id(late)).value, r.headers)
    return out


def _offer(engine: Engine, recs, rows: list[dict], reasons: list[str], close_every: int = 700) -> None:
    tps = sorted({tp for tp, _ in recs})
    for n, (tp, m) in enumerate(recs, 1):
        reason, _ = engine.offer(tp, m.offset(), m.value(), m.headers())
        if reason is not None:
            reasons.append(reason.split(":")[0])
        if n % close_every == 0:
            rows += engine.close(engine.propose_frontier(tps))


def _stream(recs) -> tuple[list[dict], list[str]]:
    engine, rows, reasons = Engine(LATENESS_US), [], []
    _offer(engine, recs, rows, reasons)
    rows += engine.close(engine.propose_frontier(None))
    return rows, reasons


def test_offered_columns_with_contract_units_equal_the_batch_and_lake_inputs(envs):
    """The engine's windows hold the input table of exactly their envelopes: offered one by
    one (book levels and trades in contracts converted to base at offer), the streamed rows
    equal the spec over events_from_envelopes of the whole input, and over the lake's path
    (events_from_lake: the level columns converted by _base_book), the third construction."""
    recs = _log(envs)
    rows, reasons = _stream(recs)
    assert sorted(set(reasons)) == ["decode", "late"] and reasons.count("decode") == 3 * (len(recs) - len(envs)) // 4
    batch = compute_features(events_from_envelopes(envs))[0]
    assert sorted(rows, key=_row_key) == sorted(table_rows(batch), key=_row_key)
    by_type = {
        et: envelopes_to_table(et, [e for e in envs if e.event_type == et.pb])
        for et in (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)
    }
    lake = events_from_lake(by_type[EventType.TRADE], by_type[EventType.BOOK_SNAPSHOT], by_type[EventType.BOOK_DELTA])
    assert compute_features(lake)[0].equals(batch)
    # the contract path did run: base scales differ from the envelopes' for both unit kinds
    cols = InputColumns()
    for e in envs:
        cols.append(e, e.event_type)
    table = cols.table()
    assert table.equals(events_from_envelopes(envs))
    changed = {
        s for s, ss, e in zip(table["symbol"].to_pylist(), table["size_scale"].to_pylist(), envs) if ss != e.size_scale
    }
    assert changed == set(UNITS)
    assert len(rows) > 30 and sum(r["trade_count"] for r in rows) > 1000


@pytest.mark.parametrize("cut_share", [0.21, 0.5, 0.77])
def test_restore_mid_window_gives_identical_rows(envs, cut_share):
    """A checkpoint taken while windows are open names their records by offset; a fresh
    engine restored from it (the records re-read by offset, their columns built again) and fed
    the rest of the input emits exactly the rows the uninterrupted engine emits after the cut."""
    recs = _log(envs)
    want, _ = _stream(recs)
    cut = int(len(recs) * cut_share)
    first, rows_a, reasons = Engine(LATENESS_US), [], []
    _offer(first, recs[:cut], rows_a, reasons)
    open_windows = sorted((s, ws) for s, ws, _ in first.windows())
    buffered = sum(len(w.offsets) for _, _, w in first.windows())
    assert open_windows and buffered > 100  # the cut is inside open windows
    ckpt = first.snapshot({})
    assert not any(ws + WINDOW_US <= first.frontier_of(s) for s, ws in open_windows)

    by_tp: dict = {}
    for tp, m in recs:
        by_tp.setdefault(tp, []).append(m)

    def fetch(tp, a, b):
        return [m for m in by_tp[tp] if a <= m.offset() < b]

    restored = Engine()
    restored.restore(ckpt, fetch)
    assert sorted((s, ws) for s, ws, _ in restored.windows()) == open_windows
    assert sum(len(w.offsets) for _, _, w in restored.windows()) == buffered
    assert restored.snapshot({})["buffered"] == ckpt["buffered"]
    for s, ws, w in first.windows():
        got, exp = restored.buffers[s][ws].cols.table(), w.cols.table()
        key = [("event_id", "ascending")]
        assert got.sort_by(key).equals(exp.sort_by(key)), ws

    rows_b: list[dict] = []
    _offer(restored, recs[cut:], rows_b, [], close_every=700)
    rows_b += restored.close(restored.propose_frontier(None))
    # the close schedule after the cut differs (counted from the cut): the rows do not depend on it
    assert len(rows_a) + len(rows_b) == len(want)
    assert sorted(rows_a + rows_b, key=_row_key) == sorted(want, key=_row_key)


def _row_key(r: dict) -> tuple:
    return r["symbol"], r["exchange_ts"]


def test_table_of_keeps_rows_and_levels_in_order(envs):
    parts, whole = [InputColumns() for _ in range(3)], InputColumns()
    for i, e in enumerate(envs[:3000]):
        parts[i * 3 // 3000].append(e, e.event_type)
        whole.append(e, e.event_type)
    got = InputColumns.table_of(parts)
    assert got.equals(whole.table()) and all(c.num_chunks == 1 for c in got.columns)
    assert InputColumns.table_of([parts[1]]).equals(parts[1].table())
    assert InputColumns().table().num_rows == 0


def test_schema_version_from_the_body_or_else_the_header(envs):
    """decode's rule, on the engine's one-pass offer: the body's Envelope.schema_version decides
    when stated (the record's headers are then never read); a body that states none (written
    before the field) is decided by the ticklake-schema header, as before; any other version
    is dead-lettered with decode's reason whichever of the two states it."""

    def never():
        raise AssertionError("headers read for a body that states its version")

    e = envs[0]
    r = encode(e)
    assert r.value == e.SerializeToString() + VERSION_FIELD
    engine = Engine(LATENESS_US)
    assert engine.offer(("in", 0), 0, r.value, never) == (None, engine.offer(("in", 0), 1, r.value, None)[1])
    legacy = e.SerializeToString()  # no version in the body
    assert engine.offer(("in", 0), 2, legacy, [(SCHEMA_HEADER, b"1")])[0] is None
    assert engine.offer(("in", 0), 3, legacy, None)[0] is None
    assert engine.offer(("in", 0), 4, legacy, lambda: r.headers)[0] is None
    want = "decode: unsupported schema version b'2', this reader knows 1"
    assert engine.offer(("in", 0), 5, legacy, [(SCHEMA_HEADER, b"2")]) == (want, None)
    assert engine.offer(("in", 0), 6, legacy, lambda: [(SCHEMA_HEADER, b"2")]) == (want, None)
    other = pb.Envelope()
    other.CopyFrom(e)
    other.schema_version = 2
    for headers in (r.headers, None, [(SCHEMA_HEADER, b"2")], never):
        assert engine.offer(("in", 0), 7, other.SerializeToString(), headers) == (want, None)
    assert engine.offer(("in", 0), 8, b"\x01\x02junk", lambda: [(SCHEMA_HEADER, b"2")]) == (want, None)
    assert sum(len(w.offsets) for _, _, w in engine.windows()) == 5

"""Each source (market + exchange) has its own close frontier in the feature processor.

With one frontier over every input partition, a source that had no record yet counted as
idle, the frontier followed the other sources' event time, and when its records came they
were all dead-lettered as late: the OKX capture of 2022 replayed beside the Binance and
Bybit captures of 2024 lost its whole feature stream in the acceptance test (the clean-clone
CI on 556a8b2, docs/decisions.md "A close frontier per source")."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from features.compute import compute_features
from features.inputs import events_from_envelopes
from features.records import decode_row, rows_to_table, table_rows
from features.spec import WINDOW_US
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import EventType, Exchange, Market, event_type_from_pb
from schemas.serde import encode
from schemas.topics import dlq_topic, event_topic, feature_topic
from streaming.processors.feature_processor import (
    NEG_INF,
    Engine,
    FeatureProcessor,
    closed_through,
    source_of,
    state_topic,
)
from tests.support import processing as ps
from tests.support.envelopes import BASE_TS, as_venue, envelope
from workloads.kafka import connection, create_project_topics, produce
from workloads.synthetic import SyntheticMarket

SORT = [("symbol", "ascending"), ("exchange_ts", "ascending")]
TWO_YEARS_US = 2 * 365 * 86_400 * 1_000_000
LATENESS_US = 500_000


def _source(exchange: Exchange, seconds: int, shift_us: int = 0) -> list[pb.Envelope]:
    """A spot book and trades of one venue: a snapshot, deltas every 100 ms, a trade every 250 ms."""
    kw = {"exchange": exchange, "market": Market.SPOT, "symbol": "BTC-USDT", "native": "BTCUSDT"}
    envs = [envelope(EventType.BOOK_SNAPSHOT, 0, **kw)]
    envs += [envelope(EventType.BOOK_DELTA, 100 * k + 32, **kw) for k in range(10 * seconds)]
    envs += [envelope(EventType.TRADE, 250 * k + 227, **kw) for k in range(4 * seconds)]
    return sorted(as_venue(envs, exchange, shift_us), key=lambda e: e.exchange_ts)


def _topic(e: pb.Envelope) -> str:
    return event_topic("processed", "spot", event_type_from_pb(e.event_type), Exchange.from_pb(e.exchange))


def _batch(envs):
    return compute_features(events_from_envelopes(envs))[0].sort_by(SORT)


def _offer(engine: Engine, envs, offsets: dict) -> None:
    for e in envs:
        tp = (_topic(e), 0)
        offsets[tp] = offsets.get(tp, -1) + 1
        reason, _ = engine.offer(tp, offsets[tp], encode(e).value, None)
        assert reason is None, reason


def test_a_source_from_another_era_is_not_late_after_the_others_closed():
    """Binance's 2024 windows close while OKX's partitions have no record (idle); OKX's 2022
    records offered afterwards open and close windows of their own, nothing is late, and the
    rows of both equal the batch spec. One frontier dead-lettered every OKX record."""
    new, old = _source(Exchange.BINANCE, 4), _source(Exchange.OKX, 3, TWO_YEARS_US)
    engine, offsets = Engine(LATENESS_US), {}
    _offer(engine, new, offsets)
    binance = list(offsets)
    moving = [tp for tp in binance if "snapshot" not in tp[0]]  # the snapshot partition: idle
    rows = engine.close(engine.propose_frontier(moving))
    assert len(rows) == 3 and engine.frontier_of("spot:binance") == BASE_TS + 3_932_000 - LATENESS_US
    assert engine.frontier_of("spot:okx") == NEG_INF
    _offer(engine, old, offsets)
    rows += engine.close(engine.propose_frontier([tp for tp in offsets if tp not in binance]))  # binance idle
    rows += engine.close(engine.propose_frontier(None))
    assert engine.late == 0
    got = rows_to_table(rows).sort_by(SORT)
    want = _batch(new + old)
    assert got.equals(want) and {r["exchange"] for r in table_rows(got)} == {"binance", "okx"}


def test_frontiers_survive_a_checkpoint_and_one_recorded_frontier_still_replays():
    """Checkpoints and progress records keep a frontier per source; a record written before
    (one int for every source) restores as the floor of every source, so a chain written by
    the previous version replays to the state it had."""
    new, old = _source(Exchange.BINANCE, 3), _source(Exchange.OKX, 3, TWO_YEARS_US)
    engine, offsets = Engine(LATENESS_US), {}
    _offer(engine, new + old, offsets)
    engine.close({"spot:binance": BASE_TS + 2 * WINDOW_US, "spot:okx": BASE_TS - TWO_YEARS_US + WINDOW_US})
    record = engine.frontier_record()
    assert record == {"spot:binance": BASE_TS + 2 * WINDOW_US, "spot:okx": BASE_TS - TWO_YEARS_US + WINDOW_US}
    assert closed_through(record, BASE_TS + 2 * WINDOW_US, ["spot:binance"])
    assert not closed_through(record, BASE_TS + 2 * WINDOW_US, ["spot:binance", "spot:okx"])
    assert engine.frontier == BASE_TS - TWO_YEARS_US + WINDOW_US  # the oldest source's

    restored = Engine()
    restored.restore({**engine.snapshot({}), "buffered": {}}, lambda tp, a, b: [])
    assert restored.frontier_record() == record

    legacy = Engine(LATENESS_US)
    legacy.close(BASE_TS + WINDOW_US)  # a progress record of the previous version
    assert legacy.frontier_record() == {"*": BASE_TS + WINDOW_US}
    reason, _ = legacy.offer((_topic(old[1]), 0), 0, encode(old[1]).value, None)
    assert reason is not None and reason.startswith("late")  # as that version decided it
    legacy.close({"spot:binance": BASE_TS + 2 * WINDOW_US})
    assert legacy.frontier_of("spot:binance") == BASE_TS + 2 * WINDOW_US
    assert legacy.frontier_of("spot:okx") == BASE_TS + WINDOW_US
    assert closed_through(BASE_TS + WINDOW_US, BASE_TS + WINDOW_US, ["spot:okx"])


def test_source_of_names_the_pair():
    assert source_of((event_topic("processed", "perp", EventType.TRADE, "okx"), 3)) == "perp:okx"
    assert source_of(("something.else", 0)) == "something.else"


def test_the_processor_streams_a_source_that_arrives_after_another_era(broker):
    """On a real broker with the upstream gate: Binance (2024) is read and its windows close
    while OKX's partitions stay empty; then OKX's 2022 records arrive. Every window of both
    is published, equal to the batch features, and dlq.features stays empty."""
    new, old = _source(Exchange.BINANCE, 4), _source(Exchange.OKX, 3, TWO_YEARS_US)
    pairs = [(Market.SPOT, Exchange.BINANCE), (Market.SPOT, Exchange.OKX)]
    create_project_topics(broker.bootstrap, exchanges=("okx",))  # the fixture's are Binance's
    fp = FeatureProcessor(
        connection(broker.bootstrap), pairs, processor_name="two-eras", idle_timeout_ms=500, batch_max_ms=100
    )
    fp.start()
    try:
        produce(broker.bootstrap, [(_topic(e), *_kv(e)) for e in new])
        _pump(fp, lambda: fp.engine.frontier_of("spot:binance") >= new[-1].exchange_ts)
        produce(broker.bootstrap, [(_topic(e), *_kv(e)) for e in old])
        _pump(fp, lambda: fp.engine.frontier_of("spot:okx") >= old[-1].exchange_ts)
    finally:
        fp.close()
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    for source in ("spot:binance", "spot:okx"):  # what an operator sees per source
        got = REGISTRY.get_sample_value(
            "ticklake_processor_source_frontier_us", {"processor": FeatureProcessor.name, "source": source}
        )
        assert got == fp.engine.frontier_of(source), source
    for envs, exchange in ((new, "binance"), (old, "okx")):
        rows = [decode_row(m.value()) for m in ps.read_topics(broker.bootstrap, [feature_topic("spot", exchange)])]
        assert rows_to_table(rows).sort_by(SORT).equals(_batch(envs)), exchange


def _kv(e: pb.Envelope):
    r = encode(e)
    return r.key, r.value, r.headers


def _pump(fp: FeatureProcessor, done, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        fp.run_once()
    assert done(), fp.engine.frontier_record()


def test_kill_9_with_two_eras_then_restart_emits_each_window_once(broker, tmp_path):
    """The per-source frontiers survive a crash: a processor of Binance (2024) and OKX (2022)
    input is killed inside a transaction after its first checkpoint; the restart replays the
    committed chain (frontiers per source in its progress records and checkpoint) and every
    window of both sources is published once with identical content, nothing dead-lettered."""
    create_project_topics(broker.bootstrap, exchanges=("okx",))
    new = SyntheticMarket(seed=8).events(15_000, 400)  # 6 s of three instruments
    old = as_venue(new, Exchange.OKX, TWO_YEARS_US)
    produce(broker.bootstrap, [(_topic(e), *_kv(e)) for e in new + old])
    hold, log = tmp_path / "in-txn", tmp_path / "fp.log"
    args = ["--pair", "spot:binance", "--pair", "spot:okx", "--name", "eras", "--batch-max-ms", "40"]
    args += ["--idle-timeout-ms", "1500"]
    first = ps.run_module(
        "streaming.processors.feature_processor",
        [*args, "--checkpoint-interval-s", "0", "--test-hold-in-txn", str(hold), "--test-hold-after-batches", "3"]
        + ["--test-hold-with-output"],
        broker.bootstrap,
        log,
    )
    ps.wait_for_file(hold, first, log=log)
    ps.kill9(first)
    assert any(b'"t":"ckpt"' in m.value() for m in ps.read_topics(broker.bootstrap, [state_topic("eras")]))
    second = ps.run_module(
        "streaming.processors.feature_processor", [*args, "--idle-exit-s", "15"], broker.bootstrap, log
    )
    ps.wait_exit(second, 240, log)
    assert "restored feature state" in log.read_text()

    copies: dict[str, set[bytes]] = {}
    for m in ps.read_topics(broker.bootstrap, [feature_topic("spot", "binance"), feature_topic("spot", "okx")]):
        copies.setdefault(decode_row(m.value())["event_id"], set()).add(m.value())
    expected = _batch(new + old)
    assert set(copies) == set(expected["event_id"].to_pylist())
    assert all(len(v) == 1 for v in copies.values())
    by = [("exchange", "ascending"), *SORT]
    streamed = rows_to_table(decode_row(next(iter(v))) for v in copies.values())
    assert streamed.sort_by(by).equals(expected.sort_by(by))
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])

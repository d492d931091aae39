"""Feature processor on a real broker: capture raw -> processed -> feature equals the batch
spec exactly; late and malformed records reach dlq.features with reasons; kill -9 inside a
transaction, restart, and every feature event_id is there once with identical content."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
from prometheus_client import REGISTRY

from features.compute import compute_features
from features.inputs import events_from_envelopes
from features.records import decode_row, rows_to_table
from runtime.dlq import parse_dead_letter, record_source
from schemas.ids import stamp_event_id
from schemas.model import EventType, Exchange, Market, event_type_from_pb
from schemas.serde import decode, encode
from schemas.topics import dlq_topic, event_topic, feature_topic
from streaming.processors.feature_processor import FeatureProcessor, state_topic
from streaming.processors.instruments import InstrumentCatalog
from streaming.processors.normalizer import Normalizer, NormalizerService, input_topics_for
from tests.support import processing as ps
from workloads.binance_hour import BTCUSDT_SPOT_INFO, capture_raw_events
from workloads.kafka import connection, produce, produce_raw
from workloads.synthetic import SyntheticMarket

PAIR = [(Market.SPOT, Exchange.BINANCE)]
FEATURES = feature_topic("spot", "binance")
SORT = [("symbol", "ascending"), ("exchange_ts", "ascending")]


def _feature_rows(bootstrap) -> list[dict]:
    return [decode_row(m.value()) for m in ps.read_topics(bootstrap, [FEATURES])]


def _batch(envs) -> pa.Table:
    return compute_features(events_from_envelopes(envs))[0]


def _processed_envelopes(bootstrap, exclude_sources: set[str] = frozenset()) -> list:
    msgs = ps.read_topics(bootstrap, ps.processed_feature_topics())
    return [
        decode(m.value(), m.headers())
        for m in msgs
        if record_source(m.topic(), m.partition(), m.offset()) not in exclude_sources
    ]


def _produce_processed(bootstrap, envs) -> None:
    def items():
        for e in envs:
            r = encode(e)
            yield (
                event_topic("processed", "spot", event_type_from_pb(e.event_type), "binance"),
                r.key,
                r.value,
                r.headers,
            )

    produce(bootstrap, items())


def test_capture_raw_to_features_equals_the_batch_spec(broker):
    cat = InstrumentCatalog()
    cat.load_exchange_info("binance", "spot", BTCUSDT_SPOT_INFO)
    produce_raw(broker.bootstrap, capture_raw_events())
    conn = connection(broker.bootstrap)
    NormalizerService(conn, Normalizer(cat), input_topics_for(["binance"], ["spot"])).run(idle_exit_s=2.0)
    fp = FeatureProcessor(conn, PAIR, idle_timeout_ms=1000, checkpoint_interval_s=2.0)
    fp.run(idle_exit_s=3.0)

    rows = _feature_rows(broker.bootstrap)
    streamed = rows_to_table(rows).sort_by(SORT)
    late_sources = {
        parse_dead_letter(m.value()).source for m in ps.read_topics(broker.bootstrap, [dlq_topic("features")])
    }
    batch = _batch(_processed_envelopes(broker.bootstrap, late_sources))
    assert streamed.num_rows > 300  # ~6 minutes of BTCUSDT, one row per second
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert streamed.equals(batch)
    with_book = [r for r in rows if r["mid_px"] is not None]
    assert len(with_book) > 300 and all(r["best_bid_px"] < r["best_ask_px"] for r in with_book)
    assert sum(r["trade_count"] for r in rows) > 9000


def test_late_and_malformed_records_go_to_the_dlq_with_reasons(broker):
    envs = SyntheticMarket(seed=4).events(6000, 1000)  # 6 s of three instruments
    _produce_processed(broker.bootstrap, envs)
    newest = max(e.exchange_ts for e in envs)
    late = []
    for i, src in enumerate(e for e in envs if e.event_type == EventType.TRADE.pb):
        if i >= 5:
            break
        e = type(src)()
        e.CopyFrom(src)
        e.exchange_ts = newest - 3_000_000 - i  # 3 s behind its partition: late
        e.trade.trade_id = f"late-{i}"
        late.append(stamp_event_id(e))
    _produce_processed(broker.bootstrap, late)
    produce(
        broker.bootstrap,
        [(event_topic("processed", "spot", EventType.TRADE, "binance"), b"BTC-USDT", b"\x01\x02not an envelope", None)],
    )
    late_metric = ("ticklake_processor_late_records_total", {"processor": "feature-processor"})
    late_before = REGISTRY.get_sample_value(*late_metric) or 0.0
    fp = FeatureProcessor(connection(broker.bootstrap), PAIR, allowed_lateness_ms=500, idle_timeout_ms=1000)
    fp.run(idle_exit_s=3.0)
    assert REGISTRY.get_sample_value(*late_metric) - late_before == 5  # exported to Prometheus

    dead = [parse_dead_letter(m.value()) for m in ps.read_topics(broker.bootstrap, [dlq_topic("features")])]
    reasons = sorted(d.reason.split(":")[0] for d in dead)
    assert reasons == ["decode"] + ["late"] * 5
    late_ids = {e.event_id for e in late}
    assert {decode(d.raw).event_id for d in dead if d.reason.startswith("late")} == late_ids
    assert all("behind" in d.reason or "already closed" in d.reason for d in dead if d.reason.startswith("late"))
    assert fp.engine.late == 5 and fp.engine.dlq.counts["late"] == 5
    streamed = rows_to_table(_feature_rows(broker.bootstrap)).sort_by(SORT)
    assert streamed.equals(_batch(envs))  # late records are in no window


def test_kill_9_inside_a_transaction_then_restart_emits_each_window_once(broker, tmp_path):
    envs = SyntheticMarket(seed=8).events(30_000, 400)  # 12 s, three instruments
    _produce_processed(broker.bootstrap, envs)
    hold, log = tmp_path / "in-txn", tmp_path / "fp.log"
    args = ["--pair", "spot:binance", "--name", "crash", "--batch-max-ms", "40", "--idle-timeout-ms", "1500"]
    first = ps.run_module(
        "streaming.processors.feature_processor",
        args
        + [
            "--checkpoint-interval-s",
            "0",
            "--test-hold-in-txn",
            str(hold),
            "--test-hold-after-batches",
            "2",
            "--test-hold-with-output",
        ],
        broker.bootstrap,
        log,
    )
    ps.wait_for_file(hold, first, log=log)
    ps.kill9(first)
    state_records = ps.read_topics(broker.bootstrap, [state_topic("crash")])
    assert any(b'"t":"ckpt"' in m.value() for m in state_records)  # the restart has a checkpoint to use
    # --idle-exit-s ends the run after that long without a commit. Closing the last windows at
    # the end of input waits for the idleness rule (idle timeout, then event-time quiet), which
    # on a loaded machine took longer than 4 s: the run exited with 3 windows still buffered.
    second = ps.run_module(
        "streaming.processors.feature_processor", args + ["--idle-exit-s", "15"], broker.bootstrap, log
    )
    ps.wait_exit(second, 240, log)
    assert "restored feature state" in log.read_text()

    copies: dict[str, set[bytes]] = defaultdict(set)
    msgs = ps.read_topics(broker.bootstrap, [FEATURES])
    for m in msgs:
        copies[decode_row(m.value())["event_id"]].add(m.value())
    expected = _batch(envs)
    assert set(copies) == set(expected["event_id"].to_pylist())  # nothing missing or extra
    assert all(len(v) == 1 for v in copies.values())  # copies are byte-identical
    # The killed transaction had flushed feature rows; this broker shows them to read_committed
    # readers, so some windows are read twice - identical, and deduplicated by event_id.
    assert len(msgs) > len(copies)
    streamed = rows_to_table(decode_row(next(iter(v))) for v in copies.values()).sort_by(SORT)
    assert streamed.equals(expected)
    assert not ps.read_topics(broker.bootstrap, [dlq_topic("features")])


def test_a_partition_with_records_still_to_read_is_never_idle():
    """Idleness needs silence *and* nothing left to read. At replay speed max one input
    partition may go unfetched for seconds while another races ahead in event time; were it
    declared idle then, the frontier would pass its unread records and they would be late,
    so the features would depend on the replay's speed. No broker needed: the engine and the
    idleness rule are the event-time core."""
    from streaming.processors.feature_processor import Engine, live_partitions
    from tests.support.envelopes import BASE_TS, envelope

    busy, lagging = ("processed.spot.trades.binance", 0), ("processed.spot.trades.binance", 1)
    last_seen = {busy: 100.0, lagging: 90.0}  # the lagging one silent for 10 s
    assert live_partitions([busy, lagging], last_seen, 100.0, 2.0, caught_up={busy}) == [busy, lagging]
    assert live_partitions([busy, lagging], last_seen, 100.0, 2.0, caught_up={busy, lagging}) == [busy]
    # No wall-clock escape: however long it is silent, a partition with something left to read
    # holds (the caught-up test understands transaction markers, tests/test_feature_idleness.py).
    assert live_partitions([busy, lagging], last_seen, 1000.0, 2.0, caught_up=set()) == [busy, lagging]

    def run(caught_up: set) -> tuple[int, int]:
        eng = Engine(500_000)
        first = envelope(EventType.TRADE, 0, market=Market.SPOT, symbol="BTC-USDT")
        eng.offer(lagging, 0, *_wire(first))
        for i in range(1, 30):  # 30 s of event time on the busy one
            env = envelope(EventType.TRADE, i * 1000, market=Market.SPOT, symbol="ETH-USDT", native="ETHUSDT")
            eng.offer(busy, i, *_wire(env))
            eng.close(eng.propose_frontier(live_partitions([busy, lagging], last_seen, 100.0, 2.0, caught_up)))
        # ... then the lagging partition's next record (1.2 s after its first) is read.
        reason, _ = eng.offer(
            lagging, 1, *_wire(envelope(EventType.TRADE, 1200, market=Market.SPOT, symbol="BTC-USDT"))
        )
        assert eng.maxts[busy] > BASE_TS + 20_000_000
        return eng.late, 0 if reason is None else 1

    assert run(caught_up={busy}) == (0, 0)  # held open for it: on time
    assert run(caught_up={busy, lagging}) == (1, 1)  # had it been idle: late (as before the fix)


def _wire(env) -> tuple[bytes, list]:
    r = encode(env)
    return r.value, r.headers

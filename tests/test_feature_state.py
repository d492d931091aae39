"""Hourly batch features start an hour from the state the stream had at that hour.

The genuine Binance capture spans two lake hours; its only book snapshot lies in the first,
so every book of the second hour comes from the first. The streaming processor's core
(Engine, window by window, no Kafka) runs over the whole capture; the local batch asset runs
the second hour in both backfill orders: alone first (no carried state: replayed from the
lake's snapshots), then after the first hour (state carried out of it). Both equal the
stream exactly; a batch started from empty books does not.
"""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pytest

from assets.batch_features import features_1s
from features.spec import FEATURE_SCHEMA, FEATURES_TABLE
from runtime.home import resolve_home
from schemas.serde import encode
from streaming.lake import features as fl
from streaming.processors.feature_processor import Engine
from workloads import binance_hour as a

pytestmark = pytest.mark.dagster
H, H_NEXT = a.CAPTURE_HOUR, a.NEXT_HOUR


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    home = resolve_home(tmp_path_factory.mktemp("feature-state") / "home").ensure()
    return a.write_lake(home, a.processed_capture(), seal=(H, H_NEXT))


def streamed(envelopes) -> pa.Table:
    """What the feature processor publishes for the capture: every record offered in
    order, windows closed as event time passes, all closed at the end."""
    engine, rows = Engine(), []
    for i, env in enumerate(envelopes):
        rec = encode(env)
        reason, _ = engine.offer(("in", 0), i, rec.value, rec.headers)
        assert reason is None or "is not a feature input" in reason, reason
        rows += engine.close(engine.propose_frontier([("in", 0)]))
    rows += engine.close(engine.propose_frontier(None))
    return pa.Table.from_pylist(rows, schema=FEATURE_SCHEMA)


def batch_hour(lake, key: str, carry_state: bool = True) -> tuple[pa.Table, str]:
    res = dg.materialize(
        [features_1s],
        partition_key=key,
        resources={"lake": lake.lake},
        run_config={"ops": {"lake__features_1s": {"config": {"carry_state": carry_state}}}},
    )
    assert res.success
    source = res.asset_materializations_for_node("lake__features_1s")[0].metadata["start_state"].value
    table = lake.catalog.load_table(FEATURES_TABLE.identifier)
    return fl.read_hour_rows(table, a.hour_us(key)), source


def test_the_next_hour_matches_the_stream_in_either_backfill_order(lake):
    stream = streamed(lake.envelopes)
    h_next = a.hour_us(H_NEXT)
    want = fl.keep_hour(stream, h_next)
    assert want.num_rows >= 1 and want["mid_px"][0].is_valid  # a book built in the hour before

    cold, source = batch_hour(lake, H_NEXT, carry_state=False)
    assert source == "empty" and not fl.compare_features({"stream": want, "batch": cold})[0]

    replayed, source = batch_hour(lake, H_NEXT)  # backfill runs the later hour first
    assert source == "replayed"
    ok, details = fl.compare_features({"stream": want, "batch": replayed})
    assert ok, details

    first, source = batch_hour(lake, H)
    assert source == "replayed" and fl.compare_features({"stream": fl.keep_hour(stream, a.hour_us(H)), "b": first})[0]
    carried, source = batch_hour(lake, H_NEXT)  # now from the state H closed with
    assert source == "carried"
    ok, details = fl.compare_features({"stream": want, "batch": carried})
    assert ok, details

    # A rerun of H replaces its closing state (one row per instrument, no duplicates).
    batch_hour(lake, H)
    state_table = lake.catalog.load_table(fl.FEATURE_STATE_TABLE.identifier)
    rows = fl.read_range(state_table, h_next, h_next + 1)
    keys = list(zip(*(rows[c].to_pylist() for c in ("exchange", "market", "symbol")), strict=True))
    assert keys and len(keys) == len(set(keys))
    assert (
        fl.read_state(state_table, h_next).to_state()
        == fl.replayed_state(fl.input_tables(lake.catalog), h_next).to_state()
    )

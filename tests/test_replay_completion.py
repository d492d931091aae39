"""The pieces `ticklake up --replay` and the replay_completion sensor are built from, each
against the real part: completed ranges in a real SQLite Iceberg catalog and the
closed-hour rule honouring them, the drain probe on the real broker (plain and
transactional topics), the capture's event-time span read from the genuine capture, the
collectors file written and restored, and the command line.
"""

from __future__ import annotations

import dataclasses
import gzip
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from collectors.config import load_shards
from pipelines.local.cli import build_parser
from pipelines.local.options import UpOptions
from pipelines.local.replay import (
    ReplaySource,
    capture_spans,
    load_source,
    parse_speed,
    restore_collectors,
    save_source,
    write_collectors,
)
from runtime import kafka_config as kc
from streaming.kafka.drain import pending_partitions
from streaming.kafka.source_complete import (
    hour_completed,
    hour_span,
    mark_complete,
    read_complete_ranges,
    withdraw_overlapping,
)
from streaming.lake.state import HOUR_US
from streaming.lake.watermarks import is_hour_closed
from workloads.samples import BINANCE_SPOT_HFT

TICKLAKE = Path(sys.executable).parent / "ticklake"
H = datetime(2024, 8, 8, 23, tzinfo=UTC)
H_US = int(H.timestamp()) * 1_000_000


# --------------------------------------------------------------------------- completion in the catalog


@pytest.fixture
def catalog(ticklake_home):
    from pipelines.local.stack import open_local_catalog

    lake = open_local_catalog(ticklake_home)
    lake.ensure_tables()
    return lake.load_catalog()


def test_completed_ranges_round_trip_and_are_withdrawn_by_an_overlapping_replay(catalog):
    assert read_complete_ranges(catalog) == []
    [a] = mark_complete(catalog, "replay-a", [(H_US, H_US + 2 * HOUR_US)])
    [b] = mark_complete(catalog, "replay-b", [(H_US + 10 * HOUR_US, H_US + 11 * HOUR_US)])
    assert read_complete_ranges(catalog) == [a, b]
    # Marking the same source again replaces its range instead of adding one.
    [a2] = mark_complete(catalog, "replay-a", [(H_US, H_US + 3 * HOUR_US)])
    assert read_complete_ranges(catalog) == [a2, b]
    assert withdraw_overlapping(catalog, H_US + HOUR_US, H_US + HOUR_US + 1) == [a2]
    assert read_complete_ranges(catalog) == [b]
    assert withdraw_overlapping(catalog, H_US, H_US + HOUR_US) == []
    with pytest.raises(ValueError):
        mark_complete(catalog, "empty", [(H_US, H_US)])


def test_captures_far_apart_declare_their_own_hours_not_the_gap_between(catalog):
    """Two capture files months apart: each file's hours are declared, the months between
    them are not (they would otherwise close, and get sealed, thousands of empty hours)."""
    day = 24 * HOUR_US
    spans = [
        (H_US + 100 * day, H_US + 100 * day + HOUR_US),
        (H_US, H_US + HOUR_US),
        (H_US + HOUR_US, H_US + 2 * HOUR_US),
        (H_US + 5, H_US + 10),
    ]
    ranges = mark_complete(catalog, "replay-two", spans)
    assert [(r.from_us, r.until_us) for r in ranges] == [
        (H_US, H_US + 2 * HOUR_US),
        (H_US + 100 * day, H_US + 100 * day + HOUR_US),
    ]
    assert not hour_completed(datetime.fromtimestamp((H_US + 50 * day) / 1e6, UTC), read_complete_ranges(catalog))
    assert hour_completed(datetime.fromtimestamp((H_US + 100 * day) / 1e6, UTC), read_complete_ranges(catalog))


def test_closed_hour_rule_honours_completion_and_still_the_watermark():
    from streaming.kafka.source_complete import CompleteRange

    done = [CompleteRange("r", H_US, H_US + 2 * HOUR_US)]
    grace = timedelta(minutes=5)
    # No watermark at all (a capture never pushes one past its last hour): completion closes.
    assert is_hour_closed(H, None, grace, done)
    assert is_hour_closed(H + timedelta(hours=1), None, grace, done)
    assert not is_hour_closed(H + timedelta(hours=2), None, grace, done)  # outside the range
    assert not is_hour_closed(H - timedelta(hours=1), None, grace, done)
    # Without completion the watermark rule is unchanged.
    assert not is_hour_closed(H, H + timedelta(hours=1, minutes=4), grace)
    assert is_hour_closed(H, H + timedelta(hours=1, minutes=5), grace)


def test_hour_span_covers_whole_hours_with_a_margin():
    first = H_US + 54 * 60_000_000  # 23:54
    last = H_US + HOUR_US - 1  # 23:59:59.999999
    lo, hi = hour_span(first, last)
    assert (lo, hi) == (H_US, H_US + 2 * HOUR_US)  # the margin reaches into 00:00
    lo, hi = hour_span(H_US + 10 * 60_000_000, H_US + 20 * 60_000_000)
    assert (lo, hi) == (H_US, H_US + HOUR_US)


# --------------------------------------------------------------------------- drain probe (real broker)


def _topic(bootstrap: str, partitions: int = 2) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"drain-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics(
        [NewTopic(name, partitions, 1, config={"retention.ms": "3600000", "retention.bytes": "1048576"})]
    )
    fut[name].result(30)
    return name


def test_drain_probe_finds_records_after_a_position_and_none_at_the_end(kafka_broker):
    conn = kc.KafkaConnection(bootstrap_servers=kafka_broker.bootstrap)
    topic = _topic(kafka_broker.bootstrap)
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(3):
        p.produce(topic, value=f"v{i}".encode(), partition=0)
    p.flush(30)
    starts = {(topic, 0): 0, (topic, 1): 0}
    assert pending_partitions(conn, starts) == {(topic, 0): 0}
    assert pending_partitions(conn, {(topic, 0): 2, (topic, 1): 0}) == {(topic, 0): 2}
    assert pending_partitions(conn, {(topic, 0): 3, (topic, 1): 0}) == {}


def test_drain_probe_is_not_fooled_by_a_transaction_commit_marker(kafka_broker):
    """A committed transaction leaves a marker after its records: a consumer whose stored
    offset is right after the last record (not after the marker) has read everything."""
    conn = kc.KafkaConnection(bootstrap_servers=kafka_broker.bootstrap)
    topic = _topic(kafka_broker.bootstrap, partitions=1)
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": f"t-{topic}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(2):
        p.produce(topic, value=f"v{i}".encode(), partition=0)
    p.commit_transaction(30)
    assert pending_partitions(conn, {(topic, 0): 0}) == {(topic, 0): 0}
    assert pending_partitions(conn, {(topic, 0): 2}) == {}  # only the marker is left


# --------------------------------------------------------------------------- replay setup pieces


def test_capture_span_is_the_first_and_last_receive_time_of_the_capture():
    with gzip.open(BINANCE_SPOT_HFT, "rt") as fh:
        stamps = [int(line.split(" ", 1)[0]) for line in fh if line.strip()]
    [(first, last)] = capture_spans(BINANCE_SPOT_HFT)
    assert first == min(stamps) // 1000 and last == max(stamps) // 1000
    lo, hi = hour_span(first, last)
    assert datetime.fromtimestamp(lo / 1e6, UTC) == H
    assert datetime.fromtimestamp(hi / 1e6, UTC) == H + timedelta(hours=2)


def test_collectors_file_is_written_for_the_replay_and_restored_after(tmp_path):
    path = tmp_path / "collectors.yaml"
    path.write_text("shards:\n  - {name: live-0, exchange: okx, market: spot, symbols: [BTC-USDT]}\n")
    emu = {
        "shards": [
            {
                "name": "replay-binance-spot",
                "exchange": "binance",
                "market": "spot",
                "symbols": ["BTC-USDT"],
                "ws_url": "ws://127.0.0.1:1",
                "rest_url": "http://127.0.0.1:2",
            }
        ]
    }
    shards = write_collectors(path, emu)
    assert [s.name for s in load_shards(path)] == ["replay-binance-spot"] == [s.name for s in shards]
    assert load_shards(path)[0].ws_url == "ws://127.0.0.1:1"
    restore_collectors(path)
    assert [s.name for s in load_shards(path)] == ["live-0"]
    # Without a previous file, restoring removes the replay's file.
    write_collectors(path.with_name("other.yaml"), emu)
    restore_collectors(path.with_name("other.yaml"))
    assert not path.with_name("other.yaml").exists()


def test_replay_source_round_trips(tmp_path):
    src = ReplaySource(
        "replay-x",
        "/c",
        "max",
        "http://127.0.0.1:9/_emulator",
        ("s1",),
        1,
        2,
        ((0, HOUR_US), (5 * HOUR_US, 6 * HOUR_US)),
    )
    save_source(tmp_path, src)
    assert load_source(tmp_path) == src
    assert load_source(tmp_path / "nowhere") is None


def test_speed_and_services_options():
    assert parse_speed("max") == "max" and parse_speed("2.5") == "2.5"
    for bad in ("0", "-1", "fast", "nan"):
        with pytest.raises(ValueError):
            parse_speed(bad)
    args = build_parser().parse_args(["up", "--replay", "x", "--speed", "10", "--no-services"])
    assert (str(args.replay), args.speed, args.services) == ("x", "10", False)
    assert build_parser().parse_args(["up"]).services is True
    # each option of `up` is an UpOptions field, stored under its name with its default
    plain = build_parser().parse_args(["up"])
    assert UpOptions(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(UpOptions)}) == UpOptions()
    out = subprocess.run([str(TICKLAKE), "up", "--speed", "2"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "--speed applies to --replay only" in out.stderr
    out = subprocess.run(
        [str(TICKLAKE), "up", "--replay", str(BINANCE_SPOT_HFT), "--speed", "fast"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "--speed must be" in out.stderr


def test_up_names_the_replay_completion_sensor_it_leaves_off_without_a_replay():
    """`ticklake up` without --replay leaves this sensor off by name (it has no work there);
    the name the CLI knows without importing Dagster must be the sensor's."""
    from pipelines.local.replay import COMPLETION_SENSOR
    from pipelines.replay_completion import replay_completion

    assert replay_completion.name == COMPLETION_SENSOR

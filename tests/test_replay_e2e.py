"""`ticklake up --replay CAPTURE --speed max` end to end, through the real console script.

The whole local platform runs from a genuine capture: the emulator serves it, the collector
supervisor (switched on by `up`) launches the shard written into collectors.yaml, the
normalizer turns raw.* into processed.*, the lake sink writes Iceberg, and once the capture
is exhausted and drained the `replay_completion` sensor declares its hours complete and
launches their seal runs. Then `ticklake down` must leave no process behind.

The capture is hftbacktest's Binance spot BTCUSDT file (2024-08-08 23:54 .. 23:59:59 UTC):
the only shipped capture inside the lake's partition range (the hourly partitions start in
2024; the cryptofeed captures are from 2021/2022, so their hours could never be sealed by a
partitioned asset). Expected numbers come from the capture file itself, counted here
independently of the code under test: every `@trade` frame is one trade row.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_stack import processes_of, ticklake

CAPTURE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "binance" / "hftbacktest_spot_btcusdt_20240808.gz"
HOURS = ("2024-08-08-23:00", "2024-08-09-00:00")
TIMEOUT_S = 1800  # a loaded 2-core machine runs ~10 Dagster processes here; correctness, not speed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture_counts() -> dict[str, int]:
    """Frames per stream kind, read straight from the capture file."""
    counts: dict[str, int] = {}
    with gzip.open(CAPTURE, "rt") as fh:
        for line in fh:
            _, _, body = line.partition(" ")
            stream = json.loads(body).get("stream", "")
            kind = stream.split("@", 1)[1] if "@" in stream else "rest"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def gql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{url}/graphql", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


def seal_runs(url: str) -> dict[str, list[str]]:
    """partition key -> statuses of its lake_seal_hour runs."""
    data = gql(url, """{ runsOrError(filter: {pipelineName: "lake_seal_hour"}) {
        ... on Runs { results { status tags { key value } } } } }""")["runsOrError"]["results"]
    out: dict[str, list[str]] = {}
    for run in data:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        out.setdefault(tags.get("dagster/partition", ""), []).append(run["status"])
    return out


def hour_files(table, key: str) -> tuple[list[str], int]:
    from assets.partitions import hour_start
    from streaming.lake_seal import hour_tasks, read_hour

    hour_us = int(hour_start(key).timestamp()) * 1_000_000
    tasks = hour_tasks(table, hour_us)
    return [os.path.basename(t.file.file_path) for t in tasks], read_hour(table, hour_us, tasks).num_rows


@pytest.mark.stack
@pytest.mark.timeout(TIMEOUT_S + 900)  # + up, status polls and down on a loaded machine
def test_up_replay_runs_the_chain_into_the_lake_seals_the_hours_and_down_leaves_nothing(ticklake_home):
    assert CAPTURE.exists(), f"capture missing: {CAPTURE}"
    home = ticklake_home.root
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    expected = capture_counts()
    assert expected["trade"] > 0 and expected["depth@100ms"] > 0

    up = ticklake(home, "up", "--port", str(port), "--replay", str(CAPTURE), "--speed", "max")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "replay-binance-spot" in up.stdout
        shards = (home / "collectors.yaml").read_text()
        assert "replay-binance-spot" in shards and "BTC-USDT" in shards

        # Every sensor and schedule was switched on by `up` (they ship STOPPED).
        info = json.loads(ticklake(home, "status", "--json").stdout)
        assert info["services"]["replay"]["state"] == "running", info["services"]
        instigators = info["dagster_services"]["instigators"]
        names = {i["name"] for i in instigators}
        assert {"collector_supervisor", "stream_processors_supervisor", "lake_sink_supervisor",
                "replay_completion", "lake_hourly_seal", "lake_late_hours"} <= names
        assert {i["status"] for i in instigators} == {"RUNNING"}, instigators

        # Wait until completion was declared and every seal run of the capture's hours ended.
        deadline = time.monotonic() + TIMEOUT_S
        services_seen: set[str] = set()
        while True:
            info = json.loads(ticklake(home, "status", "--json").stdout)
            services_seen |= {r["service"] for r in info.get("dagster_services", {}).get("runs", [])}
            runs = seal_runs(url)
            done = info["services"]["replay"].get("complete") and all(
                runs.get(k) and all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in runs[k]) for k in HOURS)
            if done:
                break
            assert time.monotonic() < deadline, (info["services"]["replay"], runs)
            time.sleep(10)
        assert {"collector:replay-binance-spot", "normalizer", "lake-sink"} <= services_seen, services_seen
        for key in HOURS:
            assert runs[key] == ["SUCCESS"], (key, runs)

        from assets.partitions import hour_start
        from pipelines.stack import open_local_catalog
        from streaming.lake_state import latest_sink_state
        from streaming.source_complete import read_complete_ranges

        lake = open_local_catalog(ticklake_home)
        catalog = lake.load_catalog()
        [complete] = read_complete_ranges(catalog)
        assert complete.source == info["services"]["replay"]["source_id"]
        tables = lake.ensure_tables()

        # raw -> normalizer -> processed -> sink: every trade of the capture is in the lake,
        # once, in the capture's hours, and those hours are in their sealed layout.
        trade_rows = 0
        delta_rows = 0
        for key in HOURS:
            files, rows = hour_files(tables["trades"], key)
            trade_rows += rows
            assert files and all(f.startswith("sealed-") for f in files), (key, files)
            files, rows = hour_files(tables["book_deltas"], key)
            delta_rows += rows
            assert all(f.startswith("sealed-") for f in files), (key, files)
        assert trade_rows == expected["trade"]
        trades = tables["trades"].scan().to_arrow()
        assert trades.num_rows == expected["trade"]
        assert len(set(trades.column("event_id").to_pylist())) == expected["trade"]
        assert set(trades.column("symbol").to_pylist()) == {"BTC-USDT"}
        # Book deltas: the collector drops the diffs the snapshot already covers, so the
        # capture bounds them; the lake holds exactly what the sink's ledger committed.
        assert 0 < delta_rows <= expected["depth@100ms"]
        hours_us = {int(hour_start(k).timestamp()) * 1_000_000 for k in HOURS}
        ledger = latest_sink_state(tables["book_deltas"]).ledger
        assert delta_rows == sum(c.rows for h, c in ledger.items() if h in hours_us)
    finally:
        down = ticklake(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "replay" in down.stdout
    left = processes_of(home)
    assert left == {}, f"processes left behind: {left}"
    assert not (home / "collectors.yaml").exists()  # the replay's shards went with it
    assert not (home / "run" / "replay-source.json").exists()

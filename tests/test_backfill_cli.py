"""`ticklake backfill`: argument parsing, selection and progress rules, and its GraphQL
documents validated against the installed Dagster GraphQL schema (the end-to-end run
against a live stack is in tests/test_ui_backfill.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster_graphql.schema import create_schema
from graphql import parse, validate

from assets.partitions import HOURLY
from pipelines.local import backfill as b
from pipelines.local.cli import build_parser

TICKLAKE = Path(sys.executable).parent / "ticklake"


@pytest.mark.parametrize(
    "text",
    [
        "2024-08-08T23:00",
        "2024-08-08T23",
        "2024-08-08 23:00Z",
        "2024-08-08T23:00:00+00:00",
        "2024-08-09T01:00+02:00",
        "2024-08-08-23:00",
    ],
)
def test_parse_hour_accepts_utc_hours(text):
    assert b.parse_hour(text) == datetime(2024, 8, 8, 23, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2024-08-08T23:30", "yesterday", "2024-08-08T23:00:01"])
def test_parse_hour_refuses_the_rest(text):
    with pytest.raises(b.BackfillError):
        b.parse_hour(text)


def test_hour_keys_are_the_hourly_partition_keys_end_exclusive():
    start, end = b.parse_hour("2024-08-08T23:00"), b.parse_hour("2024-08-09T02:00")
    keys = b.hour_keys(start, end)
    assert keys == ["2024-08-08-23:00", "2024-08-09-00:00", "2024-08-09-01:00"]
    assert b.HOUR_KEY_FORMAT == HOURLY.fmt
    assert all(HOURLY.has_partition_key(k) for k in keys)
    assert b.hour_keys(start, b.parse_hour("2024-08-09T00:00")) == ["2024-08-08-23:00"]
    with pytest.raises(b.BackfillError, match="exclusive"):
        b.hour_keys(start, start)


def test_selection_globs_and_errors():
    hourly = ["lake/trades", "lake/book_deltas", "features/bars_1m"]
    assert b.select_assets(["lake/*"], hourly) == ["lake/book_deltas", "lake/trades"]
    assert b.select_assets(["lake/trades,features/*", "lake/trades"], hourly) == ["features/bars_1m", "lake/trades"]
    with pytest.raises(b.BackfillError, match="matches no hourly"):
        b.select_assets(["lake/nope"], hourly)


def _status(status, runs, counts):
    return {
        "status": status,
        "numPartitions": 2,
        "error": None,
        "runs": [{"runId": str(i), "status": s} for i, s in enumerate(runs)],
        "assetBackfillData": {
            "assetBackfillStatuses": [
                {
                    "__typename": "AssetPartitionsStatusCounts",
                    "assetKey": {"path": ["lake", "trades"]},
                    "numPartitionsTargeted": 2,
                    "numPartitionsInProgress": counts[0],
                    "numPartitionsMaterialized": counts[1],
                    "numPartitionsFailed": counts[2],
                }
            ]
        },
    }


def test_progress_success_needs_every_run_and_partition():
    ok = b.progress_from(_status("COMPLETED_SUCCESS", ["SUCCESS", "SUCCESS"], (0, 2, 0)))
    assert ok.done and ok.succeeded and "2/2 asset partitions" in ok.line()
    running = b.progress_from(_status("REQUESTED", ["SUCCESS", "STARTED"], (1, 1, 0)))
    assert not running.done and not running.succeeded
    failed = b.progress_from(_status("COMPLETED_FAILED", ["SUCCESS", "FAILURE"], (0, 1, 1)))
    assert failed.done and not failed.succeeded and failed.failed_runs == ["1"]
    # Every partition materialized, but a run (its checks) failed: not a success either.
    assert not b.progress_from(_status("COMPLETED_SUCCESS", ["SUCCESS", "FAILURE"], (0, 2, 0))).succeeded
    # Completed, but a run still finishing: not done yet.
    assert not b.progress_from(_status("COMPLETED_SUCCESS", ["SUCCESS", "STARTING"], (0, 2, 0))).done
    # No run at all is not a success.
    assert not b.progress_from(_status("COMPLETED_SUCCESS", [], (0, 0, 0))).succeeded


def test_graphql_documents_match_the_installed_schema():
    schema = create_schema().graphql_schema
    for doc in (b.ASSET_NODES, b.LAUNCH, b.STATUS, b.RUN_FAILURES):
        assert validate(schema, parse(doc)) == [], doc


def test_cli_registration_and_clear_errors(tmp_path):
    args = build_parser().parse_args(["backfill", "2024-08-08T23:00", "2024-08-09T00:00", "--select", "lake/trades"])
    assert args.func is b.cmd_backfill and args.select == ["lake/trades"]
    env_home = tmp_path / "home"
    res = subprocess.run(
        [str(TICKLAKE), "--home", str(env_home), "backfill", "2024-08-08T23:00", "2024-08-09T00:00"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == b.EXIT_NOT_RUNNING
    assert "not running" in res.stderr and "ticklake up" in res.stderr
    res = subprocess.run(
        [str(TICKLAKE), "--home", str(env_home), "backfill", "2024-08-09T00:00", "2024-08-08T23:00"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == b.EXIT_USAGE and "exclusive" in res.stderr

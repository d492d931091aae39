"""The Dagster UI in a real browser: launch a backfill of lake hours from an hourly lake
asset's Partitions page, then prove through GraphQL that it ran and succeeded.

The session's shared `ticklake up --no-services` (tests/support/stack.py: the real local
stack, broker, webserver, daemon, in a fresh TICKLAKE_HOME) runs it; the lake gets three past hours of micro-batch commits (carrying the sink's
bookkeeping: watermark and hour ledger, as the sink writes them) plus later data, so those
hours are closed. Headless Debian Chromium, driven by Playwright (never `playwright
install`), opens the asset graph and the Partitions page of `lake/trades`, clicks
"Materialize…", enters the hour range and launches the backfill. GraphQL then has to show
the backfill completed, every run successful, the three partitions materialized, and the
lake has the hours sealed. A second range goes through `ticklake backfill` (the same
GraphQL path the UI uses) and must be equally visible; it also builds that hour's features
and chart, whose materialization page must show the chart preview as a loaded image (served
by the stack's artifact server). Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from resources import artifact_server
from resources.lake import LakeResource
from runtime.home import TicklakeHome
from schemas.arrow_convert import envelopes_to_table, group_by_event_type
from schemas.tables import TABLES
from streaming.lake.seal import hour_layout
from streaming.lake.state import HOUR_US, HourCount, SinkState
from streaming.lake.writer import LakeFileWriter, commit_files
from tests.support.stack import TICKLAKE
from workloads.synthetic import SyntheticMarket

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui_backfill"
ASSET = "lake/trades"
UI_HOURS = ["2024-08-09-00:00", "2024-08-09-01:00", "2024-08-09-02:00"]
CLI_HOURS = ["2024-08-09-03:00"]
CHART_ASSET = "charts/market_overview"
#: The CLI backfill of CLI_HOURS: the feature inputs' lake hours, the features, the chart.
CLI_SELECT = "lake/trades,lake/book_snapshots,lake/book_deltas,lake/features_1s,charts/*"
LATENESS_US = 5_000_000


# --------------------------------------------------------------------------- lake data


def seed_lake(home: TicklakeHome, batches: int = 13) -> dict[str, dict[int, int]]:
    """Four closed hours (00:00-04:00 on 2024-08-09) and some of 04:00-04:20, committed in
    micro-batches with the sink's summary (offsets, watermark, hour ledger). Returns rows
    per table per hour."""
    lake = LakeResource(uri=home.catalog_uri, warehouse=home.warehouse)
    tables = lake.ensure_tables()
    span_us = 4 * HOUR_US + 20 * 60 * 1_000_000
    n = 1500
    events = SyntheticMarket(seed=3).events(n, spacing_us=span_us // n)
    expected: dict[str, dict[int, int]] = {}
    for et, envs in group_by_event_type(events).items():
        spec = TABLES[et]
        table = tables[spec.name]
        rows = envelopes_to_table(et, envs)
        state = SinkState()
        step = -(-rows.num_rows // batches)
        for s in range(0, rows.num_rows, step):
            part = rows.slice(s, step)
            ts = part.column("exchange_ts").cast(pa.int64()).to_pylist()
            for t in ts:
                h = t - t % HOUR_US
                c = state.ledger.setdefault(h, HourCount())
                c.records += 1
                c.rows += 1
                expected.setdefault(spec.name, {})[h] = expected.get(spec.name, {}).get(h, 0) + 1
            state.max_event_us = max(state.max_event_us or 0, max(ts))
            state.watermark_us = state.max_event_us - LATENESS_US
            table = commit_files(table, LakeFileWriter(table).write(part), state.summary()).refresh()
    return expected


def hour_us(key: str) -> int:
    from assets.partitions import hour_start

    return int(hour_start(key).timestamp()) * 1_000_000


# --------------------------------------------------------------------------- stack helpers


class Gql:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, variables: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.url}/graphql",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.loads(resp.read())
        assert "errors" not in body, body
        return body["data"]


BACKFILLS = """{ partitionBackfillsOrError(limit: 20) { ... on PartitionBackfills { results {
  id status partitionNames isAssetBackfill assetSelection { path } tags { key value }
  runs(limit: 100) { runId status tags { key value } } } } } }"""

MATERIALIZED = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionStats { numMaterialized numFailed numPartitions }
  assetPartitionStatuses { ... on TimePartitionStatuses { ranges { status startKey endKey } } } } } }"""

RUN_PARTITION = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value }
  assetMaterializations { assetKey { path } partition } } } }"""


def materialized_keys(gql: Gql, asset: str) -> set[str]:
    """Partitions Dagster shows as materialized (the Partitions page's green ranges)."""
    import dagster as dg

    from assets.partitions import HOURLY

    node = gql(MATERIALIZED, {"key": {"path": asset.split("/")}})["assetNodeOrError"]
    keys: set[str] = set()
    for r in node["assetPartitionStatuses"]["ranges"]:
        if r["status"] == "MATERIALIZED":
            keys |= set(HOURLY.get_partition_keys_in_range(dg.PartitionKeyRange(r["startKey"], r["endKey"])))
    return keys


def wait_backfill_done(gql: Gql, predicate, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        found = [b for b in gql(BACKFILLS)["partitionBackfillsOrError"]["results"] if predicate(b)]
        if found:
            last = found[0]
            runs_done = all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in last["runs"])
            if (
                last["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
                and runs_done
                and last["runs"]
            ):
                return last
        time.sleep(1)
    raise AssertionError(f"backfill not finished in {timeout_s}s: {last}")


# --------------------------------------------------------------------------- the browser


def launch_backfill_in_ui(page, url: str, asset: str, first: str, last: str) -> str:
    """Partitions page -> "Materialize…" -> the hour range -> "Launch backfill"; returns
    the backfill id the UI reports."""
    page.goto(f"{url}/assets/{asset}?view=partitions")
    page.get_by_text("Partitions Selected").wait_for()
    page.screenshot(path=str(ARTIFACTS / "partitions_before.png"))
    page.get_by_role("button", name="Materialize…").first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    launch = dialog.get_by_role("button", name="Launch backfill")
    # Upstream `lake_tables` was never materialized in this fresh home, so the UI asks first.
    confirm = page.get_by_role("dialog").filter(has_text="Are you sure?").get_by_role("button", name="Confirm")
    confirm.or_(launch).first.wait_for()
    if confirm.is_visible():
        confirm.click()
    launch.wait_for()
    # The chooser shows the last 90 days by default; these hours are older.
    dialog.get_by_text("Show all partitions").click()
    dialog.get_by_role("button", name="All time").wait_for()
    box = dialog.locator("input[type=text]").first
    box.fill(f"[{first}...{last}]")
    box.press("Enter")
    n = len(HOURLY_KEYS_BETWEEN(first, last))
    dialog.get_by_text(re.compile(rf"^{n} partitions$")).wait_for()
    page.screenshot(path=str(ARTIFACTS / "launch_dialog.png"))
    launch.click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+")).first
    toast.wait_for()
    return re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)


def check_chart_preview(page, url: str, partition: str, artifacts_url: str) -> None:
    """The chart's partition on its Partitions page: the `preview` metadata shows the chart as an
    image the browser actually loaded (not a dropped `data:` URL), screenshotted."""
    page.goto(f"{url}/assets/{CHART_ASSET}?view=partitions")
    page.get_by_placeholder("Filter by name").fill(partition[:10])
    page.get_by_text(partition, exact=True).first.click()
    page.get_by_text("preview", exact=True).first.wait_for()
    show = page.get_by_text("[Show Markdown]")
    if show.count():  # long markdown opens in a dialog
        show.first.click()
    img = page.locator(f"img[src^='{artifacts_url}/']").first
    img.wait_for()
    img.scroll_into_view_if_needed()
    size = page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0 ? [el.naturalWidth, el.naturalHeight] : null",
        arg=img.element_handle(),
    ).json_value()
    assert size == [480, 360], size
    page.screenshot(path=str(ARTIFACTS / "chart_preview.png"))


def HOURLY_KEYS_BETWEEN(first: str, last: str) -> list[str]:
    import dagster as dg

    from assets.partitions import HOURLY

    return HOURLY.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))


# --------------------------------------------------------------------------- the test


@pytest.mark.stack
@pytest.mark.timeout(2700)
def test_backfill_launched_from_the_partitions_page_completes(shared_stack):
    """On the shared stack, services off (live collectors cannot reach venues here, and this
    test is about the UI); the stack is stopped, and checked to leave nothing, after its last user."""
    from playwright.sync_api import expect, sync_playwright

    from assets.lake_hours import run_checks
    from schemas.tables import TABLES_BY_NAME

    assert Path(CHROMIUM).exists(), "Debian chromium is required (apt-get install chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ticklake_home = shared_stack.home
    home = ticklake_home.root
    expected = seed_lake(ticklake_home)
    assert all(expected["trades"][hour_us(k)] > 0 for k in UI_HOURS + CLI_HOURS)
    files_before = {
        k: len(
            hour_layout(
                LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse).ensure_tables()[
                    "trades"
                ],
                hour_us(k),
            ).files
        )
        for k in UI_HOURS
    }
    assert all(n > 1 for n in files_before.values()), files_before  # micro-batch layout to compact
    url = shared_stack.url
    gql = Gql(url)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(120_000)
        try:
            # The asset graph: the whole lineage, and lake/trades with its neighbours.
            page.goto(f"{url}/asset-groups")
            page.get_by_text("Global asset lineage").wait_for()
            page.get_by_text("clickhouse", exact=True).first.wait_for()
            expect(page.get_by_text("fetching statuses")).to_have_count(0, timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))
            page.goto(f"{url}/assets/{ASSET}?view=lineage")
            page.get_by_text("lake_tables", exact=True).first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "asset_lineage.png"))

            backfill_id = launch_backfill_in_ui(page, url, ASSET, UI_HOURS[0], UI_HOURS[-1])
            done = wait_backfill_done(gql, lambda b: b["id"] == backfill_id, timeout_s=1500)
            assert done["isAssetBackfill"] and done["assetSelection"] == [{"path": ASSET.split("/")}]
            assert sorted(done["partitionNames"]) == UI_HOURS
            assert {"key": "dagster/from_ui", "value": "true"} in done["tags"]
            assert done["status"] == "COMPLETED_SUCCESS", done
            assert [r["status"] for r in done["runs"]] == ["SUCCESS"] * len(UI_HOURS), done["runs"]
            partitions = sorted(
                next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in done["runs"]
            )
            assert partitions == UI_HOURS
            for r in done["runs"]:
                run = gql(RUN_PARTITION, {"id": r["runId"]})["runOrError"]
                assert [(m["assetKey"]["path"], m["partition"]) for m in run["assetMaterializations"]] == [
                    (ASSET.split("/"), next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition"))
                ]
            assert materialized_keys(gql, ASSET) == set(UI_HOURS)

            # The Partitions page shows them as materialized.
            page.goto(f"{url}/assets/{ASSET}?view=partitions")
            page.get_by_text(f"Materialized ({len(UI_HOURS)})").wait_for()
            page.screenshot(path=str(ARTIFACTS / "partitions_after.png"))
            # One backfilled hour in detail: the seal's metadata (rows, files before/after).
            page.get_by_placeholder("Filter by name").fill(UI_HOURS[0][:10])
            page.get_by_text(UI_HOURS[0], exact=True).first.click()
            page.get_by_text("files_before", exact=True).wait_for()
            expect(page.get_by_text("min_event_time", exact=True)).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "partition_detail.png"))
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            browser.close()

    # `ticklake backfill` launches the same kind of backfill and waits for it: a closed
    # hour succeeds (exit 0), an hour still open fails its seal (exit 1).
    def backfill(first: str, last: str, select: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(TICKLAKE), "backfill", first, last, "--select", select, "--poll", "1"],
            env={**os.environ, "TICKLAKE_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    ok = backfill("2024-08-09T03:00", "2024-08-09T04:00", CLI_SELECT)
    bad = backfill("2024-08-09T04:00", "2024-08-09T05:00", ASSET)
    ok_out, ok_err = ok.communicate(timeout=1500)
    bad_out, bad_err = bad.communicate(timeout=1500)
    assert ok.returncode == 0, ok_out + ok_err
    assert re.search(r"backfill \w+: 1 hour \(", ok_out) and "COMPLETED_SUCCESS" in ok_out
    assert re.search(r"succeeded: \d+ runs?", ok_out), ok_out
    assert bad.returncode == 1, bad_out + bad_err
    assert "COMPLETED_FAILED" in bad_err or "FAILED" in bad_err, bad_err
    assert "failed run" in bad_err and "is not closed yet" in bad_err, bad_err  # the reason, for the user
    cli_id = re.search(r"backfill (\w+): 1 hour \(", ok_out).group(1)
    cli = wait_backfill_done(gql, lambda b: b["id"] == cli_id, timeout_s=60)
    assert cli["partitionNames"] == CLI_HOURS and cli["status"] == "COMPLETED_SUCCESS"
    assert materialized_keys(gql, ASSET) == set(UI_HOURS + CLI_HOURS)
    assert materialized_keys(gql, CHART_ASSET) == set(CLI_HOURS)

    # The chart of that hour, previewed on its materialization in the UI.
    artifacts_url = artifact_server.recorded_url(ticklake_home)
    assert artifacts_url, "ticklake up started no artifact server"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(120_000)
        try:
            check_chart_preview(page, url, CLI_HOURS[0], artifacts_url)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure_chart.png"))
            raise
        finally:
            browser.close()

    # The lake agrees: the backfilled hours are sealed, hold every row, and pass their checks.
    lake = LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)
    table = lake.ensure_tables()["trades"]
    for key in UI_HOURS + CLI_HOURS:
        layout = hour_layout(table, hour_us(key))
        assert layout.is_sealed and layout.rows == expected["trades"][hour_us(key)], key
        assert len(layout.files) < files_before.get(key, len(layout.files) + 1), key
        results = run_checks(TABLES_BY_NAME["trades"], lake, key)
        assert all(c.passed for c in results), [(c.check_name, c.description) for c in results]
    assert not hour_layout(table, hour_us("2024-08-09-04:00")).is_sealed

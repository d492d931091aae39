"""The hourly chain builds itself: the HOURLY_CHAIN automation condition of the real code
location (pipelines.definitions.defs), evaluated by Dagster's own evaluator (the one the
automation sensor runs in the daemon) against a real SQLite instance.

Runs are recorded in the instance the way the daemon and a run worker record them (a run
created from the real job with its execution plan, so its planned steps count as in
progress; then the worker's materialization, check and run-success events), without doing
the work itself: what is under test is *when* the chain is requested, not the assets'
bodies (each has its own tests)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.automation_tick_evaluation_context import (
    build_run_requests,
)
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from assets.automation import HOURLY_CHAIN
from assets.lake_hours import LAKE_HOUR_ASSETS, LAKE_HOUR_CHECKS
from assets.ml import GROUP as ML_GROUP
from assets.ml import PREDICTIONS_KEY as ML_PREDICTIONS_KEY
from pipelines.hourly_chain import CHAIN_ASSETS, hourly_chain_automation
from pipelines.lake_schedules import lake_seal_job
from pipelines.launch_tags import LAUNCHED_BY_TAG
from pipelines.local import backfill as backfill_cli
from pipelines.ml_automation import ML_TRAINING_LAUNCHER

H1, H2, H3 = "2024-08-09-01:00", "2024-08-09-02:00", "2024-08-09-03:00"


@pytest.fixture(scope="module")
def defs():
    from pipelines.definitions import defs

    return defs


@pytest.fixture
def instance(ticklake_home):
    with dg.instance_for_test() as inst:
        yield inst


def chain_keys(defs) -> set[dg.AssetKey]:
    """Every hourly asset downstream of the lake hour assets, from the real asset graph, except
    the ML area's: datasets and models are daily and built on request, and an hour of
    predictions exists only once a model serves (docs/decisions.md, ML area)."""
    graph = defs.resolve_asset_graph()
    lake = {a.key for a in LAKE_HOUR_ASSETS.values()}
    downstream = dg.AssetSelection.assets(*lake).downstream(include_self=False)
    on_request = dg.AssetSelection.groups(ML_GROUP)
    return {k for k in (downstream - on_request).resolve(graph) if graph.get(k).partitions_def is not None}


class Tick:
    """Successive evaluations sharing one cursor, as the sensor's ticks do."""

    def __init__(self, defs, instance):
        self.defs, self.instance, self.cursor = defs, instance, None
        self.selection = hourly_chain_automation.asset_selection

    def __call__(self) -> dict[dg.AssetKey, set[str]]:
        res = dg.evaluate_automation_conditions(
            self.defs, self.instance, asset_selection=self.selection, cursor=self.cursor
        )
        self.cursor = res.cursor
        self.last = res
        return {
            k: set(res.get_requested_partitions(k)) for k in chain_keys(self.defs) if res.get_requested_partitions(k)
        }


# ----------------------------------------------------------------------------- recording runs


def start_run(instance, job: dg.JobDefinition, partition: str, keys=None, tags=None) -> DagsterRun:
    """A run as the daemon creates it: from the job's execution plan, so every planned asset
    (and check) partition is in progress until the run writes its events."""
    return instance.create_run_for_job(
        job_def=job,
        asset_selection=set(keys) if keys else None,
        tags={"dagster/partition": partition, **(tags or {})},
        status=DagsterRunStatus.STARTED,
    )


def materialize(instance, run: DagsterRun, key: dg.AssetKey, partition: str) -> None:
    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name=run.job_name,
            event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset_key=key, partition=partition)),
        ),
        run_id=run.run_id,
    )


def check_result(instance, run: DagsterRun, check_key: dg.AssetCheckKey, partition: str, passed: bool) -> None:
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=check_key.asset_key, asset_partitions=[partition]), limit=1
    ).records[0]
    evaluation = dg.AssetCheckEvaluation(
        asset_key=check_key.asset_key,
        check_name=check_key.name,
        passed=passed,
        partition=partition,
        target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
        ),
    )
    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION.value,
            job_name=run.job_name,
            event_specific_data=evaluation,
        ),
        run_id=run.run_id,
    )


def finish(instance, run: DagsterRun) -> None:
    instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name), run_id=run.run_id
    )
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.SUCCESS


def seal(instance, defs, partition: str, tables=None, failing: tuple[str, str] | None = None, tags=None) -> None:
    """A whole seal run of `lake_seal_hour` (or of some tables, as the late-hours sensor
    requests): materializations, then the hour's checks; `failing` = (table, check) fails."""
    job = defs.get_job_def(lake_seal_job.name)
    names = tables or sorted(LAKE_HOUR_ASSETS)
    keys = [LAKE_HOUR_ASSETS[n].key for n in names]
    run = start_run(instance, job, partition, keys if tables else None, tags)
    for name, key in zip(names, keys, strict=True):
        materialize(instance, run, key, partition)
        for check_key in LAKE_HOUR_CHECKS[name].check_keys:
            check_result(instance, run, check_key, partition, passed=(name, check_key.name) != failing)
    finish(instance, run)


def topo_order(defs, keys) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    return [k for level in graph.toposorted_asset_keys_by_level for k in sorted(level) if k in keys]


# ----------------------------------------------------------------------------- tests


def test_every_hourly_product_carries_the_chain_condition(defs):
    graph = defs.resolve_asset_graph()
    chain = chain_keys(defs)
    assert {a.key for a in CHAIN_ASSETS} == chain
    assert {
        dg.AssetKey(["lake", "features_1s"]),
        dg.AssetKey(["spark", "features_1s"]),
        dg.AssetKey(["clickhouse", "trades"]),
        dg.AssetKey(["lake", "bars_1m"]),
        dg.AssetKey(["charts", "market_overview"]),
    } <= chain
    for key in chain:
        assert graph.get(key).automation_condition == HOURLY_CHAIN, key
    # The lake hours themselves are sealed by the schedule and sensors, not by automation.
    assert all(graph.get(a.key).automation_condition is None for a in LAKE_HOUR_ASSETS.values())
    # The automation sensor is in the code location, targets exactly the chain and ships off.
    sensor = defs.get_sensor_def(hourly_chain_automation.name)
    assert sensor.asset_selection.resolve(graph) == chain
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_every_launcher_of_work_tags_its_runs(defs):
    """The local run queue caps work by LAUNCHED_BY_TAG (dagster.yaml): an automation sensor or a
    schedule of work whose runs lacked it would run beside the cap. (The seal schedule's and the
    late-hours sensor's requests are checked in tests/test_lake_schedules.py.)"""
    automation = [s for s in defs.sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
    assert {s.name for s in automation} >= {"hourly_chain_automation", "ml_training_automation"}
    assert all(LAUNCHED_BY_TAG in s.run_tags for s in automation), [(s.name, s.run_tags) for s in automation]
    assert defs.get_sensor_def("ml_training_automation").run_tags[LAUNCHED_BY_TAG] == ML_TRAINING_LAUNCHER
    assert LAUNCHED_BY_TAG in defs.get_schedule_def("lake_daily_maintenance").tags
    # dagster.yaml (YAML: it cannot import the names) caps runs by this same tag key, and
    # training by this same launcher value.
    limits = yaml.safe_load((Path(__file__).resolve().parents[1] / "dagster.yaml").read_text())["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    assert {"key": LAUNCHED_BY_TAG, "limit": 2} in limits
    assert {"key": LAUNCHED_BY_TAG, "value": ML_TRAINING_LAUNCHER, "limit": 1} in limits


@pytest.mark.dagster
def test_sealed_hour_requests_its_chain_once_in_lineage_order(defs, instance):
    tick = Tick(defs, instance)
    chain = chain_keys(defs)
    assert tick() == {}  # first evaluation: nothing happened

    job = defs.get_job_def(lake_seal_job.name)
    run = start_run(instance, job, H1)  # the seal run of H1 is in progress
    assert tick() == {}
    for name in sorted(LAKE_HOUR_ASSETS)[:3]:  # ... and part-way through
        materialize(instance, run, LAKE_HOUR_ASSETS[name].key, H1)
    assert tick() == {}, "requested while upstream partitions were still being sealed"
    for name in sorted(LAKE_HOUR_ASSETS)[3:]:
        materialize(instance, run, LAKE_HOUR_ASSETS[name].key, H1)
    for name in sorted(LAKE_HOUR_ASSETS):
        for check_key in LAKE_HOUR_CHECKS[name].check_keys:
            check_result(instance, run, check_key, H1, passed=True)
    finish(instance, run)

    requested = tick()
    assert requested == {k: {H1} for k in chain}  # the whole chain of that hour, nothing else
    # One run for the hour, every product in it: Dagster executes it in dependency order.
    runs = build_run_requests(tick.last._requested_subsets, defs.resolve_asset_graph(), {}, emit_backfills=True)
    assert len(runs) == 1 and runs[0].partition_key == H1 and set(runs[0].asset_selection) == chain
    # No explicit check list: every check of the selected assets (the parity check) runs with them.
    assert runs[0].asset_check_keys is None

    # The run is launched: no second request while it is queued/running ...
    chain_run = start_run(instance, defs.resolve_implicit_global_asset_job_def(), H1, chain)
    assert tick() == {}
    # ... and none after it built everything: updates made inside the run do not retrigger.
    for key in topo_order(defs, chain):
        materialize(instance, chain_run, key, H1)
    finish(instance, chain_run)
    assert tick() == {}
    assert tick() == {}

    # A late-hours reseal of one table (late rows) rebuilds what depends on it.
    seal(instance, defs, H1, tables=["trades"])
    assert tick() == {k: {H1} for k in chain}


@pytest.mark.dagster
def test_failed_blocking_check_holds_the_hour_until_it_is_resealed(defs, instance):
    tick = Tick(defs, instance)
    chain = chain_keys(defs)
    tick()
    seal(instance, defs, H2, failing=("trades", "row_count_matches_source"))
    assert tick() == {}, "built on an hour whose blocking check failed"
    seal(instance, defs, H2, tables=["trades"])  # resealed; its checks pass now
    assert tick() == {k: {H2} for k in chain}


@pytest.mark.dagster
def test_backfill_in_progress_is_not_fought(defs, instance):
    """A user's backfill of the whole chain: its seal lands while the backfill still has to
    build the products, so automation leaves them to it, and does not rebuild them after."""
    tick = Tick(defs, instance)
    chain = chain_keys(defs)
    graph = defs.resolve_asset_graph()
    tick()
    lake = {a.key for a in LAKE_HOUR_ASSETS.values()}
    with partition_loading_context(effective_dt=datetime.now(UTC), dynamic_partitions_store=instance):
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id="userbackfill",
            asset_graph=graph,
            partition_names=[H3],
            asset_selection=sorted(lake | chain),
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        )
    instance.add_backfill(backfill)
    tags = {"dagster/backfill": backfill.backfill_id}
    seal(instance, defs, H3, tags=tags)
    assert tick() == {}, "automation requested partitions a backfill is about to build"
    run = start_run(instance, defs.resolve_implicit_global_asset_job_def(), H3, chain, tags)
    for key in topo_order(defs, chain):
        materialize(instance, run, key, H3)
    finish(instance, run)
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    assert tick() == {}
    assert tick() == {}


def test_backfill_default_selection_is_the_whole_hourly_chain(defs):
    graph = defs.resolve_asset_graph()
    hourly = sorted(
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).partitions_def is not None
        and getattr(graph.get(k).partitions_def, "fmt", None) == backfill_cli.HOUR_KEY_FORMAT
    )
    selected = [
        a
        for a in backfill_cli.select_assets(list(backfill_cli.DEFAULT_SELECTION), hourly)
        if a not in backfill_cli.DEFAULT_EXCLUDED
    ]
    assert backfill_cli.DEFAULT_EXCLUDED == (ML_PREDICTIONS_KEY.to_user_string(),)
    lake = {a.key.to_user_string() for a in LAKE_HOUR_ASSETS.values()}
    assert set(selected) == lake | {k.to_user_string() for k in chain_keys(defs)}
    assert "charts/market_overview" in selected

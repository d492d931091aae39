"""A sealed hour trains its day and lands its predictions by itself: the ML_DAILY and
prediction_hours automation conditions of the real code location, evaluated by Dagster's
own evaluator (what the two ML automation sensors run in the daemon) against a real SQLite
instance, with runs recorded the way the daemon and a run worker record them
(tests/test_hourly_chain_automation.py's helpers). What is under test is *when* things are
requested; the assets' bodies have their own tests (tests/test_ml.py)."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.batch_features import BATCH_FEATURES_KEY
from assets.ml import (
    CHECK_BASELINE,
    CHECK_LEAKAGE,
    CHECK_REBUILD,
    DATASET_KEY,
    PREDICTIONS_KEY,
    champion_key,
    model_key,
)
from ml.dataset import HORIZONS_S
from pipelines.ml_automation import ml_predictions_automation, ml_training_automation
from tests.test_hourly_chain_automation import check_result, finish, materialize, start_run

#: A replayed hour of a past day (the Binance capture's), and an hour of another day.
HOUR, DAY = "2024-08-08-23:00", "2024-08-08"
OTHER_HOUR = "2024-12-01-00:00"
TRAINING = {DATASET_KEY, *(model_key(h) for h in HORIZONS_S), *(champion_key(h) for h in HORIZONS_S)}


@pytest.fixture(scope="module")
def defs():
    from pipelines.definitions import defs

    return defs


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


class Tick:
    """Successive evaluations of one sensor's target sharing one cursor, as its ticks do."""

    def __init__(self, defs, instance, sensor):
        self.defs, self.instance, self.cursor, self.selection = defs, instance, None, sensor.asset_selection

    def __call__(self) -> dict[dg.AssetKey, set[str]]:
        res = dg.evaluate_automation_conditions(
            self.defs, self.instance, asset_selection=self.selection, cursor=self.cursor
        )
        self.cursor = res.cursor
        keys = self.selection.resolve(self.defs.resolve_asset_graph())
        return {k: set(res.get_requested_partitions(k)) for k in keys if res.get_requested_partitions(k)}


def features_built(defs, instance, hour: str) -> None:
    run = start_run(instance, defs.resolve_implicit_global_asset_job_def(), hour, {BATCH_FEATURES_KEY})
    materialize(instance, run, BATCH_FEATURES_KEY, hour)
    finish(instance, run)


def test_ml_assets_carry_conditions_and_the_sensors_ship_off(defs):
    graph = defs.resolve_asset_graph()
    for key in (*TRAINING, PREDICTIONS_KEY):
        assert graph.get(key).automation_condition is not None, key
    assert ml_training_automation.asset_selection.resolve(graph) == TRAINING
    assert ml_predictions_automation.asset_selection.resolve(graph) == {PREDICTIONS_KEY}
    for s in (ml_training_automation, ml_predictions_automation):
        assert defs.get_sensor_def(s.name).default_status == dg.DefaultSensorStatus.STOPPED


@pytest.mark.dagster
def test_a_replayed_hour_trains_its_past_day_registers_and_relands_predictions(defs, instance):
    train, predict = Tick(defs, instance, ml_training_automation), Tick(defs, instance, ml_predictions_automation)
    assert train() == {} and predict() == {}

    features_built(defs, instance, HOUR)
    # The day is in the past and 23 of its hours have no features: it is built all the same,
    # the whole training chain in one tick (Dagster runs it in dependency order).
    assert train() == {k: {DAY} for k in TRAINING}
    assert predict() == {PREDICTIONS_KEY: {HOUR}}  # no champion yet: lands what there is

    # The day's run: the dataset passes its checks, the 1 s model beats the baseline, the
    # 10 s model does not (its champion is blocked), the 60 s day is too small (skipped).
    job = defs.resolve_implicit_global_asset_job_def()
    run = start_run(instance, job, DAY, TRAINING)
    assert train() == {}, "requested while the day's run is in progress"
    assert predict() == {}, "predictions requested while a champion of the day was being registered"
    materialize(instance, run, DATASET_KEY, DAY)
    for name in (CHECK_LEAKAGE, CHECK_REBUILD):
        check_result(instance, run, dg.AssetCheckKey(DATASET_KEY, name), DAY, passed=True)
    for h, passed in ((1, True), (10, False)):
        materialize(instance, run, model_key(h), DAY)
        check_result(instance, run, dg.AssetCheckKey(model_key(h), CHECK_BASELINE), DAY, passed=passed)
    materialize(instance, run, champion_key(1), DAY)
    finish(instance, run)

    assert train() == {}, "the run's own updates retriggered the day"
    # The registered champion re-lands the day's hour of predictions; once.
    assert predict() == {PREDICTIONS_KEY: {HOUR}}
    pred = start_run(instance, job, HOUR, {PREDICTIONS_KEY})
    materialize(instance, pred, PREDICTIONS_KEY, HOUR)
    finish(instance, pred)
    assert predict() == {}

    # A late 10 s model that now passes (e.g. a rebuilt dataset) is registered on its own.
    run = start_run(instance, job, DAY, {model_key(10)})
    materialize(instance, run, model_key(10), DAY)
    check_result(instance, run, dg.AssetCheckKey(model_key(10), CHECK_BASELINE), DAY, passed=True)
    finish(instance, run)
    assert train() == {champion_key(10): {DAY}}

    # Another day's hour: its own day, nothing of the first.
    features_built(defs, instance, OTHER_HOUR)
    assert train() == {k: {OTHER_HOUR[:10]} for k in TRAINING}
    assert predict() == {PREDICTIONS_KEY: {OTHER_HOUR}}


@pytest.mark.dagster
def test_a_dataset_failing_its_blocking_check_trains_nothing(defs, instance):
    train = Tick(defs, instance, ml_training_automation)
    train()
    job = defs.resolve_implicit_global_asset_job_def()
    run = start_run(instance, job, DAY, {DATASET_KEY})
    materialize(instance, run, DATASET_KEY, DAY)
    check_result(instance, run, dg.AssetCheckKey(DATASET_KEY, CHECK_LEAKAGE), DAY, passed=False)
    finish(instance, run)
    assert train() == {}, "models trained on a dataset whose leakage check failed"


def failed(instance, run) -> None:
    """The run ends in failure, as a run worker records it."""
    from dagster._core.events import DagsterEvent, DagsterEventType

    instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.RUN_FAILURE.value, job_name=run.job_name), run_id=run.run_id
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


@pytest.mark.dagster
def test_a_champion_registered_just_after_the_hour_landed_relands_it(defs, instance):
    """The race seen in CI: the hour's predictions land, then (before the next tick) the day's
    champion is registered. Both are new at the same tick; the landing came first, so it did
    not hold the champion's scores and the hour must be landed again."""
    train, predict = Tick(defs, instance, ml_training_automation), Tick(defs, instance, ml_predictions_automation)
    assert train() == {} and predict() == {}
    features_built(defs, instance, HOUR)
    assert train() == {k: {DAY} for k in TRAINING}
    assert predict() == {PREDICTIONS_KEY: {HOUR}}

    job = defs.resolve_implicit_global_asset_job_def()
    pred = start_run(instance, job, HOUR, {PREDICTIONS_KEY})
    materialize(instance, pred, PREDICTIONS_KEY, HOUR)
    finish(instance, pred)
    day = start_run(instance, job, DAY, {champion_key(1)})
    materialize(instance, day, champion_key(1), DAY)
    finish(instance, day)
    assert predict() == {PREDICTIONS_KEY: {HOUR}}, "an hour landed before its champion counted as handled"
    pred = start_run(instance, job, HOUR, {PREDICTIONS_KEY})
    materialize(instance, pred, PREDICTIONS_KEY, HOUR)
    finish(instance, pred)
    assert predict() == {}, "landed after the champion, requested again"


@pytest.mark.dagster
def test_an_hour_landed_after_the_champion_is_not_requested_again(defs, instance):
    """A landing in progress when the champion is registered re-reads the serving champions
    before it returns (assets/ml.py), so a landing that ends after the registration holds its
    scores: one run, not two. A failed landing is not retried in a loop."""
    predict = Tick(defs, instance, ml_predictions_automation)
    assert predict() == {}
    features_built(defs, instance, HOUR)
    assert predict() == {PREDICTIONS_KEY: {HOUR}}

    job = defs.resolve_implicit_global_asset_job_def()
    pred = start_run(instance, job, HOUR, {PREDICTIONS_KEY})
    day = start_run(instance, job, DAY, {champion_key(1)})
    materialize(instance, day, champion_key(1), DAY)
    finish(instance, day)
    materialize(instance, pred, PREDICTIONS_KEY, HOUR)
    finish(instance, pred)
    assert predict() == {}

    # A second champion whose landing fails: requested once, then left to the user.
    day = start_run(instance, job, DAY, {champion_key(10)})
    materialize(instance, day, champion_key(10), DAY)
    finish(instance, day)
    assert predict() == {PREDICTIONS_KEY: {HOUR}}
    pred = start_run(instance, job, HOUR, {PREDICTIONS_KEY})
    failed(instance, pred)
    assert predict() == {}
    assert predict() == {}

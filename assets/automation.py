"""When the hourly products of a lake hour build themselves: one automation condition.

The lake hour assets (assets/lake_hours.py) are sealed by the hourly schedule, the
late-hours sensor, a replay's completion or a rebuild. Everything hourly downstream of
them (batch and Spark features, ClickHouse loads, bars, charts) carries HOURLY_CHAIN, and
the automation sensor of pipelines/hourly_chain.py evaluates it, so a sealed hour builds
its whole chain with nobody launching anything, in lineage order:

* it is `AutomationCondition.eager()` without its `in_latest_time_window()` part: eager
  alone only ever looks at the newest hourly partition, but hours are sealed by event
  time, late, out of order and in bulk (a replay of last week's capture), so every hour
  whose upstream partitions were newly updated (or that became a partition since) counts;
* an hour runs only once none of its upstream partitions is missing or in progress, and
  never while the asset's own partition is in progress: a run, or a backfill (a user's,
  `ticklake backfill`'s) that still has to build it, counts as in progress, so automation
  and backfills never build the same partition twice at a time; the trigger is remembered
  (`since_last_handled`) and fires once the blocker is gone, unless the partition was
  built meanwhile;
* an upstream's blocking checks (schema, unique event_ids, row count of a lake hour) must
  have passed: a bad hour does not flow into ClickHouse and charts;
* within one evaluation a downstream asset of a requested one is requested too (eager's
  `will_be_requested`), so one tick asks for the whole chain of an hour and Dagster runs
  it in dependency order; an update made by a run that also built the asset does not
  trigger it again.

Hours sealed while the sensor was off are not picked up retroactively when it is first
turned on (the condition treats the first evaluation as handled); `ticklake backfill`
builds them.
"""

import dagster as dg

from assets.partitions import HOURLY

HOURLY_CHAIN: dg.AutomationCondition = (
    dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window()).with_label("eager, any hour")
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("hourly_chain")


def hourly_chain_asset(key: dg.AssetKey, deps: list, description: str, *, group: str, layer: str, kinds: set[str]):
    """The decorator of an asset of the hourly chain (features, ClickHouse loads, bars,
    charts): hourly partitions, built by HOURLY_CHAIN, tagged with its layer."""
    return dg.asset(
        key=key,
        deps=deps,
        description=description,
        group_name=group,
        kinds=kinds,
        tags={"ticklake/layer": layer},
        partitions_def=HOURLY,
        automation_condition=HOURLY_CHAIN,
    )


# -- the ML area (assets/ml.py): daily datasets and models, hourly predictions -----------------

#: A daily ML partition (dataset, model, champion) is due when any upstream partition was newly
#: updated (or will be in this tick) since the partition was last handled, nothing upstream or
#: itself is in progress, and every upstream blocking check passed. Unlike HOURLY_CHAIN it does
#: not wait for *every* upstream partition: a day's dataset reads the hours of lake/features_1s
#: the lake has, and a replayed day of the past has only the few hours its capture covers (the
#: dataset itself refuses a day with unsealed lake hours). A live day's partition exists only
#: once the day is over, so the updates of its earlier hours are behind it and the build is
#: triggered once, by the features of its last hour. An upstream requested in the same tick
#: counts as passing its blocking checks (they run in the same run, where a failure keeps the
#: downstream steps from running), so one tick asks for dataset, models and registrations of a
#: day together: Dagster's own all_deps_blocking_checks_passed() would wait for the checks to
#: pass in an earlier run (checks carry no condition and are never "requested"), one run per step.
ML_DAILY: dg.AutomationCondition = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_match(
        dg.AutomationCondition.will_be_requested()
        | dg.AutomationCondition.all_checks_match(dg.AutomationCondition.check_passed(), blocking_only=True)
    ).with_label("upstream blocking checks passed or upstream requested now")
).with_label("ml_daily")


def prediction_hours(serving: dg.AssetSelection) -> dg.AutomationCondition:
    """When an hour of lake/predictions is due: its features hour or a `serving` (champion
    registration) partition of its day was updated since it was last handled, the features
    hour exists, nothing upstream or itself is in progress. A new champion of day D thus
    re-lands the hours of D, which the inference service has just scored with it (a first
    champion makes the service score the feature topics from their start).

    The champion trigger is kept apart from `since_last_handled()`: Dagster resolves a trigger
    and a reset seen in the same tick by their timestamps only when both carry them, and an
    `|` of conditions drops them. With the plain form, an hour whose predictions landed a
    moment *before* the champion was registered (both between two ticks) counted as handled
    and was never re-landed with the champion's scores. Here the trigger is the champion's
    materialization and the reset the hour's own materialization, both timestamped, so only a
    landing *after* the registration handles it (the asset re-reads the serving champions
    before it returns, so a run in progress at the registration lands with it). A failed
    landing is not retried in a loop; the next features update or a user's run re-lands it."""
    champion_registered = (
        dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated())
        .allow(serving)
        .since(dg.AutomationCondition.newly_updated())
        .with_label("champion registered after the hour landed")
        & ~dg.AutomationCondition.execution_failed()
    )
    return (
        (dg.AutomationCondition.any_deps_updated().since_last_handled() | champion_registered)
        & ~dg.AutomationCondition.any_deps_missing().ignore(serving)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("prediction_hours")

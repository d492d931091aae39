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

HOURLY_CHAIN: dg.AutomationCondition = (
    dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window()).with_label("eager, any hour")
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("hourly_chain")

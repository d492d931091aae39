"""The run tag that marks batch work (not a service) by what launched it.

Plain Python (no Dagster import). Every automation sensor, schedule and sensor that requests
hourly or daily work, and `ticklake backfill`, put it on their runs; the local dagster.yaml
caps how many such runs run at once by this tag rather than by a count of all runs, because
the long-running services are runs too and their number follows collectors.yaml (a count
cap sized for them once left the default stack no slot for any hourly run).
"""

#: Run tag naming what launched a run of hourly or daily work (`hourly-chain-automation`,
#: `lake-hourly-seal`, `replay-completion`, `ticklake-backfill`, ...).
LAUNCHED_BY_TAG = "ticklake/launched-by"


def launched_by(who: str) -> dict[str, str]:
    return {LAUNCHED_BY_TAG: who}

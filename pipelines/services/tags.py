"""The run tag that marks a service run, and the run states that count as its live run.

Plain Python (no Dagster import): `ticklake status` (pipelines/local/services.py) reads the
same names over GraphQL, and the builder (pipelines/services/builder.py) turns them into
Dagster run filters. dagster.yaml limits each value of the tag to one run.
"""

#: Run tag naming the service a run is (`normalizer`, `collector:<shard>`, ...).
SERVICE_TAG = "ticklake/service"

#: Run states that hold a service's slot: a run in any of them is "the live run".
LIVE_STATUS_NAMES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def service_tags(name: str) -> dict[str, str]:
    """The tags a service's runs carry (the job's tags, and every supervisor request)."""
    return {SERVICE_TAG: name}

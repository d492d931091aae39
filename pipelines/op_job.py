"""One op as a whole job: the shape of every runbook and maintenance job of the code location.

The op holds the work and its config (what the Launchpad shows); the job only names it, says
what it is for and, where it applies, tags or partitions it. Written once so those jobs are
one call each, not a decorated function per job that only calls its op.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg


def op_job(op: dg.OpDefinition, name: str, description: str, **job_args) -> dg.JobDefinition:
    """A job named `name` that runs `op` once; `job_args` go to `dg.job` (tags, partitions_def...)."""

    @dg.job(name=name, description=description, **job_args)
    def _job():
        op()

    return _job

"""A replayed capture's hours are sealed and build their hourly chain whatever their age
(issue 11: the shipped OKX capture is of May 2022, and its hours had no partition, so the
replay completed, the sensors said every hour was sealed, and nothing was ever sealed or built).

Against the real parts, without a stack: the genuine capture's receive-time span, the
completed range written into a real SQLite Iceberg catalog, lake rows in those hours
committed the way the sink commits them (data + offsets/watermark/hour ledger in one
snapshot), the late-hours sensor and the seal assets with their checks run on a real
Dagster instance, and the HOURLY_CHAIN conditions evaluated by Dagster's own evaluator.
"""

from __future__ import annotations

import warnings

import dagster as dg
import pyarrow as pa
import pytest

from assets.lake_hours import LAKE_HOUR_ASSETS, LAKE_HOUR_CHECKS
from assets.partitions import HOURLY
from pipelines.lake_schedules import lake_late_hours, lake_seal_job, unsealed_closed_hours
from pipelines.local.replay import capture_spans
from pipelines.replay_completion import completed_hour_keys
from resources.lake import LakeResource
from schemas.arrow_convert import envelopes_to_table, group_by_event_type
from schemas.tables import TABLES
from streaming.kafka.source_complete import hour_span, mark_complete
from streaming.lake.seal import hour_layout
from streaming.lake.state import HOUR_US, HourCount, SinkState
from streaming.lake.writer import LakeFileWriter, commit_files
from tests.test_hourly_chain_automation import Tick, chain_keys, start_run
from workloads.samples import OKX_CF
from workloads.synthetic import SyntheticMarket

warnings.filterwarnings("ignore", category=dg.BetaWarning)
LATENESS_US = 5_000_000


def commit_as_sink(lake: LakeResource, first_us: int, until_us: int, n: int = 240) -> dict[str, set[int]]:
    """`n` synthetic events spread over [first_us, until_us), committed per table in a few
    micro-batches with the sink's summary; returns the hours (µs) each table got rows in."""
    tables = lake.ensure_tables()
    events = SyntheticMarket(seed=11, start_ts=first_us).events(n, spacing_us=(until_us - first_us) // (n + 1))
    hours: dict[str, set[int]] = {}
    for et, envs in group_by_event_type(events).items():
        spec = TABLES[et]
        table = tables[spec.name]
        rows = envelopes_to_table(et, envs)
        state = SinkState()
        step = -(-rows.num_rows // 3)
        for s in range(0, rows.num_rows, step):
            part = rows.slice(s, step)
            ts = part.column("exchange_ts").cast(pa.int64()).to_pylist()
            for t in ts:
                c = state.ledger.setdefault(t - t % HOUR_US, HourCount())
                c.records += 1
                c.rows += 1
                hours.setdefault(spec.name, set()).add(t - t % HOUR_US)
            state.max_event_us = max(state.max_event_us or 0, max(ts))
            state.watermark_us = state.max_event_us - LATENESS_US
            table = commit_files(table, LakeFileWriter(table).write(part), state.summary()).refresh()
    return hours


@pytest.fixture(scope="module")
def defs():
    from pipelines.definitions import defs

    return defs


@pytest.mark.dagster
def test_hours_of_a_2022_capture_are_sealed_and_build_their_chain(ticklake_home, defs):
    [(first, last)] = capture_spans(OKX_CF)
    lo, hi = hour_span(first, last)
    lake = LakeResource(uri=ticklake_home.catalog_uri, warehouse=ticklake_home.warehouse)
    hours = commit_as_sink(lake, first, last)
    assert {h for hs in hours.values() for h in hs} <= set(range(lo, hi, HOUR_US))

    # The replay's completion: every whole hour of the capture gets a partition to seal.
    done = mark_complete(lake.load_catalog(), "replay-okx-2022", [(lo, hi)])
    keys, outside = completed_hour_keys(done)
    assert outside == []
    assert keys and keys[0].startswith("2022-05-13") and len(keys) == (hi - lo) // HOUR_US
    assert all(HOURLY.has_partition_key(k) for k in keys)

    with dg.instance_for_test() as instance:
        tick = Tick(defs, instance)
        assert tick() == {}  # the automation sensor's first evaluation: nothing sealed yet

        # The late-hours sensor sees those old hours unsealed (the watermark is in 2022).
        reqs = lake_late_hours(dg.build_sensor_context(instance=instance, resources={"lake": lake}))
        assert isinstance(reqs, list), reqs
        with_rows = [k for k in keys if any(_us(k) in hs for hs in hours.values())]
        assert with_rows and sorted(r.partition_key for r in reqs) == with_rows
        # ... except while a seal run of the hour (the one replay_completion requested) is queued
        # or running: a second seal would hold the hour's chain back until it is over too.
        queued = [start_run(instance, defs.get_job_def(lake_seal_job.name), k) for k in with_rows]
        skip = lake_late_hours(dg.build_sensor_context(instance=instance, resources={"lake": lake}))
        assert isinstance(skip, dg.SkipReason) and "in progress" in skip.skip_message
        for run in queued:
            instance.report_run_canceled(run)

        # The seal of each hour (the run replay_completion requests) materializes, its checks pass.
        for key in keys:
            result = dg.materialize(
                [*LAKE_HOUR_ASSETS.values(), *LAKE_HOUR_CHECKS.values()],
                partition_key=key,
                resources={"lake": lake},
                instance=instance,
            )
            assert result.success, key
            evaluations = result.get_asset_check_evaluations()
            assert evaluations and all(e.passed for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR)
        tables = lake.ensure_tables()
        for name, hs in hours.items():
            for h in hs:
                assert hour_layout(tables[name], h).is_sealed, (name, h)
        assert unsealed_closed_hours(lake) == {}
        assert isinstance(
            lake_late_hours(dg.build_sensor_context(instance=instance, resources={"lake": lake})), dg.SkipReason
        )

        # The automation then asks for every hourly product of every one of those hours.
        requested = tick()
        assert requested == {k: set(keys) for k in chain_keys(defs)}


def _us(key: str) -> int:
    from assets.partitions import hour_start

    return int(hour_start(key).timestamp()) * 1_000_000

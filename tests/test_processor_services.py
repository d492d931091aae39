"""The processors as Dagster jobs (real instance, real broker) and their supervisor sensor."""

from __future__ import annotations

import signal
import threading
import time

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from features.compute import compute_features
from features.inputs import events_from_envelopes
from features.records import decode_row, rows_to_table
from pipelines.services import processors as processor_services
from pipelines.services import registry
from pipelines.services.builder import run_loop
from pipelines.services.processors import (
    FEATURE_PROCESSOR,
    NORMALIZER,
    SERVICE_TAG,
    feature_processor_service,
    normalizer_service,
    stream_processors_supervisor,
)
from resources.kafka import KafkaResource
from schemas.serde import decode
from schemas.topics import feature_topic
from streaming.kafka.io import committed_offsets, plain_consumer
from streaming.processors.normalizer import Normalizer, NormalizerService, input_topics_for
from tests.support import processing as ps
from workloads.kafka import connection, produce_raw
from workloads.synthetic import SyntheticMarket, synthetic_catalog


def _requests(result) -> dict[str, dict]:
    if isinstance(result, dg.SkipReason):
        return {}
    return {r.job_name: r.tags for r in result}


def test_supervisor_keeps_one_live_run_per_processor_and_restarts_dead_ones():
    defs = registry.defs([processor_services])
    assert [j.name for j in defs.jobs] == ["feature_processor_service", "normalizer_service"]
    assert list(defs.sensors) == [stream_processors_supervisor]
    with dg.instance_for_test() as instance:
        ctx = lambda: dg.build_sensor_context(instance=instance)
        first = _requests(stream_processors_supervisor(ctx()))
        assert first == {
            "normalizer_service": {SERVICE_TAG: NORMALIZER},
            "feature_processor_service": {SERVICE_TAG: FEATURE_PROCESSOR},
        }
        norm = instance.add_run(
            DagsterRun(
                job_name="normalizer_service",
                run_id="a" * 32,
                status=DagsterRunStatus.STARTED,
                tags={SERVICE_TAG: NORMALIZER},
            )
        )
        instance.add_run(
            DagsterRun(
                job_name="feature_processor_service",
                run_id="b" * 32,
                status=DagsterRunStatus.STARTED,
                tags={SERVICE_TAG: FEATURE_PROCESSOR},
            )
        )
        assert isinstance(stream_processors_supervisor(ctx()), dg.SkipReason)
        instance.report_run_failed(norm)  # its worker died (run monitoring marks it failed)
        again = _requests(stream_processors_supervisor(ctx()))
        assert again == {"normalizer_service": {SERVICE_TAG: NORMALIZER}}


def test_jobs_run_the_processors_end_to_end_under_dagster(broker, tmp_path):
    cache = tmp_path / "instruments.json"
    synthetic_catalog().save(cache)
    produce_raw(broker.bootstrap, SyntheticMarket(seed=13).events(5000, 1000))
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap)
    with dg.instance_for_test() as instance:
        r1 = normalizer_service.execute_in_process(
            run_config={
                "ops": {
                    "run_normalizer": {
                        "config": {
                            "exchanges": ["binance"],
                            "markets": ["spot"],
                            "instruments_cache": str(cache),
                            "idle_exit_s": 2.0,
                        }
                    }
                }
            },
            resources={"kafka": kafka},
            instance=instance,
        )
        assert r1.success and r1.dagster_run.tags[SERVICE_TAG] == NORMALIZER
        r2 = feature_processor_service.execute_in_process(
            run_config={
                "ops": {
                    "run_feature_processor": {
                        "config": {
                            "pairs": ["spot:binance"],
                            "name": "dagster",
                            "idle_timeout_ms": 1000,
                            "idle_exit_s": 3.0,
                        }
                    }
                }
            },
            resources={"kafka": kafka},
            instance=instance,
        )
        assert r2.success and r2.dagster_run.tags[SERVICE_TAG] == FEATURE_PROCESSOR
    processed = [decode(m.value()) for m in ps.read_topics(broker.bootstrap, ps.processed_feature_topics())]
    assert len(processed) == 5000
    rows = [decode_row(m.value()) for m in ps.read_topics(broker.bootstrap, [feature_topic("spot", "binance")])]
    got = rows_to_table(rows).sort_by([("symbol", "ascending"), ("exchange_ts", "ascending")])
    assert got.equals(compute_features(events_from_envelopes(processed))[0])


def test_termination_drains_and_commits_before_the_op_returns(broker, sigint_raises):
    """An interrupt in the op's thread (what a run termination delivers) stops the loop only
    after its batch committed: the group's committed offsets equal what it processed."""
    produce_raw(broker.bootstrap, SyntheticMarket(seed=17).events(40_000, 100))
    svc = NormalizerService(
        connection(broker.bootstrap),
        Normalizer(synthetic_catalog()),
        input_topics_for(["binance"], ["spot"]),
        batch_max_records=2000,
        batch_max_ms=50,
    )
    main = threading.get_ident()

    def interrupt_when_busy():
        while svc.stats.batches < 3:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_when_busy, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_loop(dg.build_op_context(), svc, idle_exit_s=None, max_seconds=120)
    assert 3 <= svc.stats.batches and svc.stats.records_in < 40_000  # stopped early, not at the end
    c = plain_consumer(connection(broker.bootstrap), "ticklake-normalizer")
    try:
        committed = committed_offsets(c, svc.assignment)
    finally:
        c.close()
    assert {tp: o for tp, o in committed.items() if o is not None} == svc.positions
    assert sum(svc.positions.values()) >= svc.stats.records_in
    processed = ps.read_topics(broker.bootstrap, ps.processed_feature_topics())
    assert len({decode(m.value()).event_id for m in processed}) == svc.stats.records_in

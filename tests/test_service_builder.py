"""The one service shape: the loop lifecycle and worker thread (runtime/service_loop.py), settings
that feed both the Dagster config and the `python -m` options (runtime/service_cli.py), and the
builder's jobs and supervisors (pipelines/services/builder.py). Fast: no broker."""

from __future__ import annotations

import dataclasses
import importlib
import json
import signal
import subprocess
import sys
import threading
import time
import types

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from collectors.config import CollectorShardSettings
from pipelines.k8s import K8S_CONFIG_TAG
from pipelines.services import clickhouse_live, collector, inference, lake_sink, pragma, processors, registry
from pipelines.services.builder import LIVE_STATUSES, SERVICE_TAG, Pod, service
from pipelines.services.tags import LIVE_STATUS_NAMES
from runtime.service_cli import LoopSettings, settings_from_args, settings_parser
from runtime.service_loop import ServiceLoop, run_in_worker
from streaming.clickhouse.live import ClickHouseLiveSettings
from streaming.lake.sink import LakeSinkSettings
from streaming.pragma.publisher import PragmaPublisherSettings
from streaming.processors.feature_processor import FeatureProcessorSettings
from streaming.processors.inference import InferenceService, InferenceSettings
from streaming.processors.normalizer import NormalizerSettings


class Counter(ServiceLoop):
    """A loop that makes progress `busy` times, then idles; records its lifecycle."""

    name = "counter"

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy, self.steps, self.events = busy, 0, []
        self.stats = self.steps

    @property
    def started(self) -> bool:
        return bool(self.events)

    def start(self) -> None:
        self.events.append("start")

    def run_once(self) -> bool:
        self.steps += 1
        self.stats = self.steps
        time.sleep(0.01)
        return self.steps <= self.busy

    def close(self) -> None:
        self.events.append("close")


def test_loop_runs_until_idle_then_closes_once():
    loop = Counter(busy=5)
    assert loop.run(idle_exit_s=0.2) > 5
    assert loop.events == ["start", "close"]
    assert loop.summary() == str(loop.steps)  # the stop line: the loop's stats unless it adds more


def test_a_stop_request_ends_the_loop_and_a_failure_still_closes():
    loop = Counter(busy=10**9)
    threading.Timer(0.1, loop.request_stop).start()
    loop.run()
    assert loop.events == ["start", "close"] and loop.stopping

    class Failing(Counter):
        def run_once(self) -> bool:
            raise RuntimeError("boom")

    bad = Failing(busy=0)
    with pytest.raises(RuntimeError, match="boom"):
        bad.run()
    assert bad.events == ["start", "close"]


def test_an_interrupt_while_waiting_stops_the_worker_and_waits_for_it(sigint_raises):
    """What a Dagster run termination does: an exception in the waiting thread becomes a stop
    request, and it is re-raised only once the worker has finished (its final commit)."""
    loop = Counter(busy=10**9)
    finished = threading.Event()

    def work():
        loop.run()
        time.sleep(0.3)  # the final commit, after the stop request
        finished.set()
        return loop.stats

    main = threading.get_ident()
    threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        run_in_worker(work, request_stop=loop.request_stop, name="counter-loop")
    assert finished.is_set() and loop.events == ["start", "close"]


def test_worker_result_and_error_reach_the_caller():
    assert run_in_worker(lambda: 42, request_stop=lambda: None, name="answer") == 42

    def fail():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_in_worker(fail, request_stop=lambda: None, name="failing")


@pytest.mark.parametrize(
    ("settings", "config"),
    [
        (NormalizerSettings, processors.NormalizerRunConfig),
        (FeatureProcessorSettings, processors.FeatureProcessorRunConfig),
        (LakeSinkSettings, lake_sink.LakeSinkRunConfig),
        (ClickHouseLiveSettings, clickhouse_live.ClickHouseLiveConfig),
        (CollectorShardSettings, collector.CollectorShardConfig),
        (PragmaPublisherSettings, pragma.PragmaPublisherOpConfig),
        (InferenceSettings, inference.InferenceRunConfig),
    ],
)
def test_one_settings_class_feeds_the_run_config_and_the_command_line(settings, config):
    assert issubclass(config, dg.Config) and issubclass(config, settings)
    parser = settings_parser(settings, prog="x", description="x")
    assert settings_from_args(settings, parser.parse_args([])) == settings()  # defaults are the settings'
    for name, field in settings.model_fields.items():
        assert config.model_fields[name].default == field.default, name


def test_generated_options_keep_the_hand_written_names():
    parser = settings_parser(NormalizerSettings, prog="x", description="x")
    args = ["--exchange", "binance", "--exchange", "okx", "--base-url", "binance:spot=http://h", "--idle-exit-s", "3"]
    got = settings_from_args(NormalizerSettings, parser.parse_args(args))
    assert got.exchanges == ["binance", "okx"] and got.exchange_info_urls == ["binance:spot=http://h"]
    assert got.idle_exit_s == 3.0 and got.markets == [] and got.batch_max_ms == 200
    fp = settings_parser(FeatureProcessorSettings, prog="x", description="x").parse_args(["--pair", "spot:binance"])
    assert settings_from_args(FeatureProcessorSettings, fp).pairs == ["spot:binance"]
    shard = settings_parser(CollectorShardSettings, prog="x", description="x").parse_args(
        ["alpha", "--config", "c.yaml"]
    )
    assert settings_from_args(CollectorShardSettings, shard).model_dump(include={"shard", "config_file"}) == {
        "shard": "alpha",
        "config_file": "c.yaml",
    }


@pytest.mark.parametrize(
    "module",
    [
        "streaming.processors.normalizer",
        "streaming.processors.feature_processor",
        "streaming.processors.inference",
        "streaming.clickhouse.live",
        "streaming.lake.sink",
        "streaming.pragma.publisher",
    ],
)
def test_a_service_entry_names_its_own_module_and_says_what_it_is(module, capsys):
    """service_main derives prog and help from the module (nothing to go stale when it moves)."""
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module} ")
    first_line = "".join(mod.__doc__.split("\n")[0].split())
    assert first_line in "".join(out.split())  # (argparse rewraps it)


def test_a_service_run_with_python_m_is_named_by_its_module_not_main():
    out = subprocess.run(
        [sys.executable, "-m", "streaming.pragma.publisher", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: python -m streaming.pragma.publisher ")


def test_live_statuses_are_one_list():
    assert [s.value for s in LIVE_STATUSES] == list(LIVE_STATUS_NAMES)


class SeventhConfig(dg.Config, LoopSettings):
    idle_exit_s: float | None = 0.2


def _seventh(context: dg.OpExecutionContext, config: SeventhConfig) -> Counter:
    return Counter(busy=3)


def test_a_seventh_service_is_one_builder_call_in_its_own_module():
    """A new service = its module with one `service(...)` call: the registry finds it, and its
    job, tags, pod size and supervisor come with it (nothing else lists services)."""
    module = types.ModuleType("pipelines.services.seventh")
    module.SEVENTH = service(
        "seventh",
        _seventh,
        pod=Pod("100m", "128Mi", "256Mi"),
        resources=(),
        description="A toy service.",
    )
    svc = module.SEVENTH
    found = registry.services([module])
    assert found == [svc]
    defs = registry.defs([module])
    assert [j.name for j in defs.jobs] == ["seventh_service"] and [s.name for s in defs.sensors] == [
        "seventh_supervisor"
    ]
    assert svc.op.name == "run_seventh" and svc.job.executor_def.name == "in_process"
    # its run config is the class the loop builder's `config` parameter is annotated with
    assert set(svc.op.config_schema.as_field().config_type.fields) == set(SeventhConfig.model_fields)
    with pytest.raises(TypeError, match="annotate the loop builder"):
        service("eighth", lambda context, config: Counter(busy=3), pod=svc.pod, resources=(), description="-")
    assert svc.job.tags[SERVICE_TAG] == "seventh" and svc.tags == {SERVICE_TAG: "seventh"}
    pod = json.loads(svc.job.tags[K8S_CONFIG_TAG])
    assert pod["container_config"]["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert "pod_spec_config" not in pod  # not an egress service
    with pytest.raises(ValueError, match="defined twice"):
        other = types.ModuleType("pipelines.services.eighth")
        other.SAME_NAME = dataclasses.replace(svc)
        registry.services([module, other])

    sensor = svc.sensor
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    with dg.instance_for_test() as instance:
        first = sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(first, dg.RunRequest) and first.tags == {SERVICE_TAG: "seventh"}
        run = instance.add_run(
            DagsterRun(job_name="seventh_service", run_id="e" * 32, status=dg.DagsterRunStatus.CANCELING)
        )
        assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)  # still live
        instance.report_run_canceled(run)
        assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.RunRequest)
        # the op runs the loop through the shared worker thread until it idles out
        assert svc.job.execute_in_process(instance=instance).success


def test_the_code_location_serves_exactly_the_registered_services():
    from pipelines.definitions import defs

    svcs = registry.services()
    repo = defs.get_repository_def()
    service_jobs = {j.name for j in repo.get_all_jobs() if SERVICE_TAG in j.tags or j.name == "collector_shard"}
    assert service_jobs == {s.job.name for s in svcs}
    assert {s.name for s in registry.defs().sensors} <= {s.name for s in repo.sensor_defs}


class _NoRegistry:
    """An MLflow store that is not reachable (the service only warns and starts its loops)."""

    tracking_uri = "none://"

    def client(self):
        raise OSError("no registry here")


def test_a_service_of_several_loops_fails_when_one_fails_and_stops_the_others():
    """InferenceService (one loop per model, each in its own Worker): crash-only, one failed
    loop stops and closes the others, and the failure reaches the caller (the run fails, the
    supervisor restarts it)."""

    class Failing(Counter):
        def run_once(self) -> bool:
            time.sleep(0.2)
            raise RuntimeError("model file unreadable")

    healthy, failing = Counter(busy=10**9), Failing(busy=0)
    for lp in (healthy, failing):
        lp.settings = _NoRegistry()
    with pytest.raises(RuntimeError, match="unreadable"):
        InferenceService([healthy, failing]).run()
    assert healthy.stopping and healthy.events == ["start", "close"] and failing.events == ["start", "close"]

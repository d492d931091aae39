"""The production deployment (deploy/): the Dagster instance validates, loads and runs on a real
PostgreSQL; the Kubernetes launcher config passes dagster-k8s's own schema.

One Postgres server per module (tests/postgres_helpers.py, ~3 s); nothing here needs a cluster.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path

import boto3
import dagster as dg
import dagster._daemon  # imports the scheduler in the order its import cycle needs
import pytest
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._scheduler.scheduler import launch_scheduled_runs
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import get_user_defined_k8s_config
from moto import mock_aws

from pipelines import k8s
from pipelines.services import registry
from pipelines.services.builder import Service, instance_value
from tests import deploy_probe_defs as probe
from tests.postgres_helpers import PostgresServer, postgres_server

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
LOG_BUCKET = "ticklake-logs"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_production_instance_config_passes_dagsters_validation() -> None:
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert config["storage"].keys() == {"postgres"}
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


#: Tag limits that are guarantees the code relies on (one live run per service, one run per
#: partition), as opposed to capacity limits sized for a machine (the local work slots).
GUARANTEE_KEYS = {"ticklake/service", "dagster/partition"}


def test_production_limits_the_same_tags_as_local() -> None:
    """The one-run-per-service and one-run-per-partition guarantees the code relies on hold in
    both instances (the local file is what the stack tests exercise); the local file's capacity
    limits (two runs of work on two cores) are its own."""
    local = _yaml(REPO / "dagster.yaml")["concurrency"]["runs"]["tag_concurrency_limits"]
    guarantees = [lim for lim in local if lim["key"] in GUARANTEE_KEYS]
    assert {lim["key"] for lim in guarantees} == GUARANTEE_KEYS
    prod = _yaml(DEPLOY / "dagster.yaml")["concurrency"]["runs"]["tag_concurrency_limits"]
    assert prod == guarantees
    helm = _yaml(DEPLOY / "values.yaml")["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert helm["tagConcurrencyLimits"] == guarantees


@pytest.fixture(scope="module")
def postgres() -> PostgresServer:
    with postgres_server(db_name="dagster") as server:
        yield server


@pytest.fixture(scope="module")
def prod_instance(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory):
    """deploy/dagster.yaml, unchanged, as DAGSTER_HOME's instance; its environment points at
    the test Postgres (compute logs would go to S3: moto)."""
    home = tmp_path_factory.mktemp("dagster-prod-home")
    shutil.copyfile(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": postgres.user,
        "DAGSTER_PG_PASSWORD": "unused-trust-auth",
        "DAGSTER_PG_DB": postgres.db_name,
        "DAGSTER_K8S_NAMESPACE": "ticklake",
        "TICKLAKE_LOG_BUCKET": LOG_BUCKET,
        "DAGSTER_HOME": str(home),
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with mock_aws():
            boto3.client("s3").create_bucket(
                Bucket=LOG_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
            )
            with dg.DagsterInstance.from_config(str(home)) as instance:
                yield instance


def test_instance_storage_is_postgres(prod_instance: dg.DagsterInstance) -> None:
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    assert isinstance(prod_instance.run_storage, PostgresRunStorage)
    assert isinstance(prod_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(prod_instance.schedule_storage, PostgresScheduleStorage)
    limits = prod_instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {limit["key"] for limit in limits} == {"ticklake/service", "dagster/partition"}


def test_job_run_and_its_events_are_in_postgres(prod_instance: dg.DagsterInstance, postgres: PostgresServer) -> None:
    result = dg.materialize([probe.deploy_probe], instance=prod_instance, tags={"ticklake/test": "deploy"})
    assert result.success
    run_id = result.run_id

    # Read back through Postgres itself, not the instance: proves where it was written.
    [(status,)] = postgres.query("SELECT status FROM runs WHERE run_id = %s", (run_id,))
    assert status == "SUCCESS"
    events = {
        row[0] for row in postgres.query("SELECT dagster_event_type FROM event_logs WHERE run_id = %s", (run_id,))
    }
    expected = {
        dg.DagsterEventType.RUN_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.ASSET_MATERIALIZATION,
        dg.DagsterEventType.RUN_SUCCESS,
    }
    assert {t.value for t in expected} <= events
    # The step's captured output went to the S3 compute log manager (moto's bucket).
    logs = boto3.client("s3").list_objects_v2(Bucket=LOG_BUCKET, Prefix="dagster-compute-logs/")
    assert any(run_id in obj["Key"] for obj in logs.get("Contents", []))
    assert postgres.query("SELECT 1 FROM run_tags WHERE run_id = %s AND key = 'ticklake/test'", (run_id,))
    assert postgres.query("SELECT 1 FROM asset_keys WHERE asset_key = %s", ('["deploy_probe"]',))


def test_schedule_state_ticks_and_queued_runs_are_in_postgres(
    prod_instance: dg.DagsterInstance, postgres: PostgresServer
) -> None:
    """The scheduler daemon's own iteration, in process: the tick and the run it submits go
    through the production QueuedRunCoordinator into Postgres (queued, so no launcher)."""
    origin = LoadableTargetOrigin(python_file=probe.__file__, working_directory=str(REPO), attribute="defs")
    target = InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin))
    with WorkspaceProcessContext(prod_instance, target) as context:
        [location] = context.create_request_context().code_locations
        [repository] = location.get_repositories().values()
        schedule = repository.get_schedule(probe.PROBE_SCHEDULE)
        prod_instance.start_schedule(schedule)
        assert postgres.query(
            "SELECT status, instigator_type FROM instigators WHERE selector_id = %s", (schedule.selector_id,)
        ) == [("RUNNING", "SCHEDULE")]
        after_next_minute = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=61)
        list(launch_scheduled_runs(context, logging.getLogger("test_deploy"), after_next_minute, {}))

    ticks = postgres.query("SELECT status, type FROM job_ticks WHERE selector_id = %s", (schedule.selector_id,))
    assert ("SUCCESS", "SCHEDULE") in ticks
    queued = postgres.query(
        "SELECT r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
        "WHERE t.key = 'dagster/schedule_name' AND t.value = %s",
        (probe.PROBE_SCHEDULE,),
    )
    assert queued == [("QUEUED",)]


# --------------------------------------------------------------------------- Kubernetes launcher


def _registered() -> dict[str, Service]:
    """Every service of the code location (pipelines/services/registry.py), by the service tag
    value of one of its runs (an instance service's run carries `<name>:<key>`)."""
    return {
        (instance_value(svc.name, "binance-spot-1") if svc.instances else svc.name): svc for svc in registry.services()
    }


REGISTERED = _registered()
SERVICES = sorted(REGISTERED)


def test_every_service_is_registered() -> None:
    # the seven services of ARCHITECTURE.md; a new one is found without being listed anywhere
    assert {svc.name for svc in REGISTERED.values()} >= {
        "collector",
        "normalizer",
        "feature-processor",
        "lake-sink",
        "clickhouse-live",
        "pragma-publisher",
        "inference",
    }


def _launcher_config(**overrides) -> dict:
    """deploy/dagster.yaml's K8sRunLauncher config after dagster's own validation against
    dagster-k8s's schema (env references resolved), plus test-only overrides."""
    raw = _yaml(DEPLOY / "dagster.yaml")["run_launcher"]
    assert (raw["module"], raw["class"]) == ("dagster_k8s", "K8sRunLauncher")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_K8S_NAMESPACE", "ticklake")
        result = process_config(K8sRunLauncher.config_type(), {**raw["config"], **overrides})
    assert result.success, [e.message for e in result.errors]
    return dict(result.value)


def test_k8s_launcher_config_passes_dagster_k8s_schema() -> None:
    config = _launcher_config()
    assert config["job_namespace"] == "ticklake"
    assert config["env_config_maps"] == ["ticklake-env"] and config["env_secrets"] == ["ticklake-secrets"]
    bad = process_config(
        K8sRunLauncher.config_type(),
        {**_yaml(DEPLOY / "dagster.yaml")["run_launcher"]["config"], "job_namespace": "x", "no_such_field": 1},
    )
    assert not bad.success  # the schema is strict: a typo in the deployment fails here


@pytest.mark.parametrize("service", SERVICES)
def test_service_k8s_tag_passes_dagster_k8s_schema(service: str) -> None:
    pod = REGISTERED[service].pod
    parsed = get_user_defined_k8s_config(k8s.k8s_tags(service, pod))
    assert parsed.container_config["resources"] == pod.resources


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_job_carries_its_k8s_tag(service: str) -> None:
    svc = REGISTERED[service]
    assert svc.job.run_tags[k8s.K8S_CONFIG_TAG] == k8s.k8s_tags(service, svc.pod)[k8s.K8S_CONFIG_TAG]
    job = svc.job
    assert job.executor_def.name == "in_process"  # one pod per run: the service is the run worker itself


class RecordingBatchApi:
    """Stands in for the Kubernetes API server (no cluster here): keeps the Job bodies the
    launcher submits so the test can read the pod it would have run."""

    def __init__(self) -> None:
        self.jobs: list = []

    def create_namespaced_job(self, body, namespace, **_kwargs):
        self.jobs.append((namespace, body))
        return body


def test_k8s_launcher_builds_each_service_pod(prod_instance: dg.DagsterInstance, tmp_path: Path) -> None:
    """The real K8sRunLauncher, configured from deploy/dagster.yaml, launches a run of each
    service job: the Job it submits has the service's resources and the shared env/secrets."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "test", "user": {"token": "unused"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    batch = RecordingBatchApi()
    launcher = K8sRunLauncher(
        **_launcher_config(
            load_incluster_config=False, kubeconfig_file=str(kubeconfig), dagster_home="/opt/dagster/home"
        ),
        k8s_client_batch_api=batch,
    )
    launcher.register_instance(prod_instance)
    image = "registry.example/ticklake:test"
    for service in SERVICES:
        job = REGISTERED[service].job
        origin = JobPythonOrigin(
            job.name,
            RepositoryPythonOrigin(
                executable_path="/usr/local/bin/python",
                container_image=image,
                code_pointer=ModuleCodePointer("pipelines.definitions", "defs", working_directory="/opt/ticklake"),
            ),
        )
        # the job's own tags (its dagster-k8s/config among them) and the tag a supervisor's
        # RunRequest adds, merged as the daemon does
        tags = {**job.run_tags, "ticklake/service": service}
        run = prod_instance.create_run_for_job(job, job_code_origin=origin, tags=tags)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    assert [ns for ns, _ in batch.jobs] == ["ticklake"] * len(SERVICES)
    for service, (_, job) in zip(SERVICES, batch.jobs, strict=True):
        pod = job.spec.template.spec
        [container] = pod.containers
        kind = k8s.service_kind(service)
        pod_size = REGISTERED[service].pod
        expected = pod_size.resources
        assert container.resources.requests == expected["requests"], service
        assert container.resources.limits == expected["limits"], service
        assert container.image == image
        assert pod.service_account_name == "ticklake-runs"
        assert {e.config_map_ref.name for e in container.env_from if e.config_map_ref} == {"ticklake-env"}
        assert {e.secret_ref.name for e in container.env_from if e.secret_ref} == {"ticklake-secrets"}
        assert job.spec.template.metadata.labels["ticklake/service-kind"] == kind
        assert bool(pod.host_network) == pod_size.egress == (kind == "collector"), service
        if pod_size.egress:
            assert pod.node_selector == {k8s.EGRESS_NODE_LABEL: "true"}

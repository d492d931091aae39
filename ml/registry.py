"""MLflow tracking and model registry: the one client code for local and remote stores.

Locally the tracking and registry store is SQLite under $TICKLAKE_HOME/mlflow with a
file:// artifact root beside it; in production `tracking_uri` names a tracking server
(http(s)://, or a database URI) and nothing else changes. The client object is built
explicitly (never mlflow's process-global fluent state), so the Dagster assets and the
inference service can hold clients to different stores in one process (tests do).

A model is a LightGBM booster saved as its text dump (`model/model.txt` in the run's
artifacts): exact, library-version tolerant, and loadable without pickles. One
registered model per horizon (`mid_ret_<h>s`); the alias CHAMPION names the version the
service serves, so promoting a model is moving the alias.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a model is loaded (load_version), not by every process loading the code
    import lightgbm as lgb

CHAMPION = "champion"
EXPERIMENT = "ticklake-mid-returns"
MODEL_ARTIFACT = "model/model.txt"


def model_name(horizon_s: int) -> str:
    """Registered model (and prediction topic suffix) of a horizon."""
    return f"mid_ret_{horizon_s}s"


def horizon_of(name: str) -> int:
    """Inverse of model_name."""
    if not (name.startswith("mid_ret_") and name.endswith("s") and name[8:-1].isdigit()):
        raise ValueError(f"not a mid-return model name: {name!r}")
    return int(name[8:-1])


#: Tracking (and registry) URI of a non-local MLflow; unset = the local store of $TICKLAKE_HOME.
TRACKING_URI_ENV = "TICKLAKE_MLFLOW_TRACKING_URI"


@dataclass(frozen=True, slots=True)
class MlflowSettings:
    tracking_uri: str
    registry_uri: str | None = None
    artifact_location: str | None = None  # for new experiments; None: the server's default

    @classmethod
    def from_env(
        cls,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        artifact_location: str | None = None,
        *,
        local_root: Callable[[], Path],
    ) -> MlflowSettings:
        """Explicit URI, else $TICKLAKE_MLFLOW_TRACKING_URI, else the local store under
        `local_root()` (the caller's $TICKLAKE_HOME/mlflow, created only when used)."""
        uri = tracking_uri or os.environ.get(TRACKING_URI_ENV)
        if not uri:
            return cls.local(local_root())
        return cls(uri, registry_uri, artifact_location)

    @classmethod
    def local(cls, root: Path) -> MlflowSettings:
        """SQLite store + file artifacts under `root` (e.g. $TICKLAKE_HOME/mlflow)."""
        root.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{root / 'mlflow.db'}", None, (root / "artifacts").as_uri())

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri)


def experiment_id(client, settings: MlflowSettings, name: str = EXPERIMENT) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=settings.artifact_location)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@dataclass(frozen=True, slots=True)
class LoggedRun:
    run_id: str
    model_name: str
    artifact_uri: str


def log_training(
    settings: MlflowSettings,
    *,
    horizon_s: int,
    booster: lgb.Booster | None,
    params: dict,
    metrics: dict[str, float],
    fold_metrics: list[dict[str, float]],
    tags: dict[str, str],
) -> LoggedRun:
    """One MLflow run: params, overall metrics, per-fold metrics (step = fold), tags (dataset
    snapshot ids, Dagster run/partition) and the booster text."""
    client = settings.client()
    exp = experiment_id(client, settings)
    name = model_name(horizon_s)
    run = client.create_run(exp, run_name=f"{name} {tags.get('dataset_day', '')}".strip(), tags=tags)
    rid = run.info.run_id
    try:
        for k, v in params.items():
            client.log_param(rid, k, v)
        for k, v in metrics.items():
            client.log_metric(rid, k, float(v))
        for fm in fold_metrics:
            step = int(fm["fold"])
            for k, v in fm.items():
                if k != "fold":
                    client.log_metric(rid, f"fold_{k}", float(v), step=step)
        if booster is not None:
            client.log_text(rid, booster.model_to_string(), MODEL_ARTIFACT)
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return LoggedRun(rid, name, f"{run.info.artifact_uri}/{MODEL_ARTIFACT.rsplit('/', 1)[0]}")


def register(settings: MlflowSettings, name: str, run_id: str, *, alias: str | None = CHAMPION) -> str:
    """New version of registered model `name` from the run's model; moves `alias` to it."""
    from mlflow.exceptions import MlflowException

    client = settings.client()
    try:
        client.create_registered_model(name, description="LightGBM forecast of the mid-price log return")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    run = client.get_run(run_id)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    version: str
    run_id: str
    booster: lgb.Booster


def alias_version(client, name: str, alias: str = CHAMPION) -> tuple[str, str] | None:
    """(version, run_id) the alias points at, None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return str(mv.version), mv.run_id


def load_version(client, name: str, version: str, run_id: str) -> ServedModel:
    import lightgbm as lgb

    with tempfile.TemporaryDirectory(prefix="ticklake-model-") as tmp:
        path = client.download_artifacts(run_id, MODEL_ARTIFACT, tmp)
        text = Path(path).read_text()
    return ServedModel(name, version, run_id, lgb.Booster(model_str=text))


def load_alias(settings: MlflowSettings, name: str, alias: str = CHAMPION) -> ServedModel | None:
    client = settings.client()
    found = alias_version(client, name, alias)
    return None if found is None else load_version(client, name, *found)

"""Dagster resource for MLflow tracking and the model registry.

Local default: SQLite store and file artifacts under $TICKLAKE_HOME/mlflow. Production sets
`tracking_uri` (a tracking server URL or database URI, through dg.EnvVar or the
TICKLAKE_MLFLOW_TRACKING_URI environment variable); the client code (ml/registry.py) is
the same for both.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from ml.registry import TRACKING_URI_ENV, MlflowSettings
from runtime.home import resolve_home

MLFLOW = "mlflow"


def mlflow_settings(
    tracking_uri: str | None = None, registry_uri: str | None = None, artifact_location: str | None = None
) -> MlflowSettings:
    """Explicit URI, else $TICKLAKE_MLFLOW_TRACKING_URI, else the local store of $TICKLAKE_HOME."""
    return MlflowSettings.from_env(
        tracking_uri, registry_uri, artifact_location, local_root=lambda: resolve_home().ensure().mlflow_dir
    )


class MlflowResource(dg.ConfigurableResource):
    """Where runs are tracked and models registered."""

    tracking_uri: str | None = Field(
        default=None,
        description=f"tracking server / store URI; default "
        f"${TRACKING_URI_ENV}, else sqlite under $TICKLAKE_HOME/mlflow",
    )
    registry_uri: str | None = Field(default=None, description="model registry URI (default: the tracking URI)")
    artifact_location: str | None = Field(default=None, description="artifact root of new experiments")

    def settings(self) -> MlflowSettings:
        return mlflow_settings(self.tracking_uri, self.registry_uri, self.artifact_location)

"""Dagster resource for Spark: a lazily created SparkSession with the platform's settings.

The conf that matters for correctness lives in `spark_conf` (one place): UTC session
time so hour partitions mean the same thing as in pyiceberg, and Parquet written with
TIMESTAMP_MICROS because Iceberg's ``timestamptz`` is microseconds (Spark's default
INT96 cannot be registered with ``add_files``). Locally ``local[2]`` with few shuffle
partitions (the default 200 would make tiny tasks dominate on two cores).

The session is created on first use only, so steps that merely carry the resource do not
pay for a JVM. It wraps dagster-pyspark's session builder.
"""

from __future__ import annotations

import sys
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

#: Settings every session gets; callers may add, not silently change these.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def spark_conf(
    master: str = "local[2]",
    app_name: str = "ticklake",
    shuffle_partitions: int = 4,
    driver_memory: str | None = "2g",
    ui_enabled: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The full Spark conf for one session; `extra` cannot override REQUIRED_CONF."""
    if shuffle_partitions < 1:
        raise ValueError("shuffle_partitions must be >= 1")
    clash = {k for k, v in (extra or {}).items() if k in REQUIRED_CONF and str(v) != REQUIRED_CONF[k]}
    if clash:
        raise ValueError(f"these Spark settings are fixed by the platform: {sorted(clash)}")
    conf = {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(shuffle_partitions),
        "spark.ui.enabled": str(ui_enabled).lower(),
        **REQUIRED_CONF,
    }
    if driver_memory:
        conf["spark.driver.memory"] = driver_memory
    if master.startswith("local"):
        # Local Python workers must be this interpreter (it has pyarrow for applyInArrow),
        # not whatever python3 is first on PATH.
        conf["spark.pyspark.python"] = conf["spark.pyspark.driver.python"] = sys.executable
    conf.update({k: str(v) for k, v in (extra or {}).items()})
    return conf


class SparkResource(dg.ConfigurableResource):
    """SparkSession provider; `master` is local[2] locally, the cluster (e.g. yarn) on EMR."""

    master: str = Field(default="local[2]", description="Spark master URL")
    app_name: str = Field(default="ticklake")
    shuffle_partitions: int = Field(default=4, description="spark.sql.shuffle.partitions")
    driver_memory: str | None = Field(default="2g", description="only honoured when the JVM starts")
    ui_enabled: bool = Field(default=False, description="Spark UI on port 4040")
    extra_conf: dict[str, str] = Field(default_factory=dict, description="additional spark.* settings")

    _session: Any = PrivateAttr(default=None)

    def conf(self) -> dict[str, str]:
        return spark_conf(
            self.master,
            self.app_name,
            self.shuffle_partitions,
            self.driver_memory,
            self.ui_enabled,
            dict(self.extra_conf),
        )

    @property
    def spark_session(self) -> Any:
        """The session (pyspark.sql.SparkSession), created on first access. getOrCreate:
        a process has one JVM, so a second resource reuses the running session."""
        if self._session is None:
            # Imported with the first session: pyspark is not needed by the processes that only
            # load the code location (tests/test_code_location_imports.py).
            from dagster_pyspark.resources import spark_session_from_config

            self._session = spark_session_from_config(self.conf())
        return self._session

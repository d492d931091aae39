"""ML assets: daily training datasets (as-of lake snapshots), one model per horizon in
MLflow, and the registered `champion` version the inference service serves.

    lake/features_1s (hourly) -> ml/training_dataset (daily)
        checks: no_label_leakage, rebuild_from_snapshots (both blocking)
    -> ml/model_<h>s (daily; MLflow run with walk-forward metrics beside the baseline)
        check: beats_baseline (blocking: a losing model never reaches the registry)
    -> ml/champion_<h>s (daily; a registered model version, alias `champion` moved to it)
    -> lake/predictions (hourly; what the inference service published, with the parity check)

Every one of them carries an automation condition (assets/automation.py: ML_DAILY and
prediction_hours), evaluated by pipelines/ml_automation.py, so a sealed (e.g. replayed) hour
builds its day's dataset, trains and registers, and lands the hour's predictions with nobody
launching anything. A day too small for walk-forward validation trains no model (the model
asset is skipped, nothing reaches MLflow or the registry); a model that trains but loses to
the baseline fails its blocking check and is not registered.

The dataset and its manifest (Iceberg snapshot id of every table read, row count,
checksum) live in the artifact store; the manifest is what makes a dataset rebuildable
bit for bit, and the rebuild check proves it. Core logic is in ml/ (no Dagster there).
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import time
import warnings
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from assets.automation import ML_DAILY, prediction_hours
from assets.batch_features import BATCH_FEATURES_KEY, hour_us
from assets.partitions import DAILY, HOURLY
from features.spec import FEATURES_TABLE
from ml import dataset as mds
from ml import registry as reg
from ml import train as mtr
from ml.parity import compare_predictions
from ml.predictions import PREDICTION_SCHEMA, PREDICTIONS_TABLE
from resources.artifacts import ArtifactStoreResource
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.mlflow import MLFLOW, MlflowResource
from schemas.tables import TABLES
from streaming.lake import features as fl
from streaming.lake import predictions as pl
from streaming.lake.state import HOUR_US

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))  # partitioned checks

GROUP = "ml"
DATASET_KEY = dg.AssetKey(["ml", "training_dataset"])
CHECK_LEAKAGE = "no_label_leakage"
CHECK_REBUILD = "rebuild_from_snapshots"
CHECK_BASELINE = "beats_baseline"
CHECK_PARITY = "offline_online_parity"
PREDICTIONS_KEY = dg.AssetKey(["lake", PREDICTIONS_TABLE.name])


def model_key(horizon_s: int) -> dg.AssetKey:
    return dg.AssetKey(["ml", f"model_{horizon_s}s"])


def champion_key(horizon_s: int) -> dg.AssetKey:
    return dg.AssetKey(["ml", f"champion_{horizon_s}s"])


def day_start_us(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) * 1_000_000


def dataset_keys(day: str) -> tuple[str, str]:
    """Artifact keys of a day's dataset rows and manifest."""
    return f"ml/datasets/{day}/dataset.parquet", f"ml/datasets/{day}/manifest.json"


def load_dataset(artifacts: ArtifactStoreResource, day: str):
    rows_key, man_key = dataset_keys(day)
    return mds.from_parquet(artifacts.get_bytes(rows_key)), mds.Manifest.from_json(artifacts.get_bytes(man_key))


class DatasetConfig(dg.Config):
    require_sealed: bool = True
    """Refuse a day whose lake hours (trades, book tables) still hold unsealed micro-batch files."""


@dg.asset(
    key=DATASET_KEY,
    partitions_def=DAILY,
    deps=[dg.AssetDep(BATCH_FEATURES_KEY, partition_mapping=dg.TimeWindowPartitionMapping())],
    group_name=GROUP,
    kinds={"python", "parquet"},
    automation_condition=ML_DAILY,
    description="Per (exchange, market, symbol, second): model inputs from lake/features_1s and future mid "
    "log returns over 1/10/60 s, read as of recorded Iceberg snapshot ids (manifest in the "
    "artifact store).",
)
def training_dataset(
    context: dg.AssetExecutionContext, config: DatasetConfig, lake: LakeResource, artifacts: ArtifactStoreResource
) -> dg.MaterializeResult:
    catalog = lake.load_catalog()
    lake.ensure_tables()
    start = day_start_us(context.partition_key)
    inputs = fl.input_tables(catalog)
    if config.require_sealed:
        bad = sorted(
            {f"{name}@{h}" for h in range(start, start + mds.DAY_US, HOUR_US) for name in fl.unsealed(inputs, h)}
        )
        if bad:
            raise dg.Failure(
                description=f"day {context.partition_key} has unsealed lake hours: {bad[:6]}", allow_retries=False
            )
    ftable = fl.ensure_spec_table(catalog, FEATURES_TABLE, dict(lake.table_properties) or None)
    tables = {
        FEATURES_TABLE.identifier: ftable,
        **{TABLES[et].identifier: inputs[name] for name, et in fl.INPUT_TABLES.items()},
    }
    snapshots = mds.current_snapshots(tables)
    rows, manifest = mds.build_dataset(ftable, context.partition_key, start, snapshots)
    rows_key, man_key = dataset_keys(context.partition_key)
    artifacts.put_bytes(rows_key, mds.to_parquet(rows))
    artifacts.put_bytes(man_key, manifest.to_json(), "application/json")
    labelled = {
        f"labelled_{h}s": int((~np.isnan(rows[mds.label_column(h)].to_numpy(zero_copy_only=False))).sum())
        for h in mds.HORIZONS_S
    }
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.num_rows,
            "checksum": manifest.checksum,
            **labelled,
            "snapshot_ids": dg.MetadataValue.json(
                {k: (str(v) if v is not None else None) for k, v in manifest.snapshots.items()}
            ),
            "dataset": dg.MetadataValue.path(artifacts.uri_for(rows_key)),
            "manifest": dg.MetadataValue.path(artifacts.uri_for(man_key)),
        }
    )


def _stored_dataset(lake: LakeResource, artifacts: ArtifactStoreResource, day: str):
    """What both dataset checks start from: the stored rows of `day`, its manifest and
    the features table the manifest's snapshot ids refer to."""
    rows, man = load_dataset(artifacts, day)
    return rows, man, lake.load_catalog().load_table(FEATURES_TABLE.identifier)


def leakage_result(lake: LakeResource, artifacts: ArtifactStoreResource, day: str) -> dg.AssetCheckResult:
    """The leakage check's evaluation of the stored dataset of `day`."""
    rows, man, ftable = _stored_dataset(lake, artifacts, day)
    feats = mds.read_features_as_of(ftable, man.start_us, man.end_us, man.snapshots[FEATURES_TABLE.identifier])
    bad = mds.leakage_violations(rows, feats, man.end_us)
    return dg.AssetCheckResult(
        passed=not bad, metadata={"violations": dg.MetadataValue.json(bad[:10]), "rows": rows.num_rows}
    )


def rebuild_result(lake: LakeResource, artifacts: ArtifactStoreResource, day: str) -> dg.AssetCheckResult:
    """The rebuild check's evaluation: stored rows, manifest and a rebuild all agree."""
    rows, man, ftable = _stored_dataset(lake, artifacts, day)
    rebuilt, again = mds.build_dataset(ftable, man.day, man.start_us, man.snapshots)
    stored = mds.checksum(rows)
    ok = stored == man.checksum == again.checksum
    return dg.AssetCheckResult(
        passed=ok,
        metadata={
            "manifest_checksum": man.checksum,
            "stored_checksum": stored,
            "rebuilt_checksum": again.checksum,
            "rows": rebuilt.num_rows,
        },
    )


def _dataset_check(name: str, description: str, evaluate):
    """A blocking daily check of the stored training dataset that runs
    `evaluate(lake, artifacts, day)` (the tests call the evaluation directly)."""

    @dg.asset_check(asset=DATASET_KEY, name=name, blocking=True, partitions_def=DAILY, description=description)
    def _check(
        context: dg.AssetCheckExecutionContext, lake: LakeResource, artifacts: ArtifactStoreResource
    ) -> dg.AssetCheckResult:
        return evaluate(lake, artifacts, context.partition_key)

    return _check


no_label_leakage = _dataset_check(
    CHECK_LEAKAGE,
    "Labels recomputed with the future cut off at several points equal the stored "
    "labels bit for bit (a label uses no data before its row, nor a shifted row).",
    leakage_result,
)
rebuild_from_snapshots = _dataset_check(
    CHECK_REBUILD,
    "Rebuilding the day from the manifest's snapshot ids (time travel) gives the stored dataset's checksum.",
    rebuild_result,
)


def day_run(mlflow: MlflowResource, day: str, horizon_s: int):
    """The newest MLflow training run of a horizon on a day's dataset, None if there is none."""
    settings = mlflow.settings()
    client = settings.client()
    runs = client.search_runs(
        [reg.experiment_id(client, settings)],
        filter_string=f"tags.dataset_day = '{day}' and tags.horizon_s = '{horizon_s}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _model_asset(horizon_s: int):
    key = model_key(horizon_s)

    @dg.asset(
        key=key,
        partitions_def=DAILY,
        deps=[DATASET_KEY],
        group_name=GROUP,
        kinds={"lightgbm", "mlflow"},
        automation_condition=ML_DAILY,
        output_required=False,
        description=f"LightGBM forecast of the {horizon_s} s mid log return, walk-forward validated; one MLflow "
        "run with params, per-fold and overall metrics beside the baseline, and the dataset's "
        "snapshot ids. Not materialized (skipped, no MLflow run) when the day has too few labelled "
        "rows for a single walk-forward fold: nothing could show it beats the baseline.",
    )
    def _model(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource, mlflow: MlflowResource):
        rows, man = load_dataset(artifacts, context.partition_key)
        res = mtr.train_horizon(rows, horizon_s)
        if not res.folds:
            context.log.info(
                f"{reg.model_name(horizon_s)} {man.day}: {res.rows} labelled rows, too few for a walk-forward "
                "fold; no model trained"
            )
            return
        tags = {
            "dataset_day": man.day,
            "dataset_checksum": man.checksum,
            "horizon_s": str(horizon_s),
            "dagster_run_id": context.run.run_id,
            "beats_baseline": str(res.beats_baseline).lower(),
            **{f"snapshot.{k}": str(v) for k, v in man.snapshots.items()},
        }
        params = {
            **mtr.PARAMS,
            "num_rounds": mtr.NUM_ROUNDS,
            "folds": mtr.DEFAULT_FOLDS,
            "horizon_s": horizon_s,
            "inputs_version": man.inputs_version,
            "feature_spec_version": man.feature_spec_version,
        }
        folds = [
            {
                "fold": f.fold,
                "mse_model": f.mse_model,
                "mse_baseline": f.mse_baseline,
                "test_rows": f.test_rows,
                "train_rows": f.train_rows,
            }
            for f in res.folds
        ]
        run = reg.log_training(
            mlflow.settings(),
            horizon_s=horizon_s,
            booster=res.booster,
            params=params,
            metrics=res.metrics(),
            fold_metrics=folds,
            tags=tags,
        )
        m = res.metrics()
        yield dg.MaterializeResult(
            metadata={
                "mlflow_run_id": run.run_id,
                "model": run.model_name,
                "rows": res.rows,
                "mse_model": m["mse_model"],
                "mse_baseline": m["mse_baseline"],
                "skill": m["skill"],
                "beats_baseline": res.beats_baseline,
                "folds": dg.MetadataValue.json(folds),
            }
        )

    return _model


def _baseline_check(horizon_s: int):
    @dg.asset_check(
        asset=model_key(horizon_s),
        name=CHECK_BASELINE,
        blocking=True,
        partitions_def=DAILY,
        description="The day's MLflow run: pooled walk-forward held-out MSE below the zero-return baseline's; "
        "blocks registration otherwise.",
    )
    def _check(context: dg.AssetCheckExecutionContext, mlflow: MlflowResource) -> dg.AssetCheckResult:
        run = day_run(mlflow, context.partition_key, horizon_s)
        if run is None:
            return dg.AssetCheckResult(passed=False, metadata={"problem": "no MLflow run for the day"})
        met = run.data.metrics
        mse_model, mse_base = met.get("mse_model", float("nan")), met.get("mse_baseline", float("nan"))
        return dg.AssetCheckResult(
            passed=run.data.tags.get("beats_baseline") == "true" and mse_model < mse_base,
            metadata={"mse_model": mse_model, "mse_baseline": mse_base, "mlflow_run_id": run.info.run_id},
        )

    return _check


def _champion_asset(horizon_s: int):
    @dg.asset(
        key=champion_key(horizon_s),
        partitions_def=DAILY,
        deps=[model_key(horizon_s)],
        group_name=GROUP,
        kinds={"mlflow"},
        automation_condition=ML_DAILY,
        description=f"Registers the day's {reg.model_name(horizon_s)} model as a new version and moves the "
        f"`{reg.CHAMPION}` alias to it (runs only after beats_baseline passed).",
    )
    def _champion(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> dg.MaterializeResult:
        settings = mlflow.settings()
        day = context.partition_key
        run = day_run(mlflow, day, horizon_s)
        if run is None:
            raise dg.Failure(description=f"no MLflow run of {reg.model_name(horizon_s)} for {day}")
        if run.data.tags.get("beats_baseline") != "true":
            raise dg.Failure(
                description=f"run {run.info.run_id} did not beat the baseline; not registered", allow_retries=False
            )
        version = reg.register(settings, reg.model_name(horizon_s), run.info.run_id)
        return dg.MaterializeResult(
            metadata={
                "model": reg.model_name(horizon_s),
                "version": version,
                "alias": reg.CHAMPION,
                "mlflow_run_id": run.info.run_id,
            }
        )

    return _champion


# -- predictions in the lake, and offline/online parity -----------------------------------------


class PredictionHourConfig(dg.Config):
    require_complete: bool = True
    """Refuse an hour some model's inference loop has not scored to its end yet."""
    wait_s: float = 600.0
    """How long to wait for the inference service to finish scoring the hour before refusing it
    (a champion registered a moment ago is loaded within the service's reload interval)."""


def serving_models(mlflow: MlflowResource) -> list[str]:
    """Models the inference service serves now: those whose `champion` alias exists."""
    client = mlflow.settings().client()
    return [reg.model_name(h) for h in mds.HORIZONS_S if reg.alias_version(client, reg.model_name(h)) is not None]


def behind_models(conn, rows, newest: dict[str, int], h: int, serving: list[str]) -> list[str]:
    """Models (in the hour's rows, or serving now) whose loop has neither published a prediction
    past the hour nor consumed every feature record now in the topics."""
    out = []
    for m in sorted(set(pl.hour_models(rows)) | set(serving)):
        if newest.get(m, h - 1) >= h + HOUR_US:
            continue
        mine = rows.filter(pc.equal(rows["model"], m))
        if not pl.group_caught_up(conn, m, pl.hour_instruments(mine) if mine.num_rows else None):
            out.append(m)
    return out


@dg.asset(
    key=PREDICTIONS_KEY,
    partitions_def=HOURLY,
    deps=[
        BATCH_FEATURES_KEY,
        *(dg.AssetDep(champion_key(h), partition_mapping=dg.TimeWindowPartitionMapping()) for h in mds.HORIZONS_S),
    ],
    group_name=GROUP,
    kinds={"kafka", "iceberg"},
    automation_condition=prediction_hours(dg.AssetSelection.assets(*(champion_key(h) for h in mds.HORIZONS_S))),
    description=f"`{PREDICTIONS_TABLE.identifier}`: the predictions the inference service published for the "
    "hour (every prediction.* topic, event_id-distinct); the hour is replaced atomically. Waits (wait_s) until "
    "every serving model has scored the hour. Rebuilt when a champion of its day is registered.",
)
def lake_predictions(
    context: dg.AssetExecutionContext,
    config: PredictionHourConfig,
    lake: LakeResource,
    kafka: KafkaResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    h = hour_us(context.partition_key)
    conn = kafka.connection()
    serving = serving_models(mlflow) if config.require_complete else []
    deadline = time.monotonic() + config.wait_s
    table = fl.ensure_spec_table(lake.load_catalog(), PREDICTIONS_TABLE, dict(lake.table_properties) or None)
    while True:
        rows, newest = pl.read_predictions(conn, pl.prediction_topics(conn), h)
        behind = behind_models(conn, rows, newest, h, serving) if config.require_complete else []
        if not behind:
            table = fl.write_hour(table, rows, h, {"writer": "prediction-lake", "hour": context.partition_key})
            # A champion registered while this run waited or wrote is not in `rows`, and its own
            # materialization came before this one, so automation counts it handled: land the
            # hour again with its scores rather than return an hour that lacks them.
            registered = sorted(set(serving_models(mlflow)) - set(serving)) if config.require_complete else []
            if not registered:
                break
            context.log.info(f"champion registered while landing the hour: {registered}; landing it again")
            serving = sorted(set(serving) | set(registered))
            continue
        if time.monotonic() >= deadline:
            raise dg.Failure(description=f"hour {context.partition_key} not fully scored yet by {behind}")
        context.log.info(f"waiting for the inference service to score the hour: {behind}")
        time.sleep(5)
    per_model = {m: int(pc.sum(pc.equal(rows["model"], m)).as_py()) for m in pl.hour_models(rows)}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.num_rows,
            "per_model": dg.MetadataValue.json(per_model),
            "snapshot_id": dg.MetadataValue.text(str(table.current_snapshot().snapshot_id)),
        }
    )


def parity_result(lake: LakeResource, mlflow: MlflowResource, partition_key: str) -> dg.AssetCheckResult:
    """The parity check's evaluation of one hour (lake features vs lake predictions)."""
    h = hour_us(partition_key)
    catalog = lake.load_catalog()
    feats = fl.read_hour_rows(catalog.load_table(FEATURES_TABLE.identifier), h)
    preds = fl.read_range(catalog.load_table(PREDICTIONS_TABLE.identifier), h, h + HOUR_US)
    preds = PREDICTION_SCHEMA.empty_table() if preds is None else preds
    client = mlflow.settings().client()
    cache: dict = {}

    def booster_for(model: str, version: str):
        if (model, version) not in cache:
            run_id = client.get_model_version(model, version).run_id
            cache[model, version] = reg.load_version(client, model, version, run_id).booster
        return cache[model, version]

    ok, details = compare_predictions(feats, preds, booster_for)
    return dg.AssetCheckResult(
        passed=ok,
        metadata={
            "details": dg.MetadataValue.json(details),
            "predictions": preds.num_rows,
            "feature_rows": feats.num_rows,
        },
    )


@dg.asset_check(
    asset=PREDICTIONS_KEY,
    name=CHECK_PARITY,
    partitions_def=HOURLY,
    description="Every published prediction of the hour equals the same model version scored offline "
    "on lake/features_1s, bit for bit.",
)
def predictions_parity(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, mlflow: MlflowResource
) -> dg.AssetCheckResult:
    return parity_result(lake, mlflow, context.partition_key)


MODEL_ASSETS = {h: _model_asset(h) for h in mds.HORIZONS_S}
BASELINE_CHECKS = {h: _baseline_check(h) for h in mds.HORIZONS_S}
CHAMPION_ASSETS = {h: _champion_asset(h) for h in mds.HORIZONS_S}

#: The daily training chain (dataset -> models -> champions) and its checks.
TRAINING_ASSETS = [training_dataset, *MODEL_ASSETS.values(), *CHAMPION_ASSETS.values()]
TRAINING_CHECKS = [no_label_leakage, rebuild_from_snapshots, *BASELINE_CHECKS.values()]
assets = [*TRAINING_ASSETS, lake_predictions]
asset_checks = [*TRAINING_CHECKS, predictions_parity]
jobs: list = []
sensors: list = []
schedules: list = []
resources = {MLFLOW: MlflowResource()}
defs = dg.Definitions(assets=assets, asset_checks=asset_checks, resources=resources)

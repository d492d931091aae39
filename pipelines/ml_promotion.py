"""Promotion runbook as a job a user launches from the UI: shadow vs champion on sealed hours.

1. Register the candidate as a new version and give it the alias `shadow` (MLflow UI or
   client) — it does not serve traffic yet.
2. Start the inference service with a shadow loop (run config `shadows: ["mid_ret_1s:shadow:BTC-USDT"]`,
   canary symbols optional): it publishes to `prediction.<market>.mid_ret_1s-shadow` beside
   the champion's topic.
3. Once the hours are sealed and `lake/predictions` built for them, launch `promote_model`
   with the model and the hours: it compares both versions on the feature rows both scored
   (squared error against the realized label, prediction drift), records the comparison as
   tags of the shadow version, and moves `champion` to it only when it passed; the service
   picks the new champion up at its next alias check.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import json

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.batch_features import hour_us
from features.spec import FEATURES_TABLE
from ml import registry as reg
from ml.predictions import PREDICTION_SCHEMA, PREDICTIONS_TABLE
from ml.promotion import compare_versions
from pipelines.op_job import op_job
from resources.lake import LakeResource
from resources.mlflow import MlflowResource
from streaming.lake import features as fl
from streaming.lake.state import HOUR_US


class PromoteConfig(dg.Config):
    model: str = "mid_ret_1s"
    shadow_alias: str = "shadow"
    hours: list[str] = Field(default_factory=list, description="sealed hour partition keys (2024-08-08-23:00)")
    min_rows: int = 100
    apply: bool = True
    """False: compare and record only (dry run)."""


@dg.op
def promote_shadow(
    context: dg.OpExecutionContext, config: PromoteConfig, lake: LakeResource, mlflow: MlflowResource
) -> dict:
    client = mlflow.settings().client()
    champ = reg.alias_version(client, config.model, reg.CHAMPION)
    shadow = reg.alias_version(client, config.model, config.shadow_alias)
    if champ is None or shadow is None:
        raise dg.Failure(description=f"{config.model} needs both `{reg.CHAMPION}` and `{config.shadow_alias}` aliases")
    if not config.hours:
        raise dg.Failure(description="give the sealed hours to compare on")
    catalog = lake.load_catalog()
    ftable, ptable = catalog.load_table(FEATURES_TABLE.identifier), catalog.load_table(PREDICTIONS_TABLE.identifier)
    hs = sorted(hour_us(k) for k in config.hours)
    feats = pa.concat_tables([fl.read_hour_rows(ftable, h) for h in hs])
    preds = pa.concat_tables([fl.read_range(ptable, h, h + HOUR_US) or PREDICTION_SCHEMA.empty_table() for h in hs])
    cmp = compare_versions(
        feats,
        hs[-1] + HOUR_US,
        preds.cast(PREDICTION_SCHEMA),
        config.model,
        reg.horizon_of(config.model),
        champ[0],
        shadow[0],
        config.min_rows,
    )
    result = {**cmp.to_dict(), "champion_version": champ[0], "shadow_version": shadow[0], "hours": config.hours}
    client.set_model_version_tag(config.model, shadow[0], "promotion_check", json.dumps(result, default=str))
    context.log.info(f"promotion check of {config.model} v{shadow[0]} vs v{champ[0]}: {result}")
    if not cmp.passed:
        raise dg.Failure(description=f"shadow v{shadow[0]} not promoted", metadata={"comparison": result})
    if config.apply:
        client.set_registered_model_alias(config.model, reg.CHAMPION, shadow[0])
        context.log.info(f"{config.model}: `{reg.CHAMPION}` moved to version {shadow[0]}")
    return result


promote_model = op_job(
    promote_shadow,
    "promote_model",
    "Compare a model's shadow version with its champion on sealed hours and move the "
    "`champion` alias only when the shadow is at least as good (promotion runbook).",
)


jobs = [promote_model]
defs = dg.Definitions(jobs=jobs)

"""The automation sensors of the ML area: a sealed hour trains its day and lands its predictions.

The ML assets (assets/ml.py) carry the ML_DAILY and prediction_hours automation conditions
(assets/automation.py); these two sensors evaluate them in the daemon, like the hourly
chain's sensor (pipelines/hourly_chain.py):

* `ml_training_automation`: once lake/features_1s of an hour is built, the day's training
  dataset (leakage and rebuild checks), one model per horizon (baseline check) and the
  champion registration of every model that beat the baseline, in one run per day;
* `ml_predictions_automation`: an hour of lake/predictions once its features exist and again
  once a champion of its day is registered (the service then scores the feature topics with
  it), with the offline/online parity check.

Two sensors, not one: a tick of one sensor requests everything due in dependency order, and
an hour of predictions requested with its day's champion in one backfill would be skipped
whenever another horizon's model of that day fails its baseline check (its upstream failed).
As separate sensors the predictions see only registrations that happened. Both ship STOPPED
like every sensor; `ticklake up` turns them on.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from assets.ml import TRAINING_ASSETS, lake_predictions
from pipelines.hourly_chain import automation_sensor

#: The launcher tag of training runs: dagster.yaml runs one at a time locally (the local MLflow
#: store is one SQLite file, and each day's registration moves the same champion aliases).
ML_TRAINING_LAUNCHER = "ml-training-automation"

TRAINING_SELECTION = dg.AssetSelection.assets(*TRAINING_ASSETS)
PREDICTIONS_SELECTION = dg.AssetSelection.assets(lake_predictions)

ml_training_automation = automation_sensor(
    "ml_training_automation",
    TRAINING_SELECTION,
    ML_TRAINING_LAUNCHER,
    "Builds the training dataset of each day whose features_1s hours were (re)built, trains a "
    "model per horizon and registers every one that beats the baseline as champion.",
)

ml_predictions_automation = automation_sensor(
    "ml_predictions_automation",
    PREDICTIONS_SELECTION,
    "ml-predictions-automation",
    "Lands each hour's predictions in the lake (with the parity check) once its features exist "
    "and again when a champion of its day is registered.",
)

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(sensors=[ml_training_automation, ml_predictions_automation])

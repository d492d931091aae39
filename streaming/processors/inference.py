"""Online inference: feature.* -> prediction.<market>.<model>, exactly once, per-symbol order.

One transactional loop per served model (streaming/processors/txn_loop.py, the processors' loop):
it reads every feature topic it serves, scores each batch with the model version the
registry alias `champion` names, and produces one prediction per feature row in the same
Kafka transaction as the input offsets. Keys stay the symbol and every input partition is
read in order by one consumer, so each symbol's predictions keep the order of its feature
rows. A feature row that cannot be scored (undecodable, another feature spec version,
columns of the wrong type, a non-finite score) goes to dlq.inference with the reason.

The alias is checked every `reload_interval_s`; when it moved, the new version is loaded
between two batches, so a batch is scored by exactly one version and a prediction's
event_id (feature row id + model + version, ml/predictions.py) says which. Until a model
has a champion its loop consumes nothing (offsets stay put), so once the first version is
registered the loop scores the feature topics from where its group left off — from their
beginning the first time. Each model has its own consumer group and transactional id, so
models come and go independently.

The scoring code (ml.predictions.score_features) is the one the offline parity check runs.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient
from pydantic import Field

from features.records import decode_row, rows_to_table
from features.spec import SPEC_VERSION
from ml.dataset import HORIZONS_S
from ml.predictions import CONTENT_TYPE, encode_prediction, score_features
from ml.registry import (
    CHAMPION,
    MlflowSettings,
    ServedModel,
    alias_version,
    horizon_of,
    load_version,
    model_name,
)
from runtime import kafka_config as kc
from runtime.dlq import DlqCounters, dead_letter, record_source
from runtime.home import resolve_home
from runtime.metrics import INPUT_READY
from runtime.service_cli import LoopSettings, service_main
from runtime.service_loop import STOP_TIMEOUT_S, WAIT_SLICE_S, ServiceLoop, Worker
from schemas.model import Exchange, Market
from schemas.topics import DlqStage, dlq_topic, feature_topic, prediction_topic
from streaming.kafka.topic_admin import create_topics
from streaming.kafka.topic_config import TopicConfig
from streaming.processors.feature_processor import parse_pairs
from streaming.processors.txn_loop import LoopStats, OutRecord, TransactionalLoop

log = logging.getLogger(__name__)


def published_name(model: str, alias: str = CHAMPION) -> str:
    """Prediction topic suffix (and loop identity) of a model served under `alias`: the model
    name for its champion, `<model>-<alias>` for a shadow (canary) version, so a shadow's
    predictions never mix with the champion's."""
    return model if alias == CHAMPION else f"{model}-{alias}"


def inference_group(model: str) -> str:
    """Consumer group and transactional id of the loop serving `model`."""
    return f"ticklake-inference-{model}"


class InferenceLoop(TransactionalLoop):
    def __init__(
        self,
        conn: kc.KafkaConnection,
        settings: MlflowSettings,
        model: str,
        pairs: Iterable[tuple[Market, Exchange]],
        *,
        reload_interval_s: float = 10.0,
        topic_config: TopicConfig | None = None,
        input_topics: list[str] | None = None,
        alias: str = CHAMPION,
        symbols: Iterable[str] | None = None,
        **kw,
    ):
        self.pairs = list(pairs)
        self.alias = alias
        #: what the loop publishes as: the model for its champion, `<model>-<alias>` for a shadow
        self.publish_name = published_name(model, alias)
        super().__init__(
            conn,
            group_id=inference_group(self.publish_name),
            transactional_id=inference_group(self.publish_name),
            input_topics=input_topics or [feature_topic(m, x) for m, x in self.pairs],
            **kw,
        )
        self.name = f"inference-{self.publish_name}"
        self.symbols = frozenset(symbols) if symbols else None  # canary: score only these
        self.settings = settings
        self.model = model
        self.horizon_s = horizon_of(model)
        self.reload_interval_s = reload_interval_s
        self.topic_config = topic_config or TopicConfig.local()
        self.served: ServedModel | None = None
        self.reloads = 0
        self.dlq = DlqCounters(DlqStage.INFERENCE.value)
        self._client = None
        self._next_check = 0.0

    def start(self) -> None:
        admin = AdminClient(kc.admin_config(self.conn))
        specs = {
            prediction_topic(m, self.publish_name): self.topic_config.prediction for m in {m for m, _ in self.pairs}
        }
        specs[dlq_topic(DlqStage.INFERENCE)] = self.topic_config.dlq
        create_topics(admin, specs, self.topic_config.replication_factor)
        super().start()

    # -- the model ------------------------------------------------------------------------

    def refresh_model(self, force: bool = False) -> bool:
        """Load the champion when the alias moved (checked every reload_interval_s); True if
        a new version was loaded. Registry errors keep the current version."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.reload_interval_s
        try:
            if self._client is None:
                self._client = self.settings.client()
            found = alias_version(self._client, self.model, self.alias)
            if found is None or (self.served is not None and found[0] == self.served.version):
                return False
            first = self.served is None
            self.served = load_version(self._client, self.model, *found)
            if first:  # input waiting until now was not a stall (ticklake status' stuck check)
                INPUT_READY.labels(self.name).set(time.time())
        except Exception as exc:  # noqa: BLE001 - the registry being down must not stop scoring
            log.warning(
                "%s: cannot check the champion (%s); keeping version %s",
                self.name,
                exc,
                self.served.version if self.served else None,
            )
            return False
        self.reloads += 1
        log.info("%s: serving version %s (run %s)", self.name, self.served.version, self.served.run_id)
        return True

    def lag(self) -> list[tuple[str, int, int]]:
        """No lag while no model is served: waiting for a first champion is not being stuck
        (`ticklake status` would otherwise judge the service stuck on an untrained stack)."""
        return super().lag() if self.served is not None else []

    def run_once(self) -> bool:
        self.refresh_model()
        if self.served is None:  # nothing to serve yet: leave the input where it is
            self.stop_event.wait(min(self.reload_interval_s, 1.0))
            return False
        return super().run_once()

    # -- scoring --------------------------------------------------------------------------

    def _dead(self, m: Message, reason: str) -> OutRecord:
        self.dlq.count(reason)
        dl = dead_letter(
            DlqStage.INFERENCE, reason, source=record_source(m.topic(), m.partition(), m.offset()), raw=m.value()
        )
        return OutRecord(dl.topic, dl.value, dl.key, dl.headers, dl.timestamp_ms)

    def _parse(self, m: Message) -> tuple[dict | None, str | None]:
        try:
            row = decode_row(m.value() or b"")
        except (ValueError, TypeError) as exc:
            return None, f"decode: {exc}"
        if row.get("spec_version") != SPEC_VERSION:
            return None, (
                f"mismatch: feature spec version {row.get('spec_version')!r}, model "
                f"{self.model} takes version {SPEC_VERSION}"
            )
        return row, None

    @staticmethod
    def _schema_error(row: dict) -> str | None:
        try:
            rows_to_table([row])
        except _ARROW_ERRORS as exc:
            return f"schema: {exc}"
        return None

    def process_batch(self, msgs: list[Message]) -> list[OutRecord]:
        assert self.served is not None
        outs: list[OutRecord] = []
        good: list[tuple[Message, dict]] = []
        for m in msgs:
            row, reason = self._parse(m)
            if reason is not None:
                outs.append(self._dead(m, reason))
            elif self.symbols is None or row.get("symbol") in self.symbols:
                good.append((m, row))
        if not good:
            return outs
        try:
            table = rows_to_table([r for _, r in good])
        except _ARROW_ERRORS:
            # Some row has values of the wrong type: find it (row by row only on this rare path).
            kept = []
            for m, r in good:
                reason = self._schema_error(r)
                if reason is None:
                    kept.append((m, r))
                else:
                    outs.append(self._dead(m, reason))
            good = kept
            if not good:
                return outs
            table = rows_to_table([r for _, r in good])
        served = self.served
        preds = score_features(table, served.name, served.version, self.horizon_s, served.booster)
        ts = pc.cast(preds["exchange_ts"], pa.int64()).to_pylist()
        preds = preds.drop_columns(["exchange_ts"])
        for (m, _), p, t in zip(good, preds.to_pylist(), ts, strict=True):
            if not math.isfinite(p["prediction"]):
                outs.append(self._dead(m, f"score: non-finite prediction {p['prediction']!r}"))
                continue
            p["exchange_ts"] = t
            outs.append(
                OutRecord(
                    prediction_topic(p["market"], self.publish_name),
                    encode_prediction(p),
                    p["symbol"].encode(),
                    [("content-type", CONTENT_TYPE.encode()), ("event-id", p["event_id"].encode())],
                    t // 1000,
                )
            )
        return outs


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


class InferenceService(ServiceLoop):
    """The loops of every served model, run side by side in one process (the Dagster run): a
    ServiceLoop whose `start` starts each loop in its own Worker thread, whose `run_once`
    watches them (one failed loop fails the service, crash-only: the supervisor restarts the
    run; all loops done ends it) and whose `close` stops them and waits for their last commit."""

    name = "inference"

    def __init__(self, loops: list[InferenceLoop]):
        super().__init__()
        self.loops = loops
        self._workers: list[Worker] = []
        self._loop_limits: dict[str, float | None] = {}

    @property
    def stats(self) -> dict[str, LoopStats]:
        return {lp.publish_name: lp.stats for lp in self.loops}

    def summary(self) -> str:
        loops = self.loops
        return (
            f"{super().summary()} dlq={ {lp.publish_name: dict(lp.dlq.counts) for lp in loops} } versions="
            f"{ {lp.publish_name: lp.served.version if lp.served else None for lp in loops} }"
        )

    def warm_registry(self) -> None:
        """Touch each distinct store once, serially, before the loops start: a fresh local
        SQLite store creates its tables on first use, which the loops' threads must not race."""
        for settings in {lp.settings for lp in self.loops}:
            try:
                settings.client().search_registered_models(max_results=1)
            except Exception as exc:  # noqa: BLE001 - the loops retry on their own schedule
                log.warning("inference: registry %s not reachable yet: %s", settings.tracking_uri, exc)

    def request_stop(self, *_: object) -> None:
        super().request_stop()
        for lp in self.loops:
            lp.request_stop()

    def run(self, *, idle_exit_s: float | None = None, max_seconds: float | None = None, **kw) -> dict[str, LoopStats]:
        """As ServiceLoop.run; each loop gets the idle and time limits (it idles on its own)."""
        self._loop_limits = {"idle_exit_s": idle_exit_s, "max_seconds": max_seconds}
        return super().run(max_seconds=max_seconds, **kw)

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def start(self) -> None:
        self.warm_registry()
        self._workers = [Worker(lambda lp=lp: lp.run(**self._loop_limits), name=lp.name) for lp in self.loops]

    def run_once(self) -> bool:
        for worker in self._workers:
            if worker.error is not None:
                worker.outcome()  # raises: close() stops the other loops first
        if all(w.done.is_set() for w in self._workers):
            self.request_stop()
            return False
        self.stop_event.wait(WAIT_SLICE_S)
        return True  # a live loop is progress: idling is each loop's own decision

    def close(self) -> None:
        for lp in self.loops:
            lp.request_stop()
        for worker in self._workers:
            worker.done.wait(STOP_TIMEOUT_S)


class InferenceSettings(LoopSettings):
    """The inference service's settings: the Dagster run config (pipelines/services/inference.py)
    and the `python -m streaming.processors.inference` options."""

    models: list[str] = Field(default_factory=list)
    """Registered models to serve (empty: one per horizon, mid_ret_<h>s)."""
    pairs: list[str] = Field(default_factory=list)
    """MARKET:EXCHANGE feature topics to score (empty: all)."""
    shadows: list[str] = Field(default_factory=list)
    """Extra loops serving another alias: MODEL:ALIAS[:SYMBOL,SYMBOL] (canary symbols optional),
    published as prediction.<market>.<MODEL>-<ALIAS> (see pipelines/ml_promotion.py)."""
    reload_interval_s: float = 10.0
    """How often the `champion` alias is checked for a new version."""
    batch_max_ms: int = 200
    """Longest wait for a batch of feature rows."""


def inference_from_settings(
    conn: kc.KafkaConnection,
    mlflow: MlflowSettings,
    settings: InferenceSettings,
    *,
    describe: Callable[[str], object] = log.info,
) -> InferenceService:
    """The service a Dagster run and the standalone entry both run: one loop per model's
    champion plus one per shadow alias."""
    models = settings.models or [model_name(h) for h in HORIZONS_S]
    pairs = parse_pairs(settings.pairs or None)
    common = {"reload_interval_s": settings.reload_interval_s, "batch_max_ms": settings.batch_max_ms}
    loops = [InferenceLoop(conn, mlflow, m, pairs, **common) for m in models]
    for spec in settings.shadows:
        model, alias, *syms = spec.split(":")
        symbols = [s for s in ",".join(syms).split(",") if s] or None
        loops.append(InferenceLoop(conn, mlflow, model, pairs, alias=alias, symbols=symbols, **common))
    describe(f"inference: serving {[lp.publish_name for lp in loops]} from {mlflow.tracking_uri}")
    return InferenceService(loops)


main = service_main(
    __name__,
    InferenceSettings,
    lambda conn, _args, settings: inference_from_settings(
        conn, MlflowSettings.from_env(local_root=lambda: resolve_home().ensure().mlflow_dir), settings
    ),
    service=InferenceService.name,
)


if __name__ == "__main__":
    sys.exit(main())

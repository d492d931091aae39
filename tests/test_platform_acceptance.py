"""The assembled platform, as a user runs it: `ticklake up --replay CAPTURES`, nothing else.

Three genuine captures of three venues are replayed together at speed max through the default
stack (services on): hftbacktest's Binance spot BTCUSDT file (2024-08-08 23:54..23:59:59 UTC),
Bybit's own ob500 history file (XRPUSDT linear, 2024-12-01 00:00) and cryptofeed's OKX capture
(2022-05-13 16:27, spot + swap + dated future: three collector shards whose data starts within
the same 70 ms; the case where a shard's first records once reached the broker half a second
late and the streamed features of a whole shard were dead-lettered; and, two years older than
the others, the case where one close frontier over every source dead-lettered all of OKX's
records as late, once in three runs, depending on which capture the processor read first). No
further command is
given; the test only watches and then checks what a user would look at:

* every trade of the Binance and OKX captures is in the lake exactly once and every Bybit book
  message (1 snapshot + 49 deltas) too, counted from the capture files here, independently of the code;
* nothing the feature processor read was dead-lettered, and the parity check (streamed == batch ==
  Spark features, every row and column) passed for every capture hour;
* the capture hours are sealed, and every hourly product of those hours (batch and Spark
  features with the parity check, ClickHouse loads, bars, charts) was materialized by the
  automation with every check passed, months apart hours included and nothing in between;
* ClickHouse answers a separate client process while the stack runs, with the lake's numbers;
* a Kafka consumer with library defaults receives pragma and processed records;
* the ML area built itself too: the Binance day's training dataset (leakage and rebuild checks
  passed), a model per horizon in MLflow, the 1 s model registered as `champion` (a model that
  loses to its baseline is refused by its blocking check, the only failure allowed, and then has
  no champion), the inference service scored the replayed feature rows from the start of the
  feature topics (predictions in Kafka), and the hour's predictions are in the lake with the
  offline/online parity check passed;
* `ticklake status --json` reports every service healthy; `ticklake down` leaves no process.

Every shipped capture's hours have a lake partition (from 2017, assets/partitions.py); the OKX
capture's 2022 hour is one of those built here.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from streaming.kafka.broker import find_free_port
from tests.test_stack import processes_of, ticklake
from workloads.samples import BINANCE_SPOT_HFT, BYBIT_OB500, OKX_CF

BINANCE, BYBIT, OKX = BINANCE_SPOT_HFT, BYBIT_OB500, OKX_CF
#: The hours each capture's receive times cover (widened by a minute each way), and only those.
BINANCE_HOURS = ("2024-08-08-23:00", "2024-08-09-00:00")
BYBIT_HOURS = ("2024-11-30-23:00", "2024-12-01-00:00")
OKX_HOURS = ("2022-05-13-16:00",)  # received 16:27:04-16:27:16
HOURS = (*OKX_HOURS, *BINANCE_HOURS, *BYBIT_HOURS)
#: Every hourly product downstream of the sealed lake hours.
PRODUCTS = (
    "lake/features_1s",
    "spark/features_1s",
    "clickhouse/trades",
    "clickhouse/features_1s",
    "clickhouse/ohlcv",
    "clickhouse/book_stats_1m",
    "lake/bars_1m",
    "charts/market_overview",
)
SEALED = ("lake/trades", "lake/book_deltas", "lake/book_snapshots")
#: The Binance capture's day and hour: the only replayed day with enough rows to train on.
ML_DAY, ML_HOUR = "2024-08-08", "2024-08-08-23:00"
DATASET_CHECKS = ("no_label_leakage", "rebuild_from_snapshots")
TIMEOUT_S = 1500  # whole test 4-5 min since local steps run in process (11-18 min before); bounded so a hang cannot eat the CI limit
#: After the hourly products: dataset, models, registration, the service's scoring, predictions hour.
ML_TIMEOUT_S = 600
#: Between looks at the instance while waiting (a few SQLite queries each): a product done just
#: after a look is seen this much later.
POLL_S = 2


def binance_trades() -> int:
    with gzip.open(BINANCE, "rt") as fh:
        return sum(1 for line in fh if '@trade"' in line.partition(" ")[2][:200])


def okx_trades() -> int:
    """Trades in the OKX capture's received frames (cryptofeed: `<url> -> <time>: <frame>`)."""
    n = 0
    for line in OKX.read_text().splitlines():
        _, sep, body = line.partition(": ")
        if sep and body.startswith("{"):
            msg = json.loads(body)
            if msg.get("arg", {}).get("channel") == "trades" and "data" in msg:
                n += len(msg["data"])
    return n


def bybit_messages() -> dict[str, int]:
    with zipfile.ZipFile(BYBIT) as z:
        [name] = z.namelist()
        kinds = [json.loads(line)["type"] for line in z.read(name).decode().splitlines() if line.strip()]
    return {k: kinds.count(k) for k in set(kinds)}


def materialized(instance, key: str) -> set[str]:
    import dagster as dg

    return set(instance.get_materialized_partitions(dg.AssetKey(key.split("/"))))


def chain_runs(instance) -> list:
    """Runs of this stack that are not long-running services."""
    return [r for r in instance.get_runs() if "ticklake/service" not in r.tags]


def is_ml_run(run) -> bool:
    """A run of the ML area's assets only (daily training chain or an hour of predictions)."""
    sel = run.asset_selection or set()
    return bool(sel) and all(k.path[0] == "ml" or k.to_user_string() == "lake/predictions" for k in sel)


def refused_models(instance, runs) -> list[str]:
    """Failed steps of ML runs that are not a model refused by its beats_baseline check."""
    return [f for f in failures(instance, runs) if "beats_baseline" not in f.split(":")[0]]


def failures(instance, runs) -> list[str]:
    """What failed in `runs`: step errors and failed checks, for the assertion message."""
    import dagster as dg

    out = []
    for run in runs:
        for rec in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            err = rec.get_dagster_event().event_specific_data.error
            out.append(f"{run.tags.get('dagster/partition')} {rec.step_key}: {err.message if err else '?'}")
    return out


def check_evaluations(instance, runs) -> list[tuple[str, str, str | None, bool]]:
    """(asset, check, partition, passed) of every check evaluated in `runs`."""
    import dagster as dg

    out = []
    for run in runs:
        for rec in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = rec.get_dagster_event().event_specific_data
            out.append((ev.asset_key.to_user_string(), ev.check_name, run.tags.get("dagster/partition"), ev.passed))
    return out


def sealed_layout(table, key: str) -> bool:
    """The hour's data files are the seal's (compacted) files and nothing else."""
    from assets.partitions import hour_start
    from streaming.lake.seal import hour_tasks

    tasks = hour_tasks(table, int(hour_start(key).timestamp()) * 1_000_000)
    return all(Path(t.file.file_path).name.startswith("sealed-") for t in tasks)


def query_clickhouse_from_another_process(dsn: str, sql: str) -> list:
    code = (
        "import json, sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
        "print(json.dumps(c.query(sys.argv[2]).result_rows, default=str))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, dsn, sql], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def default_consumer_receives(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    """Records a confluent-kafka consumer with library defaults (new group, subscribe) gets."""
    from confluent_kafka import Consumer

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"acceptance-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    try:
        c.subscribe([topic])
        got = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not got:
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error() is None:
                    got += 1
        return got
    finally:
        c.close()


@pytest.mark.stack
@pytest.mark.xdist_group("acceptance")  # beside the serial group: it mostly waits on the stack's own ticks
@pytest.mark.timeout(TIMEOUT_S + ML_TIMEOUT_S + 600)
def test_up_replay_of_three_venues_builds_every_hourly_product_by_itself(ticklake_home, tmp_path):
    import dagster as dg

    assert BINANCE.exists() and BYBIT.exists() and OKX.exists()
    home = ticklake_home.root
    captures = tmp_path / "captures"
    captures.mkdir()
    for f in (BINANCE, BYBIT, OKX):  # read at test time; the copies live in the test's tmp dir
        shutil.copy(f, captures / f.name)
    port = find_free_port()
    trades, okx = binance_trades(), okx_trades()
    bybit = bybit_messages()
    assert trades > 0 and okx > 0 and bybit == {"snapshot": 1, "delta": 49}

    up = ticklake(home, "up", "--port", str(port), "--replay", str(captures), "--speed", "max", "--observe")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        instance = dg.DagsterInstance.from_config(str(ticklake_home.dagster_home))

        # A real Prometheus (--observe) scrapes every service: a non-empty series of each metric
        # family (a bad raw record makes a dead letter; sealed hours come with the replay).
        from tests.test_observability import inject_dead_letter, wait_for_every_family

        info = json.loads(ticklake(home, "status", "--json").stdout)
        inject_dead_letter(info["kafka_bootstrap"])
        wait_for_every_family(info["prometheus_url"], TIMEOUT_S)

        # Nothing but waiting: completion, seals and the automation build everything.
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            missing = {k: sorted(set(HOURS) - materialized(instance, k)) for k in (*SEALED, *PRODUCTS)}
            missing = {k: v for k, v in missing.items() if v}
            active = [r for r in chain_runs(instance) if not r.is_finished and r.tags.get("dagster/partition") in HOURS]
            if not missing and not active:
                break
            failed = [r for r in chain_runs(instance) if r.status == dg.DagsterRunStatus.FAILURE and not is_ml_run(r)]
            assert not failed, (
                f"failed runs: {[(r.job_name, r.tags.get('dagster/partition')) for r in failed]}",
                failures(instance, failed),
                [e for e in check_evaluations(instance, failed) if not e[-1]],
            )
            assert time.monotonic() < deadline, (missing, [r.job_name for r in active])
            time.sleep(POLL_S)

        runs = [r for r in chain_runs(instance) if r.tags.get("dagster/partition") in HOURS and not is_ml_run(r)]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [
            (r.job_name, r.tags.get("dagster/partition"), r.status) for r in runs
        ]
        # The months between the two captures were not declared, sealed or built. (Hours of today
        # may be: the hourly schedule seals wall-clock hours the lake's watermark has passed.)
        for key in (*SEALED, *PRODUCTS):
            between = {
                h
                for h in materialized(instance, key)
                if OKX_HOURS[-1] < h < BINANCE_HOURS[0] or BINANCE_HOURS[-1] < h < BYBIT_HOURS[0]
            }
            assert not between, (key, sorted(between)[:5])
        # The automation built the products (a person launched nothing).
        assert any(
            r.tags.get("dagster/from_automation_condition")
            or r.tags.get("dagster/sensor_name") == "hourly_chain_automation"
            for r in runs
        ), [r.tags for r in runs]
        evaluations = check_evaluations(instance, runs)
        assert evaluations and all(passed for *_, passed in evaluations), [e for e in evaluations if not e[-1]]
        parity = {p for a, c, p, _ in evaluations if (a, c) == ("spark/features_1s", "offline_online_parity")}
        assert parity == set(HOURS), parity
        sealed_checks = {(a, p) for a, c, p, _ in evaluations if c == "unique_event_ids"}
        assert {("lake/trades", h) for h in HOURS} <= sealed_checks

        # The lake: every capture event exactly once.
        from pipelines.local.stack import open_local_catalog

        tables = open_local_catalog(ticklake_home).ensure_tables()
        lake_trades = tables["trades"].scan(row_filter="exchange == 'binance'").to_arrow()
        assert lake_trades.num_rows == trades
        assert len(set(lake_trades.column("event_id").to_pylist())) == trades
        assert set(lake_trades.column("symbol").to_pylist()) == {"BTC-USDT"}
        okx_lake = tables["trades"].scan(row_filter="exchange == 'okx'").to_arrow()
        assert okx_lake.num_rows == okx == len(set(okx_lake.column("event_id").to_pylist()))
        xrp = "XRP-USDT-PERP"
        deltas = tables["book_deltas"].scan(row_filter=f"symbol == '{xrp}'").to_arrow()
        snaps = tables["book_snapshots"].scan(row_filter=f"symbol == '{xrp}'").to_arrow()
        assert deltas.num_rows == bybit["delta"]
        assert len(set(deltas.column("event_id").to_pylist())) == bybit["delta"]
        assert snaps.num_rows == bybit["snapshot"]
        for key in HOURS:
            for name in ("trades", "book_deltas", "book_snapshots"):
                assert sealed_layout(tables[name], key), (name, key)

        info = json.loads(ticklake(home, "status", "--json").stdout)
        # ClickHouse, from a separate process, while the stack runs: the lake's trades.
        rows = query_clickhouse_from_another_process(
            info["clickhouse_dsn"], "SELECT count(), uniqExact(event_id) FROM ticklake.trades"
        )
        assert rows == [[trades + okx, trades + okx]], rows
        features = query_clickhouse_from_another_process(
            info["clickhouse_dsn"], "SELECT count() FROM ticklake.features_1s"
        )
        assert features[0][0] > 0

        # Charts on disk for the hours with trades.
        charts = sorted(
            p.relative_to(ticklake_home.artifacts_dir).as_posix() for p in ticklake_home.artifacts_dir.rglob("*.png")
        )
        assert any(c.startswith("binance/BTC-USDT/dt=2024-08-08/hour=23/") for c in charts), charts

        # The streamed features lost nothing (the parity check above compared them with the batch
        # ones hour by hour): no record the feature processor read was dead-lettered (late or bad).
        from schemas.topics import DlqStage, dlq_topic
        from tests.support.processing import read_topics

        late = read_topics(info["kafka_bootstrap"], [dlq_topic(DlqStage.FEATURES)], group=f"acc-{uuid.uuid4().hex}")
        assert late == [], [dict(m.headers() or []).get("dlq-reason") for m in late[:3]]

        # Ordinary Kafka clients: library defaults, a new group, subscribe.
        assert default_consumer_receives(info["kafka_bootstrap"], "pragma-prices-v1") > 0
        assert default_consumer_receives(info["kafka_bootstrap"], "processed.spot.trades.binance") > 0

        # Every service healthy, every service run alive.
        info = json.loads(ticklake(home, "status", "--json").stdout)
        unhealthy = {k: v.get("detail") for k, v in info["services"].items() if not v.get("healthy")}
        assert not unhealthy, unhealthy
        # ... and each long-running service by its own metrics: answering, not stuck; the
        # sealed hours per table; the exit code says healthy.
        assert {h["service"] for h in info["service_health"] if h["state"] == "running"} >= {
            "normalizer",
            "feature-processor",
            "lake-sink",
            "clickhouse-live",
            "pragma-publisher",
        }
        sick = [(h["service"], h["state"], h.get("problem")) for h in info["service_health"] if not h["healthy"]]
        assert not sick, sick
        assert info["lake_sealed_hours"]["trades"] is not None
        assert info["problems"] == [], info["problems"]
        assert ticklake(home, "status", "--json").returncode == 0
        assert info["services"]["replay"]["complete"] is True

        check_ml(instance, ticklake_home, info, time.monotonic() + ML_TIMEOUT_S)
    finally:
        down = ticklake(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    left = processes_of(home)
    assert left == {}, f"processes left behind: {left}"
    assert not (home / "run" / "replay-source.json").exists()


def check_ml(instance, home, info: dict, deadline: float) -> None:
    """Replay -> lake -> dataset -> model (registered) -> service -> predictions in Kafka and
    the lake -> parity, all by automation (ML_DAILY, prediction_hours)."""
    import dagster as dg

    from assets.batch_features import hour_us
    from assets.ml import CHECK_PARITY, PREDICTIONS_KEY, champion_key
    from ml import registry as reg
    from ml.predictions import PREDICTIONS_TABLE
    from pipelines.local.stack import open_local_catalog
    from resources.mlflow import MlflowResource
    from schemas.topics import prediction_topic
    from streaming.lake import features as fl

    def parity_after_champion() -> bool:
        """The hour's predictions were landed (and their parity checked) after the 1 s
        champion was registered: the lake hour holds what the service scored with it."""
        champ = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=champion_key(1), asset_partitions=[ML_DAY]), limit=1
        ).records
        pred = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=PREDICTIONS_KEY, asset_partitions=[ML_HOUR]), limit=1
        ).records
        return bool(champ and pred and pred[0].timestamp > champ[0].timestamp)

    while True:
        ml_runs = [r for r in chain_runs(instance) if is_ml_run(r)]
        bad = refused_models(instance, [r for r in ml_runs if r.status == dg.DagsterRunStatus.FAILURE])
        assert not bad, bad
        active = [r for r in ml_runs if not r.is_finished]
        if parity_after_champion() and not active:
            break
        assert time.monotonic() < deadline, ("ML chain not done", [(r.job_name, r.status) for r in ml_runs])
        time.sleep(POLL_S)

    # Dataset of the replayed (past, 1-hour) day with both blocking checks passed, built by automation.
    evaluations = check_evaluations(instance, ml_runs)
    passed = {(a, c, p) for a, c, p, ok in evaluations if ok}
    assert {("ml/training_dataset", c, ML_DAY) for c in DATASET_CHECKS} <= passed
    assert any(r.tags.get("dagster/sensor_name") == "ml_training_automation" for r in ml_runs), [
        r.tags for r in ml_runs
    ]
    # A model per horizon in MLflow; the registered champions are exactly the models that passed.
    settings = MlflowResource().settings()  # the stack's store: $TICKLAKE_HOME/mlflow
    assert str(home.root) in settings.tracking_uri, settings.tracking_uri
    client = settings.client()
    for h in (1, 10, 60):
        beat = {ok for a, c, p, ok in evaluations if (a, c, p) == (f"ml/model_{h}s", "beats_baseline", ML_DAY)}
        assert len(beat) == 1, (h, evaluations)
        champion = reg.alias_version(client, reg.model_name(h))
        assert (champion is not None) == beat.pop(), h
    version, run_id = reg.alias_version(client, reg.model_name(1))
    run = client.get_run(run_id)
    assert run.data.tags["dataset_day"] == ML_DAY and run.data.tags["snapshot.market.features_1s"]
    assert run.data.metrics["mse_model"] < run.data.metrics["mse_baseline"]

    # The service scored the replayed feature rows with the champion: in Kafka ...
    assert default_consumer_receives(info["kafka_bootstrap"], prediction_topic("spot", reg.model_name(1))) > 0
    # ... and every feature row of the hour has its prediction in the lake, by that version.
    catalog = open_local_catalog(home).load_catalog()
    h0 = hour_us(ML_HOUR)
    feats = fl.read_hour_rows(catalog.load_table("market.features_1s"), h0)
    preds = fl.read_range(catalog.load_table(PREDICTIONS_TABLE.identifier), h0, h0 + 3_600_000_000)
    assert feats.num_rows > 0 and preds is not None
    cols = (preds[c].to_pylist() for c in ("feature_event_id", "model", "model_version"))
    mine = [(f, v) for f, m, v in zip(*cols, strict=True) if m == reg.model_name(1)]
    assert {f for f, _ in mine} == set(feats["event_id"].to_pylist())
    assert len(mine) == feats.num_rows and {v for _, v in mine} == {version}
    # The offline/online parity check of that landing passed.
    parity = [ok for a, c, p, ok in evaluations if (a, c, p) == ("lake/predictions", CHECK_PARITY, ML_HOUR)]
    assert parity and all(parity), evaluations

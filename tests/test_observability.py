"""Observability as code: alert rules (promtool's own unit tests), dashboards that only use
metrics the code defines, the service record + metrics endpoint every service runs under,
the health verdict `ticklake status` gives, consumer lag against a real broker, and the JSON
log format. The scrape of every service by a real Prometheus is asserted on the running
stack of tests/test_platform_acceptance.py (no extra stack here)."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from runtime import metrics as m
from runtime import service_status as ss
from runtime.logs import JsonFormatter, log_event, set_context

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
#: Names Prometheus itself provides (not defined by our code).
PROMETHEUS_BUILTINS = {"up"}
#: The seed's observability list, as metric families (each must exist in the code).
SEED_FAMILIES = {
    "ticklake_topic_records_consumed_total",
    "ticklake_topic_records_produced_total",  # topic rates in/out
    "ticklake_consumer_lag_records",  # lag per partition
    "ticklake_dead_letters_total",  # DLQ by reason
    "ticklake_exchange_to_processed_seconds",
    "ticklake_exchange_to_feature_seconds",  # latency histograms
    "ticklake_collector_resyncs_total",
    "ticklake_collector_reconnects_total",  # books resynced, reconnects
    "ticklake_collector_rate_limit_hits_total",  # per egress IP
    "ticklake_lake_files_written_total",
    "ticklake_lake_file_size_bytes",  # lake files / size
    "ticklake_lake_newest_sealed_hour_timestamp_seconds",  # sealed-hour freshness
    "ticklake_collector_sequence_gaps_total",
    "ticklake_collector_symbols",  # gaps per symbol-hour
}


def referenced_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b(ticklake_[a-z0-9_]+)", expr)) | set(re.findall(r"\b(up)\{", expr))
    out = set()
    for n in names:
        for suffix in ("_bucket", "_count", "_sum"):
            if n.endswith(suffix) and n[: -len(suffix)] in m.family_names():
                n = n[: -len(suffix)]
        out.add(n)
    return out


def test_seed_observability_list_is_defined_once():
    names = m.family_names()
    assert SEED_FAMILIES <= names, SEED_FAMILIES - names
    # Prometheus conventions: prefix, unit or _total on every family.
    for n in names:
        assert n.startswith("ticklake_"), n
    # One definition: the old per-area modules re-export the same objects.
    from collectors import metrics as cm
    from runtime.dlq import _PROM
    from streaming.lake import sink as lake_sink
    from streaming.pragma import publisher
    from streaming.processors import metrics as processor_metrics

    assert cm.RESYNCS is m.COLLECTOR_RESYNCS and processor_metrics.FEATURE_DELAY is m.EXCHANGE_TO_FEATURE
    assert lake_sink.LAG is m.LAKE_LAG and _PROM is m.DEAD_LETTERS and publisher.PUBLISHED is m.PRAGMA_PUBLISHED


def test_alert_rules_and_dashboards_reference_only_defined_metrics():
    defined = m.family_names() | PROMETHEUS_BUILTINS
    rules = (PROM / "rules" / "ticklake.yml").read_text()
    exprs = re.findall(r"expr: (?:\|\n)?((?:.*\n)+?)\s+for:", rules)
    assert len(exprs) == 6
    for expr in exprs:
        assert referenced_metrics(expr) <= defined, expr
    dashboards = sorted(GRAFANA.glob("*.json"))
    assert {p.stem for p in dashboards} >= {"collectors", "processing", "lake", "services", "pragma"}
    used: set[str] = set()
    for path in dashboards:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["panels"], path
        for panel in dash["panels"]:
            for target in panel["targets"]:
                refs = referenced_metrics(target["expr"])
                assert refs, (path.name, target["expr"])
                assert refs <= defined, (path.name, refs - defined)
                used |= refs
    assert SEED_FAMILIES <= used, SEED_FAMILIES - used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
def test_alert_rules_pass_promtool_unit_tests():
    check = subprocess.run(
        ["promtool", "check", "rules", str(PROM / "rules" / "ticklake.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "tests/ticklake_test.yml"],
        cwd=PROM,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_service_run_serves_metrics_and_records_port_errors_and_restarts(tmp_path):
    with ss.service_run("unit-svc", shard="s1", run_id="r1", home=tmp_path, log_json=False) as handle:
        record = json.loads(handle.path.read_text())
        assert record["state"] == "running" and record["starts"] == 1 and record["run_id"] == "r1"
        target = json.loads(handle.target_path.read_text())
        assert target == [
            {"targets": [f"127.0.0.1:{record['port']}"], "labels": {"service": "unit-svc", "shard": "s1"}}
        ]
        samples = ss.scrape(record["port"])
        starts = {lb["service"]: v for lb, v in samples[m.SERVICE_START_TIME._name]}
        assert abs(starts["unit-svc"] - time.time()) < 600
        [line] = ss.service_health(tmp_path)
        assert line["healthy"] and line["metrics_port"] == record["port"] and line["restarts"] == 0
    assert json.loads(handle.path.read_text())["state"] == "stopped"
    assert not handle.target_path.exists()
    # A crash: recorded with its error; the next start counts a restart.
    with pytest.raises(RuntimeError), ss.service_run("unit-svc", home=tmp_path, log_json=False):
        raise RuntimeError("broker gone")
    [line] = ss.service_health(tmp_path)
    assert not line["healthy"] and "broker gone" in line["last_error"] and line["state"] == "failed"
    with ss.service_run("unit-svc", home=tmp_path, log_json=False):
        logging.getLogger("streaming.unit").error("delivery failed: partition 3")
        deadline = time.monotonic() + 30  # an error right after a write lands within a second
        while ss.service_health(tmp_path)[0]["last_error"] != "delivery failed: partition 3":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        [line] = ss.service_health(tmp_path)
        assert line["healthy"] and line["restarts"] == 2


def test_health_verdict_lag_without_progress_is_stuck():
    rec = {"service": "lake-sink", "state": "running", "starts": 3, "pid": 1, "port": 1}
    now = 10_000.0
    lag = [({"service": "lake-sink", "topic": "t", "partition": "0"}, 500.0)]
    fresh = {m.CONSUMER_LAG_NAME: lag, m.LAST_RECORD._name: [({"service": "lake-sink"}, now - 5)]}
    stale = {m.CONSUMER_LAG_NAME: lag, m.LAST_RECORD._name: [({"service": "lake-sink"}, now - 600)]}
    idle = {m.CONSUMER_LAG_NAME: [(lag[0][0], 0.0)], m.LAST_RECORD._name: [({"service": "lake-sink"}, now - 9000)]}
    ok = ss.judge(rec, fresh, now=now)
    assert ok["healthy"] and ok["lag"] == 500 and ok["last_record_age_s"] == 5 and ok["restarts"] == 2
    stuck = ss.judge(rec, stale, now=now)
    assert not stuck["healthy"] and stuck["problem"].startswith("stuck")
    assert ss.judge(rec, idle, now=now)["healthy"]  # a quiet venue is not a sick service
    # inference serving its first model 2 s ago with a backlog found then: not stuck; 200 s later it is
    waited = {m.CONSUMER_LAG_NAME: lag, m.INPUT_READY._name: [({"service": "inference-m"}, now - 2)]}
    started = {m.SERVICE_START_TIME._name: [({"service": "lake-sink", "shard": ""}, now - 213)]}
    assert ss.judge(rec, {**waited, **started}, now=now)["healthy"]
    assert not ss.judge(rec, {**waited, **started}, now=now + 200)["healthy"]
    assert not ss.judge(rec, started | {m.CONSUMER_LAG_NAME: lag}, now=now)["healthy"]  # never ready-marked
    markers = {
        m.CONSUMER_LAG_NAME: [({"partition": str(p)}, 1.0) for p in range(5)],
        m.LAST_RECORD._name: [({"service": "lake-sink"}, now - 9000)],
    }
    assert ss.judge(rec, markers, now=now)["healthy"]  # 1 per partition: a trailing txn marker
    assert not ss.judge(rec, None, scrape_error="refused", now=now)["healthy"]
    assert not ss.judge(rec, fresh, alive=False, now=now)["healthy"]
    assert ss.judge({**rec, "state": "stopped"}, None, alive=False, now=now)["healthy"]


def test_loop_counters_count_a_batch_and_the_shared_families():
    """One handled batch is counted once, in the loop's stats and in the families status reads."""
    from prometheus_client import REGISTRY

    def consumed(topic: str) -> float:
        return (
            REGISTRY.get_sample_value(m.RECORDS_CONSUMED._name + "_total", {"service": "unit-loop", "topic": topic})
            or 0.0
        )

    before = consumed("a"), consumed("b")
    c = m.LoopCounters()
    c.consumed("unit-loop", ["a", "b", "a"])
    c.consumed("unit-loop", [])  # an empty transaction (e.g. windows closed by time) is a batch, not a record
    assert (c.batches, c.records_in) == (2, 3)
    assert (consumed("a") - before[0], consumed("b") - before[1]) == (2.0, 1.0)
    assert REGISTRY.get_sample_value(m.LAST_RECORD._name, {"service": "unit-loop"}) > time.time() - 60


def test_consumer_lag_per_partition_on_a_real_broker(kafka_broker):
    topic = f"obs-lag-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    prod = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(7):
        prod.produce(topic, value=b"x", partition=i % 2)
    assert prod.flush(30) == 0
    cons = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": topic,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        cons.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < 7 and time.monotonic() < deadline:
            got += [x for x in cons.consume(10, 0.5) if x.error() is None]
        assert len(got) == 7
        # Positions as a processor holds them: partition 0 (4 records) committed up to 1,
        # partition 1 (3 records) fully.
        lag = sorted(m.consumer_lag(cons, [(topic, 0, 1), (topic, 1, 3)]))
        assert lag == [(topic, 0, 3), (topic, 1, 0)]
        m.register_lag_provider("unit-lag", lambda: m.consumer_lag(cons, [(topic, 0, 1), (topic, 1, 3)]))
        from prometheus_client import REGISTRY

        assert (
            REGISTRY.get_sample_value(m.CONSUMER_LAG_NAME, {"service": "unit-lag", "topic": topic, "partition": "0"})
            == 3.0
        )
    finally:
        m.unregister_lag_provider("unit-lag")
        cons.close()


def test_json_log_line_has_service_shard_symbol_and_run_id():
    logger = logging.getLogger("ticklake.test-obs")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        set_context(service="collector:binance-spot", shard="binance-spot", run_id="abc123")
        log_event(logger, logging.WARNING, "resync", symbol="BTCUSDT", reason="gap: U=5 > u+1=3")
        logger.info("plain %s", "line")
    finally:
        set_context(service=None, shard=None, run_id=None)
        logger.removeHandler(handler)
    first, second = (json.loads(x) for x in buf.getvalue().splitlines())
    assert first["service"] == "collector:binance-spot" and first["shard"] == "binance-spot"
    assert first["symbol"] == "BTCUSDT" and first["run_id"] == "abc123" and first["level"] == "warning"
    assert first["event"] == "resync" and first["reason"].startswith("gap")
    assert second["event"] == "plain line" and second["symbol"] is None and second["run_id"] == "abc123"
    assert {"ts", "level", "logger", "event", "service", "shard", "symbol", "run_id"} <= second.keys()


# --------------------------------------------------------------------------- on a running stack

#: Families every replay-driven stack must show in Prometheus (the seed list plus the
#: per-service ones); checked by tests/test_platform_acceptance.py on its running stack.
STACK_FAMILIES = SEED_FAMILIES | {
    "ticklake_service_start_time_seconds",
    "ticklake_service_last_record_timestamp_seconds",
}
#: The long-running services a `ticklake up --replay` runs besides its collector shards.
STACK_SERVICES = {"normalizer", "feature-processor", "lake-sink", "clickhouse-live", "pragma-publisher"}


def inject_dead_letter(bootstrap: str) -> None:
    """One undecodable record on a raw topic: the normalizer must dead-letter it with a reason
    (so the DLQ family has a series to scrape)."""
    prod = Producer({"bootstrap.servers": bootstrap})
    prod.produce("raw.spot.trades.binance", key=b"BTCUSDT", value=b"\x00not an envelope")
    assert prod.flush(30) == 0


def wait_for_every_family(prometheus_url: str, timeout_s: float) -> dict[str, set[str]]:
    """Until Prometheus holds a non-empty series of every STACK_FAMILIES family and scrapes
    every service (up == 1); returns {family: services seen} for the assertion message."""
    from pipelines.local import observe

    deadline = time.monotonic() + timeout_s
    while True:
        seen: dict[str, set[str]] = {}
        for row in observe.query(prometheus_url, 'count by (__name__, service) ({__name__=~"ticklake_.+"})'):
            name = row["metric"]["__name__"]
            for suffix in ("_bucket", "_count", "_sum"):
                if name.endswith(suffix) and name[: -len(suffix)] in STACK_FAMILIES:
                    name = name[: -len(suffix)]
            seen.setdefault(name, set()).add(row["metric"].get("service", ""))
        up = {r["metric"].get("service"): r["value"][1] for r in observe.query(prometheus_url, 'up{job="ticklake"}')}
        missing = STACK_FAMILIES - seen.keys()
        services = {s for s, v in up.items() if v == "1"}
        collectors = {s for s in services if s and s.startswith("collector:")}
        if not missing and STACK_SERVICES <= services and collectors:
            return seen
        assert time.monotonic() < deadline, (
            f"missing families {sorted(missing)}; scraped services {up}; targets {observe.targets(prometheus_url)}"
        )
        time.sleep(10)

"""Helpers of the stream-processing tests (normalizer, feature processor, runbook): processor
subprocesses and reading topics back. Producing inputs is workloads/kafka.py.

Each of those test modules starts its *own* broker: the processors read and write the
project's fixed topic names (schemas/topics.py), which other suites on the session broker
also produce to, and a test that counts records must know exactly what went in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime import kafka_config as kc
from schemas.model import EventType, Exchange, Market
from schemas.topics import event_topic
from streaming.kafka.io import partitions_for, plain_consumer, read_all
from workloads.kafka import connection

REPO = Path(__file__).resolve().parents[2]


def read_topics(bootstrap: str, topics: list[str], group: str = "test-reader") -> list:
    c = plain_consumer(connection(bootstrap), group)
    try:
        return read_all(c, partitions_for(c, topics))
    finally:
        c.close()


def run_module(module: str, args: list[str], bootstrap: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), kc.KAFKA_BOOTSTRAP_ENV: bootstrap}
    fh = open(log, "ab")  # noqa: SIM115 - the child process writes to it after we return
    if any(a.startswith("--test-hold") for a in args):
        # The in-transaction hold is a test hook, outside the production module.
        args, module = [module, *args], "tests.support.hold_in_txn"
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited ({proc.returncode}) before {path} appeared:\n"
                + (log.read_text()[-3000:] if log else "")
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_exit(proc: subprocess.Popen, timeout: float, log: Path) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError("processor did not finish:\n" + log.read_text()[-3000:]) from None
    assert rc == 0, log.read_text()[-3000:]


def feature_input_types() -> tuple[EventType, ...]:
    return (EventType.TRADE, EventType.BOOK_SNAPSHOT, EventType.BOOK_DELTA)


def processed_feature_topics(market: Market = Market.SPOT, exchange: Exchange = Exchange.BINANCE) -> list[str]:
    return [event_topic("processed", market, et, exchange) for et in feature_input_types()]

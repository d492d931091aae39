"""The default `ticklake up`, as a new user runs it first: services on, the shipped collectors.yaml.

Its service runs (a collector shard per venue and market, the processors, the sink, the
publishers) are Dagster runs like the hourly work, and once filled a count cap of 12 runs
by themselves: a seal, an hourly chain, a training or a backfill launched on the default
stack stayed QUEUED for good. The live venues cannot be reached here, so the shards run
without data; what is checked is that work launched the way a user launches it leaves the
queue and reaches its verdict while every service keeps running.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from collectors.config import load_shards
from pipelines.local.stack import collectors_file
from pipelines.services.registry import services
from runtime.home import TicklakeHome
from streaming.kafka.broker import find_free_port
from tests.support.stack import processes_of, ticklake

#: The services every default stack runs once each (the registry's, less those run per
#: instance: the collector, one run per shard of collectors.yaml).
SINGLE_SERVICES = {s.name for s in services() if s.instances is None}


def running_services(home) -> set[str]:
    info = json.loads(ticklake(home, "status", "--json").stdout)
    return {h["service"] for h in info["service_health"] if h["state"] == "running"}


@pytest.mark.stack
@pytest.mark.timeout(900)
def test_default_up_runs_hourly_work_beside_every_service(ticklake_home: TicklakeHome):
    home = ticklake_home.root
    up = ticklake(home, "up", "--port", str(find_free_port()))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        shards = {f"collector:{s.name}" for s in load_shards(collectors_file(ticklake_home))}
        assert len(shards) >= 6, shards  # BTC and ETH on Binance, Bybit and OKX, spot and perp
        expected = shards | SINGLE_SERVICES
        deadline = time.monotonic() + 300
        while (running := running_services(home)) != expected:
            assert time.monotonic() < deadline, sorted(expected ^ running)
            time.sleep(2)

        # An hour of the lake sealed through `ticklake backfill`, as a user asks for it. The lake
        # is empty (no venue is reachable), so the seal's verdict is its refusal of an hour that
        # is not closed; on a stack whose run slots the services hold, the run never starts and
        # the command waits until the timeout.
        backfill = ticklake(
            home,
            "backfill",
            "2024-08-09T03:00",
            "2024-08-09T04:00",
            "--select",
            "lake/trades",
            "--poll",
            "1",
            timeout=300,
        )
        assert backfill.returncode == 1, backfill.stdout + backfill.stderr
        assert re.search(r"backfill \w+: 1 hour \(", backfill.stdout), backfill.stdout
        assert "failed run" in backfill.stderr and "is not closed yet" in backfill.stderr, backfill.stderr
        assert running_services(home) == expected
    finally:
        down = ticklake(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_of(home) == {}

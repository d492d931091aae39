"""`ticklake up --observe`: a real Prometheus (the Debian binary) scraping every service.

Opt-in, because a scraping server costs CPU the idle stack should not pay. The services
write their own file_sd target files (<home>/run/prometheus/targets/<service>.json, see
runtime/service_status.py) when they start and remove them when they stop, so Prometheus
learns each ephemeral metrics port without a port plan; it watches the directory (inotify),
nothing here polls. The alert rules of deploy/prometheus/rules are loaded too, so the UI's
Alerts page shows the same rules production runs.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

PROMETHEUS = "prometheus"
#: Generous for a laptop-sized machine: a service busy at replay speed max can take seconds
#: to answer a scrape (GIL), and a failed scrape loses the sample.
SCRAPE_INTERVAL = "10s"
SCRAPE_TIMEOUT = "9s"
STATE_FILE = "prometheus.json"


def binary() -> str | None:
    return shutil.which("prometheus")


def rules_dir(repo_root: Path) -> Path:
    return repo_root / "deploy" / "prometheus" / "rules"


def prometheus_dir(run_dir: Path) -> Path:
    return run_dir / "prometheus"


def config_text(targets_dir: Path, rules: Path) -> str:
    """prometheus.yml for the local stack (YAML is a superset of JSON: no YAML writer needed)."""
    cfg = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_TIMEOUT, "evaluation_interval": "15s"},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "ticklake",
                "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "1m"}],
            }
        ],
    }
    return json.dumps(cfg, indent=2) + "\n"


def command(run_dir: Path, repo_root: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """Write the config and return the server's command line."""
    exe = binary()
    if exe is None:
        raise FileNotFoundError("prometheus binary not found (Debian: apt-get install prometheus)")
    pdir = prometheus_dir(run_dir)
    targets = pdir / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    config = pdir / "prometheus.yml"
    config.write_text(config_text(targets, rules_dir(repo_root)))
    return [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={pdir / 'data'}",
        f"--web.listen-address={host}:{port}",
        "--storage.tsdb.retention.time=2d",
        "--log.level=warn",
    ]


def save_url(run_dir: Path, url: str) -> None:
    (run_dir / STATE_FILE).write_text(json.dumps({"url": url}))


def recorded_url(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / STATE_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None


def ready(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def query(url: str, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Instant query through the HTTP API; returns the result vector."""
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=timeout) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query {promql!r} failed: {body}")
    return body["data"]["result"]


def targets(url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=timeout) as resp:
        return json.loads(resp.read())["data"]["activeTargets"]

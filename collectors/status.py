"""What each collector shard is doing, where `ticklake status` can read it.

A shard runs as a Dagster run (or `python -m collectors.runner`), a process the CLI cannot
ask; so the runner writes a small JSON report, <home>/run/collectors/<shard>.json, every
few seconds (atomic replace; a few hundred bytes, nothing at all per frame) with, per
websocket connection: connected or not, age of its last frame, consecutive connect
failures and the last error. The CLI reads the reports of the shards in collectors.yaml
and says per shard whether it is connected, how old its newest frame is, and, when a
venue cannot be reached, why, in words a user can act on ("DNS lookup of
stream.binance.com failed: no internet access?") rather than a bare exception.

Plain Python, no Dagster; the writer is collectors/runner.py, the reader pipelines/local/stack.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collectors.config import HOME_ENV, ShardConfig

#: reports live in <home>/RUN_SUBDIR/<shard>.json (runtime/home.py: run_dir = <home>/run)
RUN_SUBDIR = Path("run") / "collectors"
#: how often a running shard rewrites its report
REPORT_INTERVAL_S = 5.0
#: a report older than this means the shard's process is gone (or hung)
STALE_AFTER_S = 30.0


def status_dir(home: str | Path) -> Path:
    return Path(home) / RUN_SUBDIR


def status_file(shard: str, home: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The report file of ``shard`` under ``home`` (default: $TICKLAKE_HOME, else .ticklake)."""
    env = os.environ if env is None else env
    return status_dir(home if home is not None else (env.get(HOME_ENV) or ".ticklake")) / f"{shard}.json"


def short_url(url: str) -> str:
    """scheme://host:port/path without the (possibly very long) stream list."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:120]


def explain(error: str, url: str = "") -> str:
    """A connect or session error as the reason a user can act on."""
    parts = urlsplit(url) if url else None
    host = (parts.hostname or "") if parts else ""
    where = f"{host}:{parts.port}" if parts and parts.port else host or "the venue"
    e = error.lower()
    if any(
        s in e
        for s in (
            "name or service not known",
            "temporary failure in name resolution",
            "nodename nor servname",
            "gaierror",
            "no address associated",
            "domain name not found",
            "dnserror",
        )
    ):
        return f"venue unreachable: DNS lookup of {host or 'the venue host'} failed (no internet access from this machine?)"
    if "connection refused" in e or "connect call failed" in e or "errno 111" in e:
        return f"venue unreachable: connection to {where} refused (nothing listening there)"
    if "network is unreachable" in e or "errno 101" in e or "no route to host" in e or "errno 113" in e:
        return f"venue unreachable: no network route to {where} (no internet access from this machine?)"
    if "timed out" in e or "timeout" in e:
        return (
            f"venue unreachable: connecting to {where} timed out (no internet access, or a firewall drops the traffic?)"
        )
    if "451" in e:
        return f"refused by {where}: HTTP 451, the venue does not serve this location"
    if "http 403" in e or " 403" in e:
        return f"refused by {where}: HTTP 403 (location, IP ban or WAF)"
    if "http 429" in e or "http 418" in e:
        return f"rate-limited by {where} ({error})"
    if e.startswith("watchdog"):
        return f"connected to {where} but no data arrived ({error}); reconnecting"
    if "certificate" in e or "sslerror" in e or "[ssl" in e or "ssl handshake" in e:
        return f"TLS to {where} failed: {error} (intercepting proxy or wrong endpoint?)"
    return f"connection to {where} failing: {error}"


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, separators=(",", ":")))
    os.replace(tmp, path)


def summarize(
    connections: list[dict[str, Any]], *, rest_error: str = "", rest_url: str = "", stopped: bool = False
) -> dict[str, Any]:
    """The shard-level verdict from its connections: state, connected, newest frame, reason."""
    ages = [c["last_frame_age_s"] for c in connections if c.get("last_frame_age_s") is not None]
    up = [c for c in connections if c["connected"]]
    failing = [c for c in connections if not c["connected"] and c.get("last_error")]
    reason = ""
    if stopped:
        state = "stopped"
    elif not connections:
        state = "starting"  # fetching reference data before it connects
        if rest_error:
            state = "unreachable"
            reason = explain(rest_error, rest_url)
    elif len(up) == len(connections):
        state = "connected"
    elif not up and failing:
        state = "unreachable"
    elif failing:
        state = "degraded"
    else:
        state = "connecting"
    if failing and not reason:
        reason = explain(failing[0]["last_error"], failing[0].get("url", ""))
    return {
        "state": state,
        "connected": bool(connections) and len(up) == len(connections) and not stopped,
        "last_frame_age_s": min(ages) if ages else None,
        "reason": reason,
    }


#: the state of a replayed shard whose capture has run out (see after_capture_end)
CAPTURE_EXHAUSTED = "capture exhausted"


def after_capture_end(shard: dict[str, Any]) -> dict[str, Any]:
    """A replay shard's status once the emulator has served all of its venue's capture.

    Nothing more will arrive on that session, so the silence watchdog closes it every
    ``watchdog_s`` and the shard reconnects, which is what it must do against a live venue
    that goes quiet. Against an exhausted capture that silence is the expected end, not a
    venue problem; any other failure (refused, TLS, a stale report) keeps its own state.
    """
    failing = [c for c in shard.get("connections") or () if not c.get("connected") and c.get("last_error")]
    silent = failing and all(str(c["last_error"]).startswith("watchdog") for c in failing)
    if shard.get("state") not in ("unreachable", "degraded") or not silent:
        return shard
    return {
        **shard,
        "state": CAPTURE_EXHAUSTED,
        "reason": "the replayed capture has no frames left for this shard; the silence watchdog "
        "closes the idle session and the shard reconnects, as it would to a quiet venue",
    }


def read_report(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def shard_status(cfg: ShardConfig, report: dict[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """One line of `ticklake status` for a configured shard, from its report (if any)."""
    now = time.time() if now is None else now
    base = {
        "shard": cfg.name,
        "exchange": str(cfg.exchange),
        "market": str(cfg.market),
        "symbols": list(cfg.symbols),
        "endpoint": short_url(cfg.endpoints.ws),
    }
    if not cfg.enabled:
        return {
            **base,
            "state": "disabled",
            "connected": False,
            "last_frame_age_s": None,
            "reason": "enabled: false in the collectors config",
        }
    if report is None:
        return {
            **base,
            "state": "not running",
            "connected": False,
            "last_frame_age_s": None,
            "reason": "no report from this shard yet: its run has not started (services off, or the "
            "collector supervisor has not launched it)",
        }
    age = now - float(report.get("updated_at", 0))
    out = {
        **base,
        **{
            k: report.get(k)
            for k in (
                "state",
                "connected",
                "last_frame_age_s",
                "reason",
                "pid",
                "frames_in",
                "events_out",
                "connections",
            )
        },
    }
    if out["last_frame_age_s"] is not None:
        out["last_frame_age_s"] = round(out["last_frame_age_s"] + max(0.0, age), 1)
    out["report_age_s"] = round(age, 1)
    if report.get("state") != "stopped" and age > STALE_AFTER_S:
        out.update(
            state="no report",
            connected=False,
            reason=f"last report {age:.0f}s ago: the shard's process is gone or stuck "
            f"(was: {report.get('state')}{', ' + report['reason'] if report.get('reason') else ''})",
        )
    return out


def collectors_status(home: str | Path, shards: Iterable[ShardConfig], now: float | None = None) -> list[dict]:
    return [shard_status(s, read_report(status_dir(home) / f"{s.name}.json"), now) for s in shards]

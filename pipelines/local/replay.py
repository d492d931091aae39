"""`ticklake up --replay PATH`: the exchange emulator as a stack service, and the files
that point the platform at it.

The emulator (`python -m collectors.replay`) runs as its own supervised process like the
broker; it writes its endpoints and ready-made collector shards to <home>/run/replay.json.
From those, `up` writes <home>/collectors.yaml (the collector supervisor then keeps one run
per shard, exactly as for live venues), points the normalizer's reference data at the
emulator's exchange-info endpoints (no internet needed), and records the replay source in
<home>/run/replay-source.json: capture, speed, control URL and the event-time hours the
capture covers. The `replay_completion` sensor reads that file to declare the capture
complete once it is exhausted and drained (pipelines/replay_completion.py).
Plain Python: no Dagster import (the CLI process uses it before Dagster runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from collectors.config import ShardConfig, dump_shards
from streaming.kafka.source_complete import hour_span, merge_spans

REPLAY = "replay"
EMULATOR_STATE = "replay.json"
SOURCE_FILE = "replay-source.json"
#: The sensor that declares a replay complete (pipelines/replay_completion.py): `up` turns it on
#: only in a --replay stack, where it has work.
COMPLETION_SENSOR = "replay_completion"


class ReplayError(RuntimeError):
    """The replay could not be set up; the message is meant for the user."""


@dataclass(frozen=True, slots=True)
class ReplaySource:
    """What the completion sensor needs to know about the running replay."""

    source_id: str  # unique per `up`: a completion is never attributed to another replay
    capture: str
    speed: str
    control_url: str
    shards: tuple[str, ...]
    first_us: int  # receive times of the capture's first and last records
    last_us: int
    #: the whole hours the capture files cover, one [from_us, until_us) per run of hours
    #: (what completion declares final; files far apart in time give several spans)
    spans: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = list(self.shards)
        d["spans"] = [list(s) for s in self.spans]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReplaySource:
        return cls(**{**d, "shards": tuple(d["shards"]), "spans": tuple(tuple(s) for s in d["spans"])})


def parse_speed(text: str) -> str:
    """'max' or a positive multiplier (as text, the way the emulator's CLI takes it)."""
    if text == "max":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}")
    return text


def capture_spans(path: Path) -> list[tuple[int, int]]:
    """First and last receive time (µs) of every servable capture file at `path`."""
    from collectors import capture
    from collectors.replay import _servable

    files = [f for f in sorted(path.rglob("*")) if f.is_file() and _servable(f, capture)] if path.is_dir() else [path]
    spans: list[tuple[int, int]] = []
    for f in files:
        lo: int | None = None
        hi: int | None = None
        try:
            info = capture.detect(f)
            for rec in capture.read(info):
                if rec.recv_ts_us:
                    lo = rec.recv_ts_us if lo is None else min(lo, rec.recv_ts_us)
                    hi = rec.recv_ts_us if hi is None else max(hi, rec.recv_ts_us)
        except (capture.CaptureError, OSError, ValueError) as exc:
            raise ReplayError(f"cannot read capture {f}: {exc}") from exc
        if lo is not None and hi is not None:
            spans.append((lo, hi))
    if not spans:
        raise ReplayError(f"{path}: no servable capture with receive times")
    return spans


def emulator_command(capture: Path, speed: str, state_file: Path) -> list[str]:
    return [sys.executable, "-m", "collectors.replay", str(capture), "--speed", speed, "--state-file", str(state_file)]


def wait_for_state(state_file: Path, alive: Callable[[], bool], timeout: float) -> dict[str, Any]:
    """The emulator writes its state file once its servers listen (after loading the capture)."""
    deadline = time.monotonic() + timeout
    while True:
        if state_file.exists():
            try:
                return json.loads(state_file.read_text())
            except ValueError:
                pass  # being written
        if not alive():
            raise ReplayError("the replay emulator exited before it was ready")
        if time.monotonic() > deadline:
            raise ReplayError(f"the replay emulator was not ready after {timeout:.0f}s")
        time.sleep(0.3)


def write_collectors(path: Path, emulator_state: dict[str, Any]) -> list[ShardConfig]:
    """collectors.yaml with the emulator's shards (replacing any previous file: a replay
    stack collects from the capture only)."""
    shards = [ShardConfig.from_dict(d) for d in emulator_state.get("shards", [])]
    if not shards:
        raise ReplayError("the capture yields no collector shard (no instrument it can subscribe)")
    if path.exists():
        backup = path.with_name(path.name + ".before-replay")
        if not backup.exists():
            os.replace(path, backup)
    dump_shards(shards, path)
    return shards


def new_source(
    capture: Path,
    speed: str,
    emulator_state: dict[str, Any],
    shards: list[ShardConfig],
    spans: list[tuple[int, int]],
    started_at: str,
) -> ReplaySource:
    hours = tuple(merge_spans(hour_span(*s) for s in spans))
    sid = hashlib.sha256(f"{capture}|{started_at}|{emulator_state.get('control')}".encode()).hexdigest()[:16]
    return ReplaySource(
        source_id=f"replay-{sid}",
        capture=str(capture),
        speed=speed,
        control_url=str(emulator_state["control"]),
        shards=tuple(s.name for s in shards),
        first_us=min(s[0] for s in spans),
        last_us=max(s[1] for s in spans),
        spans=hours,
    )


def save_source(run_dir: Path, source: ReplaySource) -> None:
    tmp = run_dir / (SOURCE_FILE + ".tmp")
    tmp.write_text(json.dumps(source.to_json(), indent=2) + "\n")
    os.replace(tmp, run_dir / SOURCE_FILE)


def load_source(run_dir: Path) -> ReplaySource | None:
    path = run_dir / SOURCE_FILE
    if not path.exists():
        return None
    return ReplaySource.from_json(json.loads(path.read_text()))


def clear(run_dir: Path) -> None:
    for name in (SOURCE_FILE, EMULATOR_STATE, f"{REPLAY}.pid"):
        (run_dir / name).unlink(missing_ok=True)


def emulator_stats(control_url: str, timeout: float = 5.0) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{control_url}/stats", timeout=timeout) as resp:
        return json.loads(resp.read())


def incomplete_reason(stats: dict[str, Any]) -> str:
    """Why an exhausted replay did not deliver its whole capture ('' if it did)."""
    if stats.get("complete"):
        return ""
    parts = []
    for f in stats.get("feeds", []):
        if f.get("unserved"):
            parts.append(
                f"{f['unserved']} events of {f['name']} reached no collector (by stream: {f.get('unserved_keys')})"
            )
        if f.get("errors"):
            parts.append(f"{f['errors']} lines of {f['name']} could not be replayed")
        if f.get("error"):
            parts.append(f"{f['name']} stopped: {f['error']}")
    return "; ".join(parts) or "the emulator does not report the capture delivered"


def exhausted_venues(stats: dict[str, Any]) -> list[str]:
    """Emulator hosts with nothing left to send: every feed they serve has run out, and no
    frame waits in the emulator for their clients."""
    venues = stats.get("venues") or {}
    feeds = stats.get("feeds") or []
    served = {f["venue"] for f in feeds}
    running = {f["venue"] for f in feeds if not f.get("finished")}
    return sorted(v for v in served - running if not (venues.get(v) or {}).get("queued"))


def restore_collectors(path: Path) -> None:
    """Undo write_collectors: the replay's shards go, a previous file comes back."""
    backup = path.with_name(path.name + ".before-replay")
    if backup.exists():
        os.replace(backup, path)
    else:
        path.unlink(missing_ok=True)

"""The .proto contract: generated code is current and no landed version is broken."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from schemas import proto_check


def test_generated_code_is_current() -> None:
    assert proto_check.generated_differences() == []


def test_no_breaking_change_against_any_committed_version() -> None:
    assert proto_check.breaking_against_history() == {}


def test_history_is_available_for_the_check() -> None:
    """A shallow clone would make the history check vacuous; insist on real history."""
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"],
        capture_output=True,
        text=True,
        cwd=proto_check.REPO,
        check=False,
    ).stdout.strip()
    assert shallow != "true", "clone with full history so buf can compare every landed .proto"
    assert proto_check.historical_proto_commits(), "schemas/proto has no committed history"


def _copy_module(tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(proto_check.PROTO_DIR, dst)
    return dst


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        (
            "int64 px = 2;\n  int64 qty = 3;\n  Side taker_side",
            "string px = 2;\n  int64 qty = 3;\n  Side taker_side",
            "retyped",
        ),
        ("int64 first_trade_id = 5;", "int64 first_trade_id = 15;", "renumbered"),
        ("string trade_id = 1;", "string trade_ref = 1;", "renamed/reused"),
        ("  int64 last_trade_id = 6;\n", "", "deleted without reserve"),
    ],
)
def test_buf_detects_incompatible_changes(tmp_path: Path, old: str, new: str, what: str) -> None:
    base = _copy_module(tmp_path, "base")
    changed = _copy_module(tmp_path, "changed")
    f = changed / "ticklake" / "v1" / "events.proto"
    text = f.read_text()
    assert old in text, what
    f.write_text(text.replace(old, new, 1))
    res = proto_check.breaking(changed, str(base))
    assert res.returncode != 0, f"buf accepted a {what} field"


def test_buf_accepts_an_added_field(tmp_path: Path) -> None:
    base = _copy_module(tmp_path, "base")
    changed = _copy_module(tmp_path, "changed")
    f = changed / "ticklake" / "v1" / "events.proto"
    f.write_text(
        f.read_text().replace(
            "  int64 last_trade_id = 6;\n", "  int64 last_trade_id = 6;\n  int64 block_trade_id = 7;\n", 1
        )
    )
    res = proto_check.breaking(changed, str(base))
    assert res.returncode == 0, res.stdout + res.stderr

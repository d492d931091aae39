"""The first things a Dagster user tries work from a fresh checkout: `dagster definitions
validate` from the repository root with nothing set in the environment (no DAGSTER_HOME,
no TICKLAKE_HOME). The root dagster.yaml is read then (Dagster uses it with a temporary
instance directory), so it must not need any variable either."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).parent / "dagster"


@pytest.mark.dagster
def test_definitions_validate_from_repo_root_with_a_clean_environment(tmp_path):
    env = {"PATH": os.defpath, "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    res = subprocess.run(
        [str(DAGSTER), "definitions", "validate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Validation successful for code location ticklake" in out, out
    assert not list(ROOT.glob(".tmp_dagster_home_*")), "the temporary instance directory was left behind"


def test_root_dagster_yaml_reads_no_environment_variable():
    """Storage defaults to the instance directory (DAGSTER_HOME for `ticklake up`)."""
    text = (ROOT / "dagster.yaml").read_text()
    config = yaml.safe_load(text)
    assert "storage" not in config
    assert "env:" not in "\n".join(line.split("#")[0] for line in text.splitlines())

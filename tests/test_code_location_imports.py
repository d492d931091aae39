"""Loading the code location imports only what every process that loads it needs.

Every Dagster process of the stack imports pipelines.definitions: the webserver's and the
daemon's code servers, each service run (a dozen on the default stack) and each hourly, seal,
ML or backfill run. Libraries used by one step each were imported at module level and cost
~2.8 s of every such start (5.3 -> 2.5 s, measured on the 2-core machine): pandera (the schema
check; it pulls in pyspark.pandas), matplotlib's pyplot (the charts), dagster_aws (Secrets
Manager, only with a secrets tag), lightgbm (fitting or loading a model) and dagster_pyspark
(a Spark session). They are imported where they are used; this keeps it so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Imported on first use only (see the module docstring).
ON_FIRST_USE = ("pandera", "matplotlib", "dagster_aws", "pyspark.pandas", "lightgbm", "dagster_pyspark")


def test_loading_the_code_location_leaves_step_only_libraries_unimported():
    script = (
        "import json, sys; import pipelines.definitions as d; "
        "assert d.defs.resolve_asset_graph().get_all_asset_keys(); "
        f"print(json.dumps([m for m in {ON_FIRST_USE!r} if m in sys.modules]))"
    )
    p = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []

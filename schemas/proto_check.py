"""Guards for the .proto contract, run by the test suite (and by hand: python -m schemas.proto_check).

1. The checked-in generated Python must equal what protoc generates now, so nobody edits
   generated code or forgets to regenerate. Only the `_pb2.py` modules are checked in: the
   code imports them and an install must not need protoc. The `_pb2.pyi` type stubs serve an
   editor or type checker only (no type checker runs here and the wheel does not ship them),
   so they are not committed (.gitignore): `--regen` writes them beside the modules, and
   stubs present in a checkout are compared like the modules, so stale ones are reported.
2. The current .proto must be wire- and source-compatible (buf "FILE" rules: no retyped,
   renumbered, reused or silently removed field) with every earlier committed version of
   it, not just the previous one, so a break cannot be smuggled in over two commits.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "schemas" / "proto"
GEN_DIR = REPO / "schemas" / "gen"
PROTO_FILES = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


class ProtoCheckError(RuntimeError):
    pass


def generate(out_dir: Path) -> None:
    """Run the pinned protoc (grpcio-tools) over every .proto into out_dir."""
    from grpc_tools import protoc  # dev dependency; imported lazily

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *PROTO_FILES]
    if protoc.main(args) != 0:
        raise ProtoCheckError(f"protoc failed: {' '.join(args)}")


def generated_differences() -> list[str]:
    """Generated files of this checkout that differ from a fresh generation: every module,
    missing or not, and the type stubs that are present (they are optional)."""
    diffs: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        for f in sorted(fresh.rglob("*_pb2.py*")):
            rel = f.relative_to(fresh)
            mine = GEN_DIR / rel
            if not mine.exists():
                if f.suffix == ".py":
                    diffs.append(str(rel))
            elif not filecmp.cmp(f, mine, shallow=False):
                diffs.append(str(rel))
    return diffs


def buf_binary() -> str:
    candidates = [os.environ.get("TICKLAKE_BUF"), str(Path(sys.executable).parent / "buf"), shutil.which("buf")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise ProtoCheckError("buf not found: install the dev extra (pip install -e '.[dev]', package buf-bin)")


def breaking(current: Path, against: str) -> subprocess.CompletedProcess:
    """Run `buf breaking` of the module at `current` against a buf input (dir or .git#ref=…)."""
    return subprocess.run(
        [buf_binary(), "breaking", str(current), "--against", against],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def historical_proto_commits() -> list[str]:
    """Every commit that changed schemas/proto (newest first); empty outside a git checkout."""
    out = subprocess.run(
        ["git", "log", "--format=%H", "--", "schemas/proto"], capture_output=True, text=True, cwd=REPO, check=False
    )
    return out.stdout.split() if out.returncode == 0 else []


def breaking_against_history() -> dict[str, str]:
    """Map of commit -> buf complaint for each earlier version the current .proto breaks."""
    failures: dict[str, str] = {}
    for sha in historical_proto_commits():
        res = breaking(PROTO_DIR.relative_to(REPO), f".git#ref={sha},subdir=schemas/proto")
        if res.returncode != 0:
            failures[sha] = (res.stdout + res.stderr).strip()
    return failures


def main() -> int:
    diffs = generated_differences()
    if diffs:
        print("generated code out of date (run: python -m schemas.proto_check --regen):", *diffs, sep="\n  ")
    failures = breaking_against_history()
    for sha, msg in failures.items():
        print(f"breaking change against {sha[:12]}:\n{msg}")
    return 1 if diffs or failures else 0


if __name__ == "__main__":
    if "--regen" in sys.argv:
        generate(GEN_DIR)
        sys.exit(0)
    sys.exit(main())

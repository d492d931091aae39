"""deploy/Dockerfile builds what the README installs, checked without a container runtime.

No Docker here or in CI, so the image build is replayed: the Dockerfile is parsed, its COPY
steps are laid out as a build context, the project is built from that context alone (as its
`pip install .` would), and the code location the image serves is imported from the result
with the image's ENV. A package added to pyproject but not copied, a package-data file left
out, or an install line that drifted from the README's fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@dataclass(frozen=True)
class Step:
    instruction: str
    args: str


def parse_dockerfile(text: str) -> list[Step]:
    """Instructions with their arguments; comments dropped, `\\` continuations joined."""
    steps: list[Step] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        steps.append(Step(instruction.upper(), " ".join(args.split())))
    return steps


def _copies(steps: list[Step]) -> list[tuple[list[str], str]]:
    out = []
    for step in steps:
        if step.instruction == "COPY":
            *sources, dest = shlex.split(step.args)
            out.append(([s for s in sources if not s.startswith("--")], dest))
    return out


def _pip_targets(command: str) -> list[str]:
    """What `pip install` installs in a shell command: its non-option arguments."""
    words = shlex.split(command)
    for i, word in enumerate(words[:-1]):
        if word == "pip" and words[i + 1] == "install" or word.endswith("/pip") and words[i + 1] == "install":
            rest = [w for w in words[i + 2 :] if not w.startswith("-")]
            return rest[: next((k for k, w in enumerate(rest) if w in {"&&", ";"}), len(rest))]
    return []


def _project_and_extras(target: str) -> tuple[str, set[str]]:
    m = re.fullmatch(r"([^\[]+)(?:\[([^\]]*)\])?", target)
    assert m, target
    return m.group(1), {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}


def _readme_install_target() -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- run-command -->", 1)[1].split("```", 2)[1]
    [target] = list(_pip_targets(block.replace("-e ", "")))
    return target


STEPS = parse_dockerfile(DOCKERFILE.read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_image_installs_the_readme_project_without_dev_tools() -> None:
    runs = [s.args for s in STEPS if s.instruction == "RUN" and _pip_targets(s.args)]
    assert len(runs) == 1, runs
    [image_target] = _pip_targets(runs[0])
    image_project, image_extras = _project_and_extras(image_target)
    readme_project, readme_extras = _project_and_extras(_readme_install_target())
    assert image_project == readme_project == "."
    # the README adds test tools (dev); the image installs the same project and runtime extras only
    assert image_extras <= readme_extras - {"dev", "bench"}


def test_image_has_the_runtime_debian_packages_ci_installs() -> None:
    apt = " ".join(s.args for s in STEPS if s.instruction == "RUN" and "apt-get install" in s.args)
    assert "default-jre-headless" in apt  # Spark's JVM, as in .ci/run
    assert "default-jre-headless" in (REPO / ".ci" / "run").read_text()


def test_image_copies_every_package_pyproject_builds() -> None:
    copied = {Path(src).as_posix().rstrip("/") for sources, _ in _copies(STEPS) for src in sources}
    packages = {p.rstrip("*").rstrip(".") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /opt/ticklake laid out from its COPY steps, built with its `pip install .`
    (no dependencies: those are the venv's, the same pins), unpacked as site-packages."""
    context = tmp_path_factory.mktemp("image-context")
    workdir = context / "opt-ticklake"
    workdir.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sources, dest in _copies(STEPS):
        for src in sources:
            target = (
                workdir / dest
                if dest not in {".", "./"} and not dest.endswith("/")
                else workdir / dest / Path(src).name
            )
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(REPO / src, target)
    wheels = context / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            ".",
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("ticklake-*.whl")
    site = context / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_image_build_contains_every_source_module(image_site: Path) -> None:
    packages = [p.rstrip("*").rstrip(".") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    tracked = subprocess.run(
        ["git", "ls-files", *packages], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    sources = {p for p in tracked if p.endswith(".py")}
    built = {p.relative_to(image_site).as_posix() for p in image_site.rglob("*.py")}
    assert sources <= built, f"missing from the image: {sorted(sources - built)[:10]}"
    for pattern in ("schemas/proto/**/*.proto", "schemas/jsonschema/*.json"):
        assert set(image_site.glob(pattern)), pattern


@pytest.mark.dagster
def test_image_serves_the_code_location_it_names(image_site: Path, tmp_path: Path) -> None:
    """The CMD's module imports from the built package alone, with the image's ENV."""
    cmd = next(s.args for s in STEPS if s.instruction == "CMD")
    module = re.search(r'"--module-name",\s*"([^"]+)"', cmd).group(1)
    env = {k: v for s in STEPS if s.instruction == "ENV" for k, v in (kv.split("=", 1) for kv in shlex.split(s.args))}
    code = (
        f"import importlib, pathlib; m = importlib.import_module({module!r}); "
        f"assert pathlib.Path(m.__file__).is_relative_to({str(image_site)!r}), m.__file__; "
        "print(len(list(m.defs.resolve_all_job_defs())))"
    )
    run_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(image_site),
        "DAGSTER_HOME": str(tmp_path),
        "TICKLAKE_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 0

"""docs/architecture.md cannot drift from the code: its diagram is the package import graph.

The graph is derived from the source with `ast` (every `import` and `from ... import`, also
those inside functions, since a deferred import is still a dependency). Three things hold:
the diagram's arrows are exactly the imports between top-level packages; every import runs
down the documented layers; inside `streaming/`, imports run down its documented order. An
import that breaks the direction is either fixed or listed in EXCEPTIONS with its reason
and drawn dotted in the diagram; an exception that no longer occurs fails too, so the list
only shrinks.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"

#: The allowed direction, bottom up: a package may import packages of lower layers only.
LAYERS: list[tuple[str, ...]] = [
    ("schemas", "orderbook"),
    ("features",),
    ("ml",),
    ("runtime",),
    ("collectors",),
    ("streaming",),
    ("resources",),
    ("assets",),
    ("pipelines",),
    ("workloads",),
]
#: Inside streaming/, bottom up (same rule).
STREAMING_LAYERS: list[tuple[str, ...]] = [("kafka",), ("processors",), ("lake", "clickhouse", "pragma")]

#: (importing file, imported module) -> why it is still there. Each is drawn dotted in the doc.
EXCEPTIONS: dict[tuple[str, str], str] = {}

NOT_PACKAGES = {"tests", "bench", "deploy", "docs"}


def packages() -> list[str]:
    return sorted(
        p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name not in NOT_PACKAGES | {".venv"}
    )


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def module_edges() -> set[tuple[str, str]]:
    """(importing file, imported project module) for every import of a project module."""
    pkgs = set(packages())
    edges: set[tuple[str, str]] = set()
    for pkg in pkgs:
        for path in (REPO / pkg).rglob("*.py"):
            if "gen" in path.relative_to(REPO).parts:
                continue  # generated protobuf code
            rel = path.relative_to(REPO).as_posix()
            for mod in imports(path):
                if mod.split(".")[0] in pkgs:
                    edges.add((rel, mod))
    return edges


def unit(name: str) -> str:
    """`streaming.kafka.io` and `streaming/kafka/io.py` -> `streaming.kafka`; else the package."""
    parts = name.removesuffix(".py").replace("/", ".").split(".")
    if parts[0] == "streaming" and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def layer_of(layers: list[tuple[str, ...]], name: str) -> int:
    return next(i for i, layer in enumerate(layers) if name in layer)


def real_edges() -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(package, package) -> the (file, module) imports behind it."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for rel, mod in module_edges():
        a, b = rel.split("/")[0], mod.split(".")[0]
        if a != b:
            out[(a, b)].add((rel, mod))
    return out


def _is_exception(rel: str, mod: str) -> bool:
    return any(rel == f and (mod == m or mod.startswith(m + ".")) for f, m in EXCEPTIONS)


def doc_edges() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(solid, dotted) arrows of the doc's mermaid diagram; `a --> b` reads "a imports b"."""
    block = re.search(r"```mermaid\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/architecture.md has no mermaid diagram"
    solid, dotted = set(), set()
    for a, arrow, b in re.findall(r"^\s*(\w+)\s*(-->|-\.->)\s*(\w+)\s*$", block.group(1), re.M):
        (solid if arrow == "-->" else dotted).add((a, b))
    return solid, dotted


def test_every_package_has_a_layer():
    layered = {p for layer in LAYERS for p in layer}
    assert set(packages()) == layered, "add the package to LAYERS and to docs/architecture.md"
    streaming = {p.name for p in (REPO / "streaming").iterdir() if (p / "__init__.py").is_file()}
    assert streaming == {p for layer in STREAMING_LAYERS for p in layer}


def test_imports_run_down_the_layers():
    wrong = []
    for rel, mod in module_edges():
        a, b = unit(rel), unit(mod)
        if a == b or _is_exception(rel, mod):
            continue
        pa_, pb_ = a.split(".")[0], b.split(".")[0]
        if pa_ != pb_:
            ok = layer_of(LAYERS, pa_) > layer_of(LAYERS, pb_)
        elif pa_ == "streaming" and "." in a and "." in b:
            ok = layer_of(STREAMING_LAYERS, a.split(".")[1]) > layer_of(STREAMING_LAYERS, b.split(".")[1])
        else:
            ok = True  # streaming/__init__ and the packages' own insides
        if not ok:
            wrong.append(f"{rel} imports {mod}")
    assert not wrong, "imports against the documented direction (docs/architecture.md):\n" + "\n".join(sorted(wrong))


def test_every_exception_still_occurs():
    edges = module_edges()
    for f, m in EXCEPTIONS:
        assert any(rel == f and (mod == m or mod.startswith(m + ".")) for rel, mod in edges), (
            f"{f} no longer imports {m}: remove it from EXCEPTIONS and its dotted arrow from the doc"
        )


def test_the_diagram_is_the_import_graph():
    real = real_edges()
    solid, dotted = doc_edges()
    against = {e for e, imps in real.items() if all(_is_exception(r, m) for r, m in imps)}
    missing = sorted(set(real) - solid - dotted)
    stale = sorted((solid | dotted) - set(real))
    assert not missing and not stale, (
        "update the mermaid diagram of docs/architecture.md:\n"
        f"  imports not drawn: {missing}\n  arrows without an import: {stale}"
    )
    assert dotted == against, f"dotted arrows are the EXCEPTIONS only: draw {sorted(against)} dotted"

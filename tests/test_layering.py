"""The package layering: no package of attnlab imports one above it, and no two import each
other (an AST scan of every import, function-local ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attnlab

ROOT = Path(attnlab.__file__).parent

# Lower levels know nothing of higher ones; packages on one level may import each other as long
# as there is no cycle. ``attnlab`` is the package's own ``__init__`` (the public API, which
# re-exports layers, surgery, weights and export).
LEVELS = {
    # base: the registry and the plain-module helper
    "registry": 0,
    "plain": 0,
    # pieces that need only torch and the base: data, task pieces (box coding, losses),
    # metrics on tensors (the engine's tasks evaluate with them), the optional fast kernels
    "data": 1,
    "detect": 1,
    "segment": 1,
    "metrics": 1,
    "kernels": 1,
    # networks: attention layers, insertion by structure, models, pretrained weights
    "layers": 2,
    "surgery": 2,
    "models": 2,
    "weights": 2,
    # training
    "engine": 3,
    # looking at trained models: cost, maps, export; the public API
    "bench": 4,
    "viz": 4,
    "export": 4,
    "attnlab": 4,
    # comparison jobs (train many, then measure and look)
    "lab": 5,
    # the command line
    "cli": 6,
    "__main__": 6,
}


def imported_packages(relative: Path, source: str) -> list[tuple[str, int]]:
    """(top-level attnlab package, line) of every attnlab import in one module.

    Args:
        relative: the module's path relative to the ``attnlab`` folder.
        source: the module's text.
    """
    parts = list(relative.with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[list[str]] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.startswith("attnlab")]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".") if node.module else []
            if node.level == 0:
                if not module or module[0] != "attnlab":
                    continue
                base = module[1:]
            else:
                if node.level - 1 > len(package):
                    raise ValueError(f"{relative}:{node.lineno}: import beyond the package")
                base = package[: len(package) - (node.level - 1)] + module
            # `from attnlab import x` / `from .. import x`: x is a package or a name of the API
            names = [base] if base else [[a.name] for a in node.names]
        for name in names:
            found.append((name[0] if name and is_package(name[0]) else "attnlab", node.lineno))
    return found


def is_package(name: str) -> bool:
    """Whether ``name`` is a package or module of attnlab (else a name its ``__init__`` has)."""
    return (ROOT / name / "__init__.py").exists() or (ROOT / f"{name}.py").exists()


def top_level(relative: Path) -> str:
    first = relative.parts[0]
    return "attnlab" if first == "__init__.py" else first.removesuffix(".py")


def package_imports() -> dict[str, dict[str, list[str]]]:
    """package → imported package → ["file:line", …], across src/attnlab."""
    edges: dict[str, dict[str, list[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        source_package = top_level(relative)
        for target, line in imported_packages(relative, path.read_text(encoding="utf-8")):
            if target != source_package:
                where = f"{relative}:{line}"
                edges.setdefault(source_package, {}).setdefault(target, []).append(where)
    return edges


def violations(edges: dict[str, dict[str, list[str]]]) -> list[str]:
    """Imports of a higher level, and import cycles between packages."""
    found = []
    for source, targets in edges.items():
        for target, places in targets.items():
            if LEVELS[target] > LEVELS[source]:
                found.append(f"{source} (level {LEVELS[source]}) imports {target} "
                             f"(level {LEVELS[target]}) at {', '.join(places)}")  # fmt: skip
    graph = {s: set(t) for s, t in edges.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    for source, targets in graph.items():
        for target in targets:
            if source < target and reaches(target, source, {target}):
                found.append(f"import cycle between {source} and {target}")
    return found


def test_every_package_has_a_level():
    packages = {top_level(p.relative_to(ROOT)) for p in ROOT.glob("*") if p.suffix == ".py"}
    packages |= {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages - set(LEVELS) == set(), "place the new package in LEVELS"


def test_no_package_imports_one_above_it_and_no_cycles():
    assert violations(package_imports()) == []


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("engine/compare.py", "from ..viz import plots", ["viz"]),
        ("engine/tasks/seg.py", "def f():\n    from ...cli import main", ["cli"]),
        ("metrics/loc.py", "import attnlab.viz.gradcam", ["viz"]),
        ("bench/runner.py", "from .. import __version__", ["attnlab"]),
        ("lab/compare/runs.py", "from .probe import x\nfrom ...engine import y", ["lab", "engine"]),
    ],
)
def test_the_scan_sees_relative_absolute_and_local_imports(relative, source, expected):
    found = [name for name, _ in imported_packages(Path(relative), source)]
    assert found == expected


def test_the_check_reports_an_upward_import_and_a_cycle():
    upward = {"metrics": {"viz": ["metrics/localization.py:1"]}}
    assert violations(upward) == [
        "metrics (level 1) imports viz (level 4) at metrics/localization.py:1"
    ]
    cycle = {"bench": {"viz": ["a"]}, "viz": {"bench": ["b"]}}
    assert violations(cycle) == ["import cycle between bench and viz"]

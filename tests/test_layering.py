"""The package's layers, read from the source: imports go one way.

- only ``pcdet_gciou/openpcdet/`` imports ``pcdet``;
- ``geometry`` imports nothing but torch (and the standard library);
- ``losses`` builds on ``geometry`` only;
- the training engine (``pcdet_gciou/training/``) imports neither the OpenPCDet application layer nor pcdet;
- nothing imports ``tests``.

The check is static (every ``import`` statement, at any depth, including lazy imports inside functions),
so a lazy import cannot hide a wrong-way dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pcdet_gciou"
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative imports resolved."""
    package = list(path.relative_to(REPO).parts[:-1])
    return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: list[str]) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _violations(files, forbidden) -> list[str]:
    bad = []
    for path in files:
        for line, module in _imports(path):
            if forbidden(module):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return sorted(set(bad))


def _top(module: str) -> str:
    return module.split(".")[0]


def test_the_parser_sees_relative_and_lazy_imports():
    # A check that cannot fail proves nothing: feed it a module with lazy, relative wrong-way imports.
    source = "def f():\n    from ..openpcdet import runtime\n    import pcdet.models\n"
    found = {module for _, module in _imports_in(source, ["pcdet_gciou", "training"])}
    assert "pcdet_gciou.openpcdet" in found
    assert "pcdet_gciou.openpcdet.runtime" in found
    assert "pcdet.models" in found


def test_only_the_openpcdet_layer_imports_pcdet():
    outside = [p for p in _sources(PACKAGE) if "openpcdet" not in p.relative_to(PACKAGE).parts]
    assert _violations(outside, lambda m: _top(m) == "pcdet") == []


def test_geometry_imports_only_torch_and_the_standard_library():
    allowed = {"torch", "pcdet_gciou", "__future__"} | STDLIB
    files = _sources(PACKAGE / "geometry")
    bad = _violations(
        files,
        lambda m: _top(m) not in allowed or (_top(m) == "pcdet_gciou" and not m.startswith("pcdet_gciou.geometry")),
    )
    assert bad == []


def test_losses_build_on_geometry_only():
    files = _sources(PACKAGE / "losses")
    bad = _violations(
        files,
        lambda m: m.startswith("pcdet_gciou.") and not m.startswith(("pcdet_gciou.geometry", "pcdet_gciou.losses")),
    )
    assert bad == []


def test_the_engine_imports_neither_the_application_layer_nor_pcdet():
    files = _sources(PACKAGE / "training")
    bad = _violations(files, lambda m: _top(m) == "pcdet" or m.startswith("pcdet_gciou.openpcdet"))
    assert bad == []


@pytest.mark.parametrize("root", ["pcdet_gciou", "tools", "scripts"])
def test_nothing_imports_tests(root):
    bad = _violations(_sources(REPO / root), lambda m: _top(m) in ("tests", "conftest"))
    assert bad == []

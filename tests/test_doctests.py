"""The docstring examples run: every module of the package that imports without pcdet is doctested.

The public API (geometry and losses) must carry examples: a module there without one fails, so an
example cannot silently disappear.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pcdet_gciou

#: Packages whose public functions are documented with examples (the torchvision/kornia style).
PUBLIC_API = ("pcdet_gciou.geometry", "pcdet_gciou.losses")


def _module_names() -> list[str]:
    names = ["pcdet_gciou"]
    for info in pkgutil.walk_packages(pcdet_gciou.__path__, prefix="pcdet_gciou."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def _examples(module) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module) if test.examples]


def _import(name: str):
    """Import ``name``; a module of the OpenPCDet layer that needs pcdet skips when pcdet is missing."""
    if name.startswith("pcdet_gciou.openpcdet"):
        from conftest import pcdet_import_error

        reason = pcdet_import_error()  # installs the portable layer first on a CPU-only machine
        try:
            return importlib.import_module(name)
        except ImportError:
            if reason is None:
                raise
            pytest.skip(f"{name} subclasses OpenPCDet classes; {reason}")
    return importlib.import_module(name)


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples_pass(name):
    module = _import(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = _examples(module)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


@pytest.mark.parametrize("package", PUBLIC_API)
def test_public_api_has_examples(package):
    names = [n for n in _module_names() if n == package or n.startswith(package + ".")]
    without = []
    for name in names:
        module = importlib.import_module(name)
        public = getattr(module, "__all__", None)
        if public is None or name.rsplit(".", 1)[-1].startswith("_"):
            continue
        documented = {test.name.rsplit(".", 1)[-1] for test in _examples(module)}
        without += [
            f"{name}.{attr}"
            for attr in public
            if callable(getattr(module, attr, None))
            and getattr(getattr(module, attr), "__module__", name) == name
            and attr not in documented
        ]
    assert without == [], f"public callables without a docstring example: {without}"

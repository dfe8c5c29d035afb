"""``pcdet.version`` for an OpenPCDet tree that was never built.

OpenPCDet's ``setup.py`` writes ``pcdet/version.py`` (``__version__ = "<base>+<short commit>"``) and the file is
gitignored, so a fresh clone cannot ``import pcdet``. :func:`pcdet_gciou.openpcdet.cpu.install` serves the module
built here instead, with the version ``setup.py`` would have written: the base version read from ``setup.py`` and the
commit read from the tree's ``.git`` (no subprocess), or ``+unbuilt`` when either is unknown.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

__all__ = ["tree_version", "make_version_module"]

_SETUP_VERSION = re.compile(r"""version\s*=\s*['"](\d+(?:\.\d+)*)\+%s['"]""")
_SHA = re.compile(r"[0-9a-f]{40}")
UNKNOWN_BASE = "0+unknown"


def _base_version(repo_root: Path) -> str | None:
    try:
        match = _SETUP_VERSION.search((repo_root / "setup.py").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def _packed_ref(git_dir: Path, ref: str) -> str | None:
    try:
        lines = (git_dir / "packed-refs").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        sha, _, name = line.partition(" ")
        if name == ref and _SHA.fullmatch(sha):
            return sha
    return None


def head_commit(repo_root: Path) -> str | None:
    """Full sha of ``HEAD`` in ``repo_root/.git`` (a directory), or None when it cannot be read."""
    git_dir = repo_root / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if _SHA.fullmatch(head):  # detached HEAD, as `python -m pcdet_gciou.openpcdet.get` leaves it
        return head
    if not head.startswith("ref: "):
        return None
    ref = head[len("ref: ") :]
    try:
        sha = (git_dir / ref).read_text().strip()
    except OSError:
        return _packed_ref(git_dir, ref)
    return sha if _SHA.fullmatch(sha) else None


def tree_version(package_dir: str | Path) -> str:
    """The version ``setup.py`` would write for the ``pcdet`` package in ``package_dir``.

    Example:
        >>> tree_version("/nonexistent/pcdet")
        '0+unknown+unbuilt'
    """
    repo_root = Path(package_dir).resolve().parent
    base = _base_version(repo_root) or UNKNOWN_BASE
    commit = head_commit(repo_root)
    return f"{base}+{commit[:7] if commit else 'unbuilt'}"


def make_version_module(name: str, package_dir: str | Path) -> types.ModuleType:
    """A module named ``name`` holding ``__version__ = tree_version(package_dir)``."""
    module = types.ModuleType(name, "supplied by pcdet_gciou.openpcdet.cpu: the tree has no version.py")
    module.__file__ = f"<pcdet_gciou portable {name}>"
    module.__version__ = tree_version(package_dir)
    return module

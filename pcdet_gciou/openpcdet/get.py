"""Get OpenPCDet without building it: ``python -m pcdet_gciou.openpcdet.get [--dest DIR] [--url URL] [--ref COMMIT]``.

Clones OpenPCDet with git at the commit this project is tested with, leaves the tree exactly as checked out (no
``setup.py``, no ``version.py``, no compiled extensions), and prints on stdout the one line that puts it on Python's
path. Progress and notes go to stderr, so ``eval "$(python -m pcdet_gciou.openpcdet.get)"`` works.
With ``--install-pth`` it writes a ``.pth`` file into site-packages instead and prints what it wrote.

The unbuilt tree then imports through the portable layer, :func:`pcdet_gciou.openpcdet.cpu.install`, which supplies
``pcdet.version`` and the ops of the compiled extensions, on CPU or CUDA.

Exit codes: 0 done (or already there), 2 a problem the user can fix first (git missing, ``--dest`` taken by something
else, ``--ref`` not in the repository, not an OpenPCDet tree), 1 git failed while fetching.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Sequence

__all__ = ["DEFAULT_URL", "TESTED_COMMIT", "GetError", "get_openpcdet", "path_line", "write_pth", "main"]

DEFAULT_URL = "https://github.com/open-mmlab/OpenPCDet.git"
#: OpenPCDet 8caccce (2024-04-17, "fixbug: dist test in torch 2.0 (#1602)"), the commit the project is tested with.
TESTED_COMMIT = "8cacccec11db6f59bf6934600c9a175dae254806"
PTH_NAME = "pcdet_gciou_openpcdet.pth"


class GetError(Exception):
    """A failure with a one-line message; ``exit_code`` 2 = fix before running, 1 = failed while running."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # fail instead of asking for credentials
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no message)"]
        cause = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1])
        raise GetError(f"git {args[0]} failed: {cause}", exit_code=1)
    return result


def _resolve_commit(repo: Path, ref: str) -> str | None:
    result = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=repo, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _existing_clone(dest: Path, ref: str) -> str:
    """HEAD of an existing clone at ``ref``; GetError when ``dest`` is anything else."""
    top = _git("rev-parse", "--show-toplevel", cwd=dest, check=False)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != dest or not (dest / "pcdet").is_dir():
        raise GetError(f"--dest {dest} exists and is not an OpenPCDet clone; choose another --dest or remove it")
    head = _git("rev-parse", "HEAD", cwd=dest).stdout.strip()
    wanted = _resolve_commit(dest, ref)
    if wanted != head:
        raise GetError(
            f"--dest {dest} holds OpenPCDet at {head[:7]}, not at {ref}; choose another --dest, or run "
            f"`git -C {shlex.quote(str(dest))} checkout {ref}` yourself"
        )
    return head


def _fetch(repo: Path, url: str, ref: str) -> str:
    """Fetch ``ref`` from ``url`` into the empty repository ``repo``; returns the commit sha."""
    _git("remote", "add", "origin", url, cwd=repo)
    shallow = _git("fetch", "--quiet", "--depth", "1", "origin", ref, cwd=repo, check=False)
    if shallow.returncode == 0:
        return _git("rev-parse", "FETCH_HEAD^{commit}", cwd=repo).stdout.strip()
    # A short sha (or a server that refuses to serve a sha directly): fetch everything, then look the ref up.
    _git("fetch", "--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=repo)
    commit = _resolve_commit(repo, ref)
    if commit is None:
        raise GetError(f"--ref {ref} was not found in {url}; give a commit, tag or branch of that repository")
    return commit


def _clone(dest: Path, url: str, ref: str) -> str:
    """Clone into a temporary sibling of ``dest`` and rename it into place, so a failure leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _git("init", "--quiet", cwd=staging)
        commit = _fetch(staging, url, ref)
        _git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit, cwd=staging)
        if not (staging / "pcdet" / "__init__.py").is_file():
            raise GetError(f"{url} at {ref} has no pcdet/__init__.py; is it OpenPCDet?")
        if dest.exists():  # an empty directory
            dest.rmdir()
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return commit


def get_openpcdet(dest: str | os.PathLike, url: str = DEFAULT_URL, ref: str = TESTED_COMMIT) -> tuple[Path, str, bool]:
    """Clone ``url`` at ``ref`` into ``dest`` unless it is already there.

    Returns:
        ``(dest, commit, cloned)``: the absolute tree, the full commit sha, and False when ``dest`` already held it.

    Raises:
        GetError: with a one-line message and an exit code.
    """
    if shutil.which("git") is None:
        raise GetError("git was not found on PATH; install git (e.g. `apt-get install git`) and rerun")
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise GetError(f"--dest {dest} exists and is not a directory; choose another --dest")
    if dest.is_dir() and any(dest.iterdir()):
        return dest, _existing_clone(dest, ref), False
    return dest, _clone(dest, url, ref), True


def _shadowing_pcdet(dest: Path) -> Path | None:
    """Another ``pcdet`` package that Python would import before one appended to the path for ``dest``."""
    spec = importlib.machinery.PathFinder.find_spec("pcdet")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(list(spec.submodule_search_locations)[0]).resolve()
    return None if found == dest / "pcdet" else found


def path_line(dest: Path) -> str:
    """The shell line that puts ``dest`` first on Python's path for this shell session."""
    return f"export PYTHONPATH={shlex.quote(str(dest))}${{PYTHONPATH:+:$PYTHONPATH}}"


def write_pth(dest: Path, site_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<site-packages>/pcdet_gciou_openpcdet.pth`` holding ``dest``; returns the file written."""
    site_dir = Path(site_dir if site_dir is not None else sysconfig.get_paths()["purelib"])
    pth = site_dir / PTH_NAME
    try:
        pth.write_text(f"{dest}\n")
    except OSError as exc:
        raise GetError(f"cannot write {pth} ({exc.strerror}); use this line instead: {path_line(dest)}") from None
    return pth


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pcdet_gciou.openpcdet.get",
        description="Clone OpenPCDet at the tested commit (unbuilt) and print the line that puts it on the path.",
    )
    parser.add_argument("--dest", default="OpenPCDet", help="where to clone (default: ./OpenPCDet)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"repository to clone (default: {DEFAULT_URL})")
    parser.add_argument("--ref", default=TESTED_COMMIT, help=f"commit, tag or branch (default: {TESTED_COMMIT[:7]})")
    parser.add_argument(
        "--install-pth",
        action="store_true",
        help=f"write {PTH_NAME} into this Python's site-packages instead of printing an export line",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        dest, commit, cloned = get_openpcdet(args.dest, args.url, args.ref)
        print(f"{'cloned' if cloned else 'already there:'} OpenPCDet {commit[:7]} in {dest}", file=sys.stderr)
        if args.install_pth:
            print(f"wrote {write_pth(dest)}: this Python now finds pcdet in {dest}")
            other = _shadowing_pcdet(dest)
            if other is not None:
                print(f"note: {other} comes earlier on sys.path and will be imported instead", file=sys.stderr)
        else:
            print(path_line(dest))
    except GetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        "then call pcdet_gciou.openpcdet.cpu.install() before importing pcdet (no build needed)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

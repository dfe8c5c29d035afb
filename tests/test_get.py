"""``python -m pcdet_gciou.openpcdet.get`` against a local git repository (no network, no OpenPCDet needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcdet_gciou.openpcdet import get

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(*args, cwd):
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tiny_repo(tmp_path):
    """A two-commit repository shaped like OpenPCDet: setup.py writes pcdet/version.py, which is gitignored."""
    repo = tmp_path / "upstream"
    (repo / "pcdet").mkdir(parents=True)
    _git("init", "--quiet", "--initial-branch=main", cwd=repo)
    (repo / ".gitignore").write_text("pcdet/version.py\n")
    (repo / "setup.py").write_text("version = '1.2.3+%s' % get_git_commit_number()\n")
    (repo / "pcdet" / "__init__.py").write_text("from .version import __version__\nMARK = 'first'\n")
    _git("add", ".", cwd=repo)
    _git("commit", "--quiet", "-m", "first", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    (repo / "pcdet" / "__init__.py").write_text("from .version import __version__\nMARK = 'second'\n")
    _git("commit", "--quiet", "-am", "second", cwd=repo)
    return repo, first, _git("rev-parse", "HEAD", cwd=repo)


def run_get(*args, cwd, env=None):
    command = [sys.executable, "-m", "pcdet_gciou.openpcdet.get", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_clones_the_asked_commit_unchanged_and_prints_one_path_line(tiny_repo, tmp_path):
    repo, first, _ = tiny_repo
    result = run_get("--url", repo.as_uri(), "--ref", first, "--dest", "clone", cwd=tmp_path)
    dest = tmp_path / "clone"
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [get.path_line(dest)]
    assert _git("rev-parse", "HEAD", cwd=dest) == first
    assert "MARK = 'first'" in (dest / "pcdet" / "__init__.py").read_text()
    assert _git("status", "--porcelain", "--ignored", cwd=dest) == ""  # nothing written: no version.py
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone", "upstream"]  # no staging leftovers

    again = run_get("--url", repo.as_uri(), "--ref", first, "--dest", "clone", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout
    assert "already there" in again.stderr


@pytest.mark.parametrize("ref_kind", ["short sha", "branch"])
def test_short_shas_and_branches_resolve(tiny_repo, tmp_path, ref_kind):
    repo, first, second = tiny_repo
    ref, expected = (first[:7], first) if ref_kind == "short sha" else ("main", second)
    result = run_get("--url", repo.as_uri(), "--ref", ref, "--dest", "clone", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _git("rev-parse", "HEAD", cwd=tmp_path / "clone") == expected


def test_path_line_puts_the_unbuilt_tree_on_the_path_and_the_portable_layer_supplies_its_version(tiny_repo, tmp_path):
    repo, first, _ = tiny_repo
    line = run_get("--url", repo.as_uri(), "--ref", first, "--dest", "my clone", cwd=tmp_path).stdout.strip()
    probe = "import pcdet; print(pcdet.__file__, pcdet.__version__, pcdet.MARK)"
    install_then_probe = "from pcdet_gciou.openpcdet import cpu; cpu.install(); " + probe
    script = f"{line}\n{sys.executable} -c '{probe}'\n{sys.executable} -c '{install_then_probe}'\n"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "No module named 'pcdet.version'" in result.stderr  # the tree is unbuilt ...
    expected = f"{tmp_path / 'my clone' / 'pcdet' / '__init__.py'} 1.2.3+{first[:7]} first"
    assert result.stdout.splitlines() == [expected]  # ... and imports through the layer with setup.py's version


def _assert_one_line_error(result, code, *fragments):
    assert result.returncode == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_refuses_a_dest_that_is_something_else(tiny_repo, tmp_path):
    repo, first, second = tiny_repo
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = run_get("--url", repo.as_uri(), "--dest", "taken", cwd=tmp_path)
    _assert_one_line_error(result, 2, "is not an OpenPCDet clone")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("x")
    _assert_one_line_error(run_get("--dest", "a_file", cwd=tmp_path), 2, "is not a directory")
    assert run_get("--url", repo.as_uri(), "--ref", first, "--dest", "clone", cwd=tmp_path).returncode == 0
    other = run_get("--url", repo.as_uri(), "--ref", second, "--dest", "clone", cwd=tmp_path)
    _assert_one_line_error(other, 2, f"holds OpenPCDet at {first[:7]}, not at {second}")
    assert _git("rev-parse", "HEAD", cwd=tmp_path / "clone") == first  # left as it was


def test_unknown_ref_and_unreachable_url(tiny_repo, tmp_path):
    repo, _, _ = tiny_repo
    missing = run_get("--url", repo.as_uri(), "--ref", "no-such-ref", "--dest", "clone", cwd=tmp_path)
    _assert_one_line_error(missing, 2, "--ref no-such-ref was not found")
    unreachable = run_get("--url", (tmp_path / "nowhere").as_uri(), "--dest", "clone", cwd=tmp_path)
    _assert_one_line_error(unreachable, 1, "git fetch failed", "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upstream"]


def test_refuses_without_git(tmp_path):
    result = run_get("--dest", "clone", cwd=tmp_path, env=dict(os.environ, PATH=str(tmp_path)))
    _assert_one_line_error(result, 2, "git was not found on PATH")


def test_not_an_openpcdet_repository(tmp_path):
    repo = tmp_path / "other"
    repo.mkdir()
    _git("init", "--quiet", "--initial-branch=main", cwd=repo)
    (repo / "README").write_text("no pcdet here")
    _git("add", ".", cwd=repo)
    _git("commit", "--quiet", "-m", "x", cwd=repo)
    result = run_get("--url", repo.as_uri(), "--ref", "main", "--dest", "clone", cwd=tmp_path)
    _assert_one_line_error(result, 2, "has no pcdet/__init__.py")
    assert not (tmp_path / "clone").exists()


def test_install_pth_writes_the_tree_into_site_packages(tiny_repo, tmp_path, monkeypatch, capsys):
    repo, first, _ = tiny_repo
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(get.sysconfig, "get_paths", lambda: {"purelib": str(site)})
    dest = tmp_path / "clone"
    assert get.main(["--url", repo.as_uri(), "--ref", first, "--dest", str(dest), "--install-pth"]) == 0
    pth = site / get.PTH_NAME
    assert pth.read_text() == f"{dest}\n"
    assert capsys.readouterr().out == f"wrote {pth}: this Python now finds pcdet in {dest}\n"
    not_a_dir = tmp_path / "not_a_dir"
    not_a_dir.write_text("")
    with pytest.raises(get.GetError, match="cannot write .* use this line instead: export PYTHONPATH="):
        get.write_pth(dest, not_a_dir)


def test_defaults_name_the_tested_commit():
    assert get.TESTED_COMMIT.startswith("8caccce") and len(get.TESTED_COMMIT) == 40
    assert get.DEFAULT_URL == "https://github.com/open-mmlab/OpenPCDet.git"
    assert get.path_line(Path("/a b")) == "export PYTHONPATH='/a b'${PYTHONPATH:+:$PYTHONPATH}"

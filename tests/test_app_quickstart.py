"""The README's quick start, run exactly as written on the KITTI mini frames (CPU): it must end in written
evaluations of both runs and a comparison."""

import csv
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"


def extract_quickstart(text: str) -> str | None:
    """The one ```bash block between the quickstart markers, or None when the text has no such block."""
    if BEGIN not in text or END not in text:
        return None
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    if len(blocks) != 1:
        raise ValueError(f"the quickstart section must hold exactly one ```bash block, found {len(blocks)}")
    return blocks[0]


def with_paths(script: str, kitti: Path, work: Path) -> str:
    """Point the block's ``KITTI=`` and ``WORK=`` lines at ``kitti`` and ``work``; everything else runs as written."""
    for name, value in (("KITTI", kitti), ("WORK", work)):
        script, count = re.subn(rf"^{name}=\S+", f"{name}={value}", script, count=1, flags=re.M)
        if count != 1:
            raise ValueError(f"the quickstart block has no '{name}=' line at the start of a line")
    return script


def test_extract_and_substitute():
    text = f"intro\n{BEGIN}\n```bash\nKITTI=/path/to/kitti  # x\nWORK=/tmp/w\nls $KITTI\n```\n{END}\n"
    script = with_paths(extract_quickstart(text), Path("/data/k"), Path("/tmp/q"))
    assert script == "KITTI=/data/k  # x\nWORK=/tmp/q\nls $KITTI\n"
    assert extract_quickstart("no block here") is None


@pytest.mark.pcdet
@pytest.mark.slow
def test_readme_quickstart_ends_in_evaluations(kitti_mini_dir, tmp_path):
    script = extract_quickstart((REPO / "README.md").read_text())
    if script is None:
        pytest.skip("README has no quickstart block")
    work = tmp_path / "work"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", with_paths(script, kitti_mini_dir, work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in ("pointpillar_gciou", "pointpillar"):
        with open(work / "output" / run / "default" / "eval_results.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert {r["checkpoint"] for r in rows} == {"checkpoint_iter_2.pth"}, run
        assert {(r["recall"], r["class"]) for r in rows} >= {("R11", "Car"), ("R40", "Car")}
    assert any((work / "compare").iterdir())

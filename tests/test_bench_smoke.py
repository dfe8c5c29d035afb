"""``scripts/bench_iou.py --quick`` runs end to end and prints every benchmark row with a positive throughput."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_iou.py"


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| cpu |"):
            rows[cells[1]] = cells
    return rows


def test_bench_quick_mode_prints_all_rows():
    pytest.importorskip("shapely", reason="the benchmark's reference row needs shapely (pip install -e '.[test]')")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--devices", "cpu"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    expected = [
        "rotated_iou_3d fwd",
        "rotated_iou_3d fwd+bwd",
        "gciou_loss fwd+bwd",
        "gciou_loss grad_rescale fwd+bwd",
        "rotated_iou_3d_matrix",
        "shapely reference loop (float64)",
    ]
    assert sorted(rows) == sorted(expected), result.stdout
    for name, cells in rows.items():
        best_ms, median_ms, pairs_per_s = float(cells[3]), float(cells[4]), float(cells[5])
        assert 0 < best_ms <= median_ms, (name, cells)
        assert pairs_per_s > 0, (name, cells)
    assert rows["rotated_iou_3d fwd"][2] == "1e3"
    assert rows["rotated_iou_3d_matrix"][2] == "300x300"


def test_bench_rejects_bad_thread_count():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "--threads must be >= 1, got 0" in result.stderr


def test_bench_falls_back_to_eager_when_compilation_fails(monkeypatch):
    """A failing compiled path is reported and timed eagerly instead of aborting the benchmark."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_iou", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_iou", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)

    def broken_compiled(boxes1, boxes2):
        raise RuntimeError("backend compiler failed (simulated)")

    monkeypatch.setattr(
        bench,
        "iou_functions",
        lambda use_compile: [("rotated_iou_3d", bench.rotated_iou_3d), ("compiled", broken_compiled)],
    )
    rows = bench.bench_paired(torch.device("cpu"), [64], repeats=1, dtype=torch.float32, use_compile=True)
    by_name = {row.benchmark: row for row in rows}
    assert by_name["compiled fwd"].note == "compile failed -> eager"
    assert by_name["compiled fwd+bwd"].note == "compile failed -> eager"
    assert all(t > 0 for t in by_name["compiled fwd+bwd"].times_s)
    assert by_name["rotated_iou_3d fwd"].note == ""

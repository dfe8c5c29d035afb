"""compare_curves on run directories in the layout tools/train.py writes (see the team guide)."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcdet_gciou.analysis.curves import ap_convergence, compare_runs, ema, load_run, run_label

REPO = Path(__file__).resolve().parents[1]
EVAL_HEADER = ["epoch", "checkpoint", "class", "metric", "difficulty", "recall", "ap"]


def _write_metrics(run_dir: Path, n_steps: int, loc0: float, partial_tail: bool = False):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "epoch", "tag", "value"])
        for step in range(1, n_steps + 1):
            epoch = (step - 1) // 10 + 1
            writer.writerow([step, epoch, "train/rpn_loss_loc", loc0 / step])
            writer.writerow([step, epoch, "train/rpn_loss_cls", 0.5])
            writer.writerow([step, epoch, "train/rpn_iou_pos", 1 - 0.5 / step])
            writer.writerow([step, epoch, "train/lr", 0.003])
    if partial_tail:
        with open(run_dir / "metrics.csv", "a") as fh:
            fh.write(f"{n_steps + 1},9,train/rpn_loss_")  # a run still writing its last line


def _write_eval(run_dir: Path, ap_by_epoch, classes=("Car",)):
    with open(run_dir / "eval_results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(EVAL_HEADER)
        for epoch, ap in ap_by_epoch.items():
            for cls in classes:
                for recall, shift in (("R11", 0.0), ("R40", 1.0)):
                    writer.writerow([epoch, f"checkpoint_epoch_{epoch}", cls, "3d", "moderate", recall, ap + shift])
                    writer.writerow([epoch, f"checkpoint_epoch_{epoch}", cls, "bev", "moderate", recall, ap + 5])


@pytest.fixture
def runs(tmp_path):
    base = tmp_path / "output"
    a = base / "second_gciou" / "default"
    _write_metrics(a, 30, 2.0)
    _write_eval(a, {1: 50.0, 2: 70.0, 3: 78.0, 4: 80.0})
    b = base / "second" / "seed1"
    _write_metrics(b, 25, 3.0, partial_tail=True)
    _write_eval(b, {1: 40.0, 2: 60.0})
    empty = base / "pointpillar" / "default"
    empty.mkdir(parents=True)
    return a, b, empty


def test_labels_from_the_run_path(runs):
    a, b, empty = runs
    assert run_label(a) == "second_gciou"
    assert run_label(b) == "second/seed1"


def test_ap_convergence_numbers():
    stats = ap_convergence(np.array([1.0, 2.0, 3.0, 4.0]), np.array([50.0, 70.0, 78.0, 80.0]))
    assert stats["best_ap"] == 80.0 and stats["best_epoch"] == 4 and stats["final_ap"] == 80.0
    assert stats["epoch_95pct_of_best"] == 3  # 78 >= 0.95 * 80 = 76, 70 is not
    assert stats["auc_ap_epoch"] == pytest.approx((50 + 70) / 2 + (70 + 78) / 2 + (78 + 80) / 2)
    assert stats["mean_ap_over_span"] == pytest.approx(stats["auc_ap_epoch"] / 3)


def test_ema_is_debiased_and_validates():
    assert ema(np.array([2.0, 2.0, 2.0]), 0.9) == pytest.approx([2.0, 2.0, 2.0])
    smoothed = ema(np.array([0.0, 10.0]), 0.5)
    assert smoothed[1] == pytest.approx((0.5 * 0.0 * 0.5 + 0.5 * 10.0) / (1 - 0.5**2))
    with pytest.raises(ValueError, match="smoothing"):
        ema(np.zeros(2), 1.0)


def test_compare_runs_outputs(runs, tmp_path):
    a, b, empty = runs
    out = tmp_path / "cmp"
    loaded, rows, text = compare_runs([a, b, empty], out)
    assert {p.name for p in out.iterdir()} >= {"losses.png", "iou_pos.png", "ap.png", "summary.md", "summary.csv"}
    assert loaded[1].skipped_rows == 1  # the half-written line of the run in progress
    assert len(loaded[1].scalars["train/rpn_loss_loc"].steps) == 25
    by = {(r["run"], r["recall"]): r for r in rows}
    assert by[("second_gciou", "R11")]["best_ap"] == 80.0
    assert by[("second_gciou", "R40")]["best_ap"] == 81.0
    assert by[("second/seed1", "R11")]["final_epoch"] == 2
    assert by[("pointpillar", "")]["note"] == "no data"
    assert "pointpillar" in text and "no data" in text
    with open(out / "summary.csv") as fh:
        parsed = list(csv.DictReader(fh))
    assert len(parsed) == 5
    assert float(parsed[0]["best_ap"]) == 80.0


def test_tensorboard_only_run(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "output" / "pv_rcnn" / "tb_only"
    with SummaryWriter(log_dir=str(run / "tensorboard")) as writer:
        for step in range(1, 21):
            writer.add_scalar("train/rpn_loss_loc", 1.0 / step, step)
            writer.add_scalar("train/rpn_iou_pos", 0.5 + step / 100, step)
    loaded = load_run(run)
    assert loaded.scalar_source == "tensorboard"
    series = loaded.scalars["train/rpn_loss_loc"]
    assert list(series.steps) == list(range(1, 21))
    assert series.values[3] == pytest.approx(0.25)
    assert all(math.isnan(e) for e in series.epochs)
    loaded_runs, rows, _ = compare_runs([run], tmp_path / "cmp")
    assert rows[0]["note"].startswith("no 3d/moderate AP")
    assert (tmp_path / "cmp" / "losses.png").exists()


def test_reads_what_the_training_logger_writes(tmp_path):
    from pcdet_gciou.training.logs import MetricsLogger, append_eval_rows

    run = tmp_path / "output" / "second_gciou" / "default"
    with MetricsLogger(run, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step, 1, {"train/rpn_loss_loc": 1.0 / step, "train/rpn_iou_pos": 0.1 * step})
    append_eval_rows(
        run / "eval_results.csv",
        [
            {
                "epoch": 1,
                "checkpoint": "checkpoint_epoch_1",
                "class": "Car",
                "metric": "3d",
                "difficulty": "moderate",
                "recall": "R40",
                "ap": 12.5,
            }
        ],
    )
    loaded = load_run(run)
    assert loaded.scalar_source == "metrics.csv" and loaded.skipped_rows == 0
    assert loaded.scalars["train/rpn_iou_pos"].values[-1] == pytest.approx(0.5)
    assert loaded.ap[("Car", "3d", "moderate", "R40")][1].tolist() == [12.5]


def test_bad_inputs(tmp_path, runs):
    a, b, _ = runs
    with pytest.raises(ValueError, match="labels"):
        compare_runs([a, b], tmp_path / "x", labels=["one"])
    with pytest.raises(ValueError, match="not found"):
        compare_runs([tmp_path / "missing"], tmp_path / "x")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        load_run(bad)


def test_script_with_labels(runs, tmp_path):
    a, b, empty = runs
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compare_curves.py"),
            str(a),
            str(b),
            str(empty),
            "--out",
            str(out),
            "--labels",
            "GCIoU",
            "Smooth-L1",
            "empty",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| GCIoU | Car | R11 |" in proc.stdout
    assert "run empty" in proc.stderr and "no metrics.csv" in proc.stderr
    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare_curves.py"), str(a), "--out", str(out), "--smooth", "1.5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "smoothing" in bad.stderr


def test_one_panel_per_distinct_quantity(tmp_path):
    from pcdet_gciou.analysis.curves import distinct_quantities

    run = tmp_path / "output" / "pointpillar" / "default"
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "epoch", "tag", "value"])
        for step in range(1, 6):
            total = 3.0 / step
            for tag in ("train/loss", "train/loss_rpn", "train/rpn_loss"):  # one quantity, three names
                writer.writerow([step, 1, tag, total])
            writer.writerow([step, 1, "train/rpn_loss_loc", 1.0 / step])
    loaded = load_run(run)
    groups = distinct_quantities([loaded], sorted(loaded.scalars))
    assert ["train/loss", "train/loss_rpn", "train/rpn_loss"] in groups
    assert ["train/rpn_loss_loc"] in groups
    # a tag equal in one run but not in another is a different quantity
    other = load_run(run)
    other.scalars["train/rpn_loss"] = type(other.scalars["train/loss"])(
        other.scalars["train/loss"].steps, other.scalars["train/loss"].values + 1, other.scalars["train/loss"].epochs
    )
    groups = distinct_quantities([loaded, other], sorted(loaded.scalars))
    assert ["train/rpn_loss"] in groups and ["train/loss", "train/loss_rpn"] in groups


def test_ap_that_never_rose_above_zero_names_no_best_epoch(tmp_path):
    stats = ap_convergence(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0]))
    assert stats["best_epoch"] == "" and stats["epoch_95pct_of_best"] == ""
    assert "never rose above 0" in stats["note"]
    assert ap_convergence(np.array([1.0, 2.0]), np.array([0.0, 0.5]))["best_epoch"] == 2
    run = tmp_path / "output" / "second" / "default"
    _write_metrics(run, 5, 1.0)
    _write_eval(run, {1: 0.0, 2: 0.0})
    _, rows, text = compare_runs([run], tmp_path / "cmp")
    r11 = next(r for r in rows if r["recall"] == "R11")
    assert r11["best_epoch"] == "" and "never rose above 0" in r11["note"]
    assert "never rose above 0" in text

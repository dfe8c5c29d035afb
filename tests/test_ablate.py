"""tools/ablate.py: the paper's tables, row by row, against the paper; dry run without OpenPCDet; rerun skip; collect.

The paper's numbers below are typed again from the reference notes (GCIoU, CVPR 2023, Tables 1-5: KITTI val, car,
3D AP R11 at IoU 0.7), independently of ``pcdet_gciou.openpcdet.ablation``. The switches are checked by what the
resolved loss computes on a fixed box pair: the value against ``-ln(IoU) f(theta) + g(theta)`` written here, and
the size gradient against Eq. 18 (``x U^(2/3)``).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcdet_gciou.config import load_config
from pcdet_gciou.geometry import rotated_iou_3d
from pcdet_gciou.losses import LOSSES, build_loss
from pcdet_gciou.openpcdet.ablation import RIOU_REASON, ablate_main, collect_table, resolve_table
from pcdet_gciou.training import append_eval_rows

REPO = Path(__file__).resolve().parents[1]
CT, CT_GCIOU = "cfgs/kitti_models/ct_stack.yaml", "cfgs/kitti_models/ct_stack_gciou.yaml"
P_FORM_SUPPORTED = "p_form" in inspect.signature(LOSSES["gciou"].__init__).parameters

# (label, config, switches, paper easy/moderate/hard). Switches: ("iou", name) for a plain IoU-family loss, or
# ("gciou", f, g, gr) with f = None | (p_form, alpha); ("stock",) for OpenPCDet's own head.
PAPER = {
    1: [
        ("-ln IoU", CT, ("iou", "log_iou"), (88.61, 78.12, 77.27)),
        ("f", CT, ("gciou", ("power", 2), None, False), (89.21, 78.56, 78.22)),
        ("g", CT, ("gciou", None, "exp", False), (88.98, 78.53, 77.75)),
        ("f+g", CT, ("gciou", ("power", 2), "exp", False), (89.54, 78.81, 78.39)),
        ("GR", CT, ("gciou", None, None, True), (89.16, 78.54, 78.01)),
        ("f+g+GR", CT_GCIOU, ("gciou", ("power", 2), "exp", True), (89.85, 80.03, 78.66)),
    ],
    2: [
        ("P=a*theta, a=1", CT, ("gciou", ("linear", 1), "exp", False), (88.86, 78.19, 77.22)),
        ("P=a*theta, a=2", CT, ("gciou", ("linear", 2), "exp", False), (89.06, 78.29, 77.50)),
        ("P=a*theta, a=3", CT, ("gciou", ("linear", 3), "exp", False), (89.19, 78.43, 77.62)),
        ("P=theta^a, a=1", CT, ("gciou", ("power", 1), "exp", False), (89.38, 78.62, 77.52)),
        ("P=theta^a, a=2", CT, ("gciou", ("power", 2), "exp", False), (89.54, 78.81, 78.39)),
        ("P=theta^a, a=3", CT, ("gciou", ("power", 3), "exp", False), (89.15, 78.33, 77.41)),
        ("P=theta^a, a=5", CT, ("gciou", ("power", 5), "exp", False), (87.26, 77.35, 75.89)),
    ],
    3: [
        ("g=theta", CT, ("gciou", None, "linear", False), (88.69, 78.23, 77.32)),
        ("g=tan theta", CT, ("gciou", None, "tan", False), (88.86, 78.36, 76.91)),
        ("g=e^theta-1", CT, ("gciou", None, "exp", False), (88.98, 78.53, 77.75)),
    ],
    4: [
        ("PointPillars", "cfgs/kitti_models/pointpillar.yaml", ("stock",), (88.95, 77.35, 76.11)),
        ("PointPillars+GCIoU", "cfgs/kitti_models/pointpillar_gciou.yaml", ("shipped",), (89.17, 80.19, 78.95)),
        ("SECOND", "cfgs/kitti_models/second.yaml", ("stock",), (88.91, 78.85, 77.62)),
        ("SECOND+GCIoU", "cfgs/kitti_models/second_gciou.yaml", ("shipped",), (89.21, 82.41, 78.81)),
        ("SECOND-IoU", "cfgs/kitti_models/second_iou.yaml", ("stock",), (89.28, 79.21, 78.36)),
        ("SECOND-IoU+GCIoU", "cfgs/kitti_models/second_iou_gciou.yaml", ("shipped",), (89.26, 83.33, 79.41)),
    ],
    5: [
        ("1-IoU", CT, ("iou", "iou"), (88.53, 77.63, 77.05)),
        ("-ln IoU", CT, ("iou", "log_iou"), (88.61, 78.12, 77.27)),
        ("RIoU", CT, ("iou", "riou"), (88.42, 77.81, 76.26)),
        ("GIoU", CT, ("iou", "giou"), (88.68, 78.35, 77.41)),
        ("DIoU", CT, ("iou", "diou"), (89.16, 78.78, 77.95)),
        ("ODIoU", CT, ("iou", "odiou"), (89.32, 78.92, 78.01)),
        ("RDIoU", CT, ("iou", "rdiou"), (89.71, 79.61, 78.40)),
        ("GCIoU", CT_GCIOU, ("gciou", ("power", 2), "exp", True), (89.85, 80.03, 78.66)),
    ],
}
PRED = torch.tensor([[0.3, -0.2, 0.1, 4.3, 1.5, 1.7, 0.5]], dtype=torch.float64)
TARGET = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]], dtype=torch.float64)
G_TERMS = {None: lambda t: 0.0, "exp": math.expm1, "tan": math.tan, "linear": lambda t: t}


def _expected_value(f, g) -> float:
    """-ln(IoU + 1e-6) f(theta) + g(theta) for PRED/TARGET (heading error 0.5 rad)."""
    theta = 0.5
    iou = float(rotated_iou_3d(PRED, TARGET)[0])
    weight = 1.0 if f is None else math.exp(theta ** f[1] if f[0] == "power" else f[1] * theta)
    return -math.log(iou + 1e-6) * weight + G_TERMS[g](theta)


def _size_grad(loss_module) -> torch.Tensor:
    pred = PRED.clone().requires_grad_(True)
    loss_module(pred, TARGET).sum().backward()
    return pred.grad[0, 3:6]


def _check_switches(loss: dict, switches: tuple) -> None:
    kwargs = {k: v for k, v in loss.items() if k != "NAME"}
    module = build_loss(loss["NAME"], **kwargs)
    value = float(module(PRED, TARGET)[0])
    _, f, g, gr = switches
    assert loss["NAME"] == "gciou"
    assert value == pytest.approx(_expected_value(f, g), rel=1e-9)
    plain = build_loss("gciou", **{**kwargs, "grad_rescale": False})
    union = float((PRED[0, 3:6].prod() + TARGET[0, 3:6].prod()) / (1 + rotated_iou_3d(PRED, TARGET)[0]))
    factor = union ** (2 / 3) if gr else 1.0
    torch.testing.assert_close(_size_grad(module), _size_grad(plain) * factor)
    if gr:  # Eq. 18 as written, not the batch-normalised variant
        assert loss.get("rescale_normalize", False) is False


@pytest.mark.parametrize("table", sorted(PAPER))
def test_rows_match_the_paper_switches_configs_and_numbers(table):
    rows = resolve_table(table)
    assert [r["row"] for r in rows] == [label for label, *_ in PAPER[table]]
    for row, (label, cfg_file, switches, paper) in zip(rows, PAPER[table]):
        assert row["cfg_file"] == cfg_file, label
        assert row["paper"] == dict(zip(("easy", "moderate", "hard"), paper)), label
        kind = switches[0]
        if kind == "stock":
            assert row["loss"] == {"REG_LOSS_TYPE": "WeightedSmoothL1Loss"} and row["set"] == []
        elif kind == "shipped":
            shipped = load_config(REPO / cfg_file).MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS
            assert row["loss"] == dict(shipped) and row["set"] == []
        elif kind == "iou" and switches[1] == "riou" and "riou" not in LOSSES:
            assert row["loss"] is None and row["reason"] == RIOU_REASON and row["commands"] == []
        elif kind == "iou":
            assert row["loss"] == {"NAME": switches[1]}, label
        elif table == 2 and not P_FORM_SUPPORTED:  # Table 2's rows name the form of P explicitly
            assert row["loss"] is None and "p_form" in row["reason"] and row["commands"] == [], label
        else:
            _check_switches(row["loss"], switches)


def test_resolved_loss_is_what_the_set_override_gives():
    from pcdet_gciou.config import apply_set_args
    from pcdet_gciou.openpcdet.loss_config import parse_dense_loss_config

    for table in (1, 3, 5):
        for row in resolve_table(table):
            if row["loss"] is None:
                continue
            cfg = load_config(REPO / row["cfg_file"])
            apply_set_args(cfg, row["set"])
            spec = parse_dense_loss_config(cfg.MODEL.DENSE_HEAD.LOSS_CONFIG).reg_loss
            assert row["loss"] == {"NAME": spec.name, **spec.kwargs}, row["row"]


def test_identical_rows_share_one_run_and_different_rows_do_not():
    runs = {}
    for table in sorted(PAPER):
        for row in resolve_table(table):
            if row["loss"] is not None:
                runs.setdefault((row["cfg_file"], row["tag"]), set()).add(json.dumps([row["set"], row["loss"]]))
    assert all(len(v) == 1 for v in runs.values())
    shared = [r for r in resolve_table(5) if r["row"] in ("-ln IoU", "GCIoU")]
    table1 = {r["row"]: r for r in resolve_table(1)}
    assert [(r["cfg_file"], r["tag"]) for r in shared] == [
        (table1[k]["cfg_file"], table1[k]["tag"]) for k in ("-ln IoU", "f+g+GR")
    ]


def test_dry_run_json_needs_no_openpcdet():
    code = (
        "import sys\n"
        "sys.modules['pcdet'] = None  # any import of pcdet now raises ImportError\n"
        "from pcdet_gciou.openpcdet.ablation import ablate_main\n"
        "ablate_main(sys.argv[1:])\n"
        "assert not any(m.split('.')[0] == 'pcdet' and sys.modules[m] for m in sys.modules)\n"
    )
    for table in sorted(PAPER):
        out = subprocess.run(
            [sys.executable, "-c", code, "--table", str(table), "--dry_run", "--json"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        rows = json.loads(out)
        assert [r["row"] for r in rows] == [label for label, *_ in PAPER[table]]
        for row in rows:
            assert {"row", "cfg_file", "set", "loss", "paper", "commands"} <= set(row)
            assert (row["loss"] is None) == ("reason" in row) == (row["commands"] == [])


def test_commands_train_then_test_the_final_epoch(tmp_path):
    row = next(r for r in resolve_table(1, tmp_path, nproc=2, extra=["--workers", "2"]) if r["row"] == "GR")
    train, test = row["commands"]
    assert train[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"] and "--launcher=pytorch" in train
    assert "--standalone" in train
    assert train[train.index("--set") + 1 :] == row["set"] and test[test.index("--set") + 1 :] == row["set"]
    assert train[train.index("--epochs") + 1] == "40"
    ckpt = Path(test[test.index("--ckpt") + 1])
    assert ckpt == tmp_path.resolve() / "ct_stack" / row["tag"] / "ckpt" / "checkpoint_epoch_40.pth"
    for command in (train, test):
        assert command[command.index("--workers") + 1] == "2"
        assert command[command.index("--output_dir") + 1] == str(tmp_path.resolve())


def _write_eval(run: Path, epoch: int, aps: tuple[float, float, float], cls="Car", recall="R11") -> None:
    rows = [
        {
            "epoch": epoch,
            "checkpoint": f"checkpoint_epoch_{epoch}.pth",
            "class": cls,
            "metric": "3d",
            "difficulty": level,
            "recall": recall,
            "ap": ap,
        }
        for level, ap in zip(("easy", "moderate", "hard"), aps)
    ]
    run.mkdir(parents=True, exist_ok=True)
    append_eval_rows(run / "eval_results.csv", rows)


def test_rerun_skips_finished_rows_and_runs_the_rest(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    _write_eval(tmp_path / "ct_stack" / "default", 2, (90.0, 80.0, 70.0))  # row 1: finished at epoch 2
    _write_eval(tmp_path / "ct_stack" / "giou", 1, (90.0, 80.0, 70.0))  # not at the final epoch
    _write_eval(tmp_path / "ct_stack" / "diou", 2, (90.0, 80.0, 70.0), recall="R40")  # no R11 rows
    rows = ablate_main(["--table", "5", "--runs_dir", str(tmp_path), "--epochs", "2", "--", "--cpu"])
    status = {r["row"]: r["status"] for r in rows}
    riou = "ran" if "riou" in LOSSES else "no loss"
    assert status == {
        "1-IoU": "ran",
        "-ln IoU": "skipped",
        "RIoU": riou,
        "GIoU": "ran",
        "DIoU": "ran",
        "ODIoU": "ran",
        "RDIoU": "ran",
        "GCIoU": "ran",
    }
    ran = [r for r in rows if r["status"] == "ran"]
    assert calls == [command for r in ran for command in r["commands"]]
    assert all("--cpu" in command for command in calls)


def test_collect_writes_ours_paper_and_difference(tmp_path):
    _write_eval(tmp_path / "ct_stack" / "default", 40, (88.0, 79.0, 77.0))
    _write_eval(tmp_path / "ct_stack" / "default", 20, (10.0, 10.0, 10.0))  # an earlier epoch: not reported
    _write_eval(tmp_path / "ct_stack" / "giou", 40, (90.0, 80.0, 70.0), cls="Pedestrian")  # no car rows
    assert ablate_main(["--table", "5", "--collect", str(tmp_path)]) == []
    with open(tmp_path / "table5.csv", newline="") as handle:
        records = {r["row"]: r for r in csv.DictReader(handle)}
    assert list(records) == [label for label, *_ in PAPER[5]]
    ln = records["-ln IoU"]
    assert (ln["epoch"], ln["easy_ours"], ln["easy_paper"], ln["easy_diff"]) == ("40", "88.00", "88.61", "-0.61")
    assert (ln["moderate_ours"], ln["moderate_diff"], ln["hard_diff"]) == ("79.00", "+0.88", "-0.27")
    assert records["GIoU"]["easy_ours"] == "" and records["GIoU"]["note"] == "not evaluated yet"
    assert records["GIoU"]["easy_paper"] == "88.68"
    if "riou" not in LOSSES:
        assert records["RIoU"]["note"] == RIOU_REASON
    markdown = (tmp_path / "table5.md").read_text()
    assert "| -ln IoU | ct_stack/default | 40 | 88.00 | 88.61 | -0.61 | 79.00 | 78.12 | +0.88 |" in markdown
    csv_path, md_path = collect_table(1, tmp_path, tmp_path / "out")
    assert csv_path.parent == md_path.parent == tmp_path / "out"
    with open(csv_path, newline="") as handle:
        assert next(csv.DictReader(handle))["easy_ours"] == "88.00"  # Table 1 row 1 is the same run


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        ablate_main(["--table", "6", "--dry_run"])
    with pytest.raises(SystemExit):
        ablate_main(["--table", "1", "--json"])
    with pytest.raises(ValueError, match="table must be one of"):
        resolve_table(0)


def test_a_failing_run_stops_with_one_line_naming_the_row(tmp_path, monkeypatch):
    def fail(command, check):
        raise subprocess.CalledProcessError(3, command)

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(SystemExit, match=r"table 3, row 'g=theta': train.py exited with 3; .*rerun"):
        ablate_main(["--table", "3", "--runs_dir", str(tmp_path), "--nproc", "2"])

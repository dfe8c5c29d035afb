"""The GCIoU paper's experiment tables (Ming et al., CVPR 2023, Tables 1-5) as runs of our tools.

Each row of a table is a config file plus a ``--set`` override of the dense head's ``REG_LOSS``, and the paper's
KITTI val car 3D AP (R11, IoU 0.7; easy / moderate / hard). :func:`resolve_table` turns the rows into the
commands that train and evaluate them; :func:`collect_table` compares finished runs with the paper. The
command line is ``tools/ablate.py``.

Rows, in the paper's order (Tables 1, 2, 3 and 5 on CT-Stack, car only):

- Table 1: -ln IoU; f; g; f+g; GR; f+g+GR. ``f`` is ``alpha: 2`` (``alpha: None`` switches it off), ``g`` is
  ``e^theta - 1`` (``g: exp``; Table 1's "g only" row equals Table 3's e^theta - 1 row), GR is Eq. 18 as written
  (``grad_rescale: True, rescale_normalize: False``).
- Table 2: ``P = alpha * theta`` (``p_form: linear``) with alpha 1, 2, 3, then ``P = theta^alpha``
  (``p_form: power``) with alpha 1, 2, 3, 5; with ``g: exp`` and no GR (its theta^2 row equals Table 1's f+g row).
- Table 3: f off (``alpha: None``), ``g`` = theta, tan theta, e^theta - 1 (``linear``, ``tan``, ``exp``).
- Table 4: the stock PointPillars, SECOND and SECOND-IoU configs against their ``*_gciou`` pairs.
- Table 5: 1 - IoU, -ln IoU, RIoU, GIoU, DIoU, ODIoU, RDIoU, GCIoU (f+g+GR as Table 1's last row).

A row whose loss cannot be built here keeps its place with ``loss`` None and a ``reason``.

Runs live in ``<runs_dir>/<config stem>/<tag>/`` (the layout of ``tools/train.py --output_dir --extra_tag``);
the tag names the override, so rows that are the same run (Table 5's -ln IoU and Table 1's first row, for
example) share one directory and are trained once.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import apply_set_args, load_config, project_root
from ..losses import LOSSES
from ..training.rundir import EVAL_CSV, EVAL_FIELDS, check_columns, parse_eval_row, run_dir_for
from .loss_config import parse_dense_loss_config

__all__ = [
    "PAPER_ROWS",
    "TABLES",
    "Row",
    "ablate_main",
    "collect_table",
    "resolve_table",
    "row_commands",
    "run_dir",
    "run_finished",
]

REG_LOSS_KEY = "MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS"
OUR_DENSE_HEADS = ("AnchorHeadSingleGCIoU",)
RIOU_REASON = (
    "RIoU's definition (Zheng et al., ECCV 2020) was not found in any reference material reachable here; not invented"
)
#: the eval_results.csv rows a table reports: (class, metric, recall)
AP_FILTER = ("Car", "3d", "R11")
DIFFICULTIES = ("easy", "moderate", "hard")

CT, CT_GCIOU = "cfgs/kitti_models/ct_stack.yaml", "cfgs/kitti_models/ct_stack_gciou.yaml"
EQ18 = {"grad_rescale": True, "rescale_normalize": False}
FULL_GCIOU = {"NAME": "gciou", "alpha": 2.0, "g": "exp", **EQ18}


@dataclass(frozen=True)
class Row:
    """One row of a paper table: label, config, the REG_LOSS it needs (None: the config's own), paper AP."""

    table: int
    label: str
    cfg_file: str
    reg_loss: Mapping[str, Any] | None
    paper: tuple[float, float, float]


def _gciou(**options: Any) -> dict:
    return {"NAME": "gciou", **options}


# The paper's numbers: KITTI val, car, 3D AP at IoU 0.7, 11 recall points (easy, moderate, hard).
PAPER_ROWS: tuple[Row, ...] = (
    Row(1, "-ln IoU", CT, {"NAME": "log_iou"}, (88.61, 78.12, 77.27)),
    Row(1, "f", CT, _gciou(alpha=2.0, g=None, grad_rescale=False), (89.21, 78.56, 78.22)),
    Row(1, "g", CT, _gciou(alpha=None, g="exp", grad_rescale=False), (88.98, 78.53, 77.75)),
    Row(1, "f+g", CT, _gciou(alpha=2.0, g="exp", grad_rescale=False), (89.54, 78.81, 78.39)),
    Row(1, "GR", CT, _gciou(alpha=None, g=None, **EQ18), (89.16, 78.54, 78.01)),
    Row(1, "f+g+GR", CT_GCIOU, FULL_GCIOU, (89.85, 80.03, 78.66)),
    Row(
        2, "P=a*theta, a=1", CT, _gciou(p_form="linear", alpha=1.0, g="exp", grad_rescale=False), (88.86, 78.19, 77.22)
    ),
    Row(
        2, "P=a*theta, a=2", CT, _gciou(p_form="linear", alpha=2.0, g="exp", grad_rescale=False), (89.06, 78.29, 77.50)
    ),
    Row(
        2, "P=a*theta, a=3", CT, _gciou(p_form="linear", alpha=3.0, g="exp", grad_rescale=False), (89.19, 78.43, 77.62)
    ),
    Row(2, "P=theta^a, a=1", CT, _gciou(p_form="power", alpha=1.0, g="exp", grad_rescale=False), (89.38, 78.62, 77.52)),
    Row(2, "P=theta^a, a=2", CT, _gciou(p_form="power", alpha=2.0, g="exp", grad_rescale=False), (89.54, 78.81, 78.39)),
    Row(2, "P=theta^a, a=3", CT, _gciou(p_form="power", alpha=3.0, g="exp", grad_rescale=False), (89.15, 78.33, 77.41)),
    Row(2, "P=theta^a, a=5", CT, _gciou(p_form="power", alpha=5.0, g="exp", grad_rescale=False), (87.26, 77.35, 75.89)),
    Row(3, "g=theta", CT, _gciou(alpha=None, g="linear", grad_rescale=False), (88.69, 78.23, 77.32)),
    Row(3, "g=tan theta", CT, _gciou(alpha=None, g="tan", grad_rescale=False), (88.86, 78.36, 76.91)),
    Row(3, "g=e^theta-1", CT, _gciou(alpha=None, g="exp", grad_rescale=False), (88.98, 78.53, 77.75)),
    Row(4, "PointPillars", "cfgs/kitti_models/pointpillar.yaml", None, (88.95, 77.35, 76.11)),
    Row(4, "PointPillars+GCIoU", "cfgs/kitti_models/pointpillar_gciou.yaml", None, (89.17, 80.19, 78.95)),
    Row(4, "SECOND", "cfgs/kitti_models/second.yaml", None, (88.91, 78.85, 77.62)),
    Row(4, "SECOND+GCIoU", "cfgs/kitti_models/second_gciou.yaml", None, (89.21, 82.41, 78.81)),
    Row(4, "SECOND-IoU", "cfgs/kitti_models/second_iou.yaml", None, (89.28, 79.21, 78.36)),
    Row(4, "SECOND-IoU+GCIoU", "cfgs/kitti_models/second_iou_gciou.yaml", None, (89.26, 83.33, 79.41)),
    Row(5, "1-IoU", CT, {"NAME": "iou"}, (88.53, 77.63, 77.05)),
    Row(5, "-ln IoU", CT, {"NAME": "log_iou"}, (88.61, 78.12, 77.27)),
    Row(5, "RIoU", CT, {"NAME": "riou"}, (88.42, 77.81, 76.26)),
    Row(5, "GIoU", CT, {"NAME": "giou"}, (88.68, 78.35, 77.41)),
    Row(5, "DIoU", CT, {"NAME": "diou"}, (89.16, 78.78, 77.95)),
    Row(5, "ODIoU", CT, {"NAME": "odiou"}, (89.32, 78.92, 78.01)),
    Row(5, "RDIoU", CT, {"NAME": "rdiou"}, (89.71, 79.61, 78.40)),
    Row(5, "GCIoU", CT_GCIOU, FULL_GCIOU, (89.85, 80.03, 78.66)),
)
TABLES = tuple(sorted({row.table for row in PAPER_ROWS}))


def _check_table(table: Any) -> int:
    if isinstance(table, bool) or table not in TABLES:
        raise ValueError(f"table must be one of {list(TABLES)}, got {table!r}")
    return table


def set_value_text(value: Any) -> str:
    """The command-line text of a ``--set`` value: a Python/YAML flow literal (``{'NAME': 'gciou', ...}``)."""
    return repr(value)


def _slug(mapping: Mapping[str, Any]) -> str:
    """A run tag naming a REG_LOSS override, e.g. ``gciou_alpha-2.0_g-exp_grad_rescale-False``."""
    parts = [str(mapping["NAME"])] + [f"{key}-{value}" for key, value in mapping.items() if key != "NAME"]
    return re.sub(r"[^A-Za-z0-9_.-]", "", "_".join(parts))


def _resolved_loss(cfg: Mapping) -> dict:
    """REG_LOSS as the dense head sees it: our heads parse LOSS_CONFIG; stock heads use REG_LOSS_TYPE."""
    head = cfg["MODEL"]["DENSE_HEAD"]
    if head["NAME"] not in OUR_DENSE_HEADS:
        return {"REG_LOSS_TYPE": head["LOSS_CONFIG"].get("REG_LOSS_TYPE", "WeightedSmoothL1Loss")}
    spec = parse_dense_loss_config(head["LOSS_CONFIG"]).reg_loss
    return {"NAME": spec.name, **spec.kwargs}


def _resolve_row(row: Row) -> dict:
    """The dry-run object of ``row`` without commands: cfg_file, set, loss (or None and a reason), tag, epochs."""
    cfg = load_config(project_root() / row.cfg_file)
    set_args: list[str] = []
    if row.reg_loss is not None and dict(cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS) != dict(row.reg_loss):
        set_args = [REG_LOSS_KEY, set_value_text(dict(row.reg_loss))]
    out = {
        "row": row.label,
        "table": row.table,
        "cfg_file": row.cfg_file,
        "set": set_args,
        "paper": dict(zip(DIFFICULTIES, row.paper)),
        "tag": _slug(row.reg_loss) if set_args else "default",
        "epochs": int(cfg.OPTIMIZATION.NUM_EPOCHS),
    }
    if row.reg_loss is not None and row.reg_loss["NAME"] == "riou" and "riou" not in LOSSES:
        return {**out, "loss": None, "reason": RIOU_REASON}
    apply_set_args(cfg, set_args)
    if set_args and dict(cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS) != dict(row.reg_loss):
        raise ValueError(f"--set {set_args} gave REG_LOSS {dict(cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS)}")
    try:
        loss = _resolved_loss(cfg)
    except (TypeError, ValueError) as exc:
        return {**out, "loss": None, "reason": f"the loss cannot be built: {exc}"}
    return {**out, "loss": loss}


def run_dir(runs_dir: str | Path, resolved: Mapping) -> Path:
    """``<runs_dir>/<config stem>/<tag>`` (absolute; a relative ``runs_dir`` is taken from the working directory):
    where ``tools/train.py --output_dir runs_dir --extra_tag tag`` writes."""
    return run_dir_for(resolved["cfg_file"], resolved["tag"], runs_dir).root


def row_commands(
    resolved: Mapping, runs_dir: str | Path, *, nproc: int = 1, extra: Sequence[str] = (), epochs: int | None = None
) -> list[list[str]]:
    """``[train, test]`` argv lists of a resolved row (empty when its loss cannot be built).

    ``nproc > 1`` trains through torchrun (``torch.distributed.run``, ``--launcher pytorch``); ``extra`` is
    passed to both tools (e.g. ``--data_path``, ``--workers``, ``--cpu``); the test evaluates the last epoch.
    Paths are absolute, so the commands run from any working directory.
    """
    if resolved["loss"] is None:
        return []
    final = epochs or resolved["epochs"]
    root, out = project_root(), run_dir(runs_dir, resolved).parents[1]
    common = ["--cfg_file", str(root / resolved["cfg_file"]), "--output_dir", str(out), "--extra_tag", resolved["tag"]]
    common += list(extra)
    sets = ["--set", *resolved["set"]] if resolved["set"] else []
    launch = [sys.executable, str(root / "tools" / "train.py")]
    if nproc > 1:
        # --standalone: a free rendezvous port, so two ablations can run side by side on one machine
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--standalone",
            *launch[1:],
        ]
        launch.append("--launcher=pytorch")
    train = [*launch, *common, "--epochs", str(final), *sets]
    ckpt = run_dir(runs_dir, resolved) / "ckpt" / f"checkpoint_epoch_{final}.pth"
    test = [sys.executable, str(root / "tools" / "test.py"), *common, "--ckpt", str(ckpt), *sets]
    return [train, test]


def resolve_table(table: int, runs_dir: str | Path = "output/ablation", **command_options: Any) -> list[dict]:
    """The rows of ``table`` in the paper's order, as the ``--dry_run --json`` objects (with ``commands``)."""
    _check_table(table)
    rows = []
    for row in PAPER_ROWS:
        if row.table == table:
            resolved = _resolve_row(row)
            rows.append({**resolved, "commands": row_commands(resolved, runs_dir, **command_options)})
    return rows


def _car_ap(run: Path, epoch: int | None = None) -> tuple[int, dict[str, float]] | None:
    """``(epoch, {difficulty: AP})`` of the latest (or the given) evaluated epoch of a run, or None."""
    path = run / EVAL_CSV
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        check_columns(path, reader.fieldnames, EVAL_FIELDS)
        rows = [parse_eval_row(r) for r in reader]
    rows = [r for r in rows if (r.cls, r.metric, r.recall) == AP_FILTER]
    epochs = {r.epoch for r in rows}
    if not epochs or (epoch is not None and epoch not in epochs):
        return None
    chosen = max(epochs) if epoch is None else epoch
    ap = {r.difficulty: r.ap for r in rows if r.epoch == chosen}
    return (chosen, ap) if set(DIFFICULTIES) <= set(ap) else None


def run_finished(runs_dir: str | Path, resolved: Mapping, epochs: int | None = None) -> bool:
    """True when the run of ``resolved`` has car 3D R11 AP for its final epoch in ``eval_results.csv``."""
    return _car_ap(run_dir(runs_dir, resolved), epochs or resolved["epochs"]) is not None


def collect_table(table: int, runs_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``table<N>.csv`` and ``table<N>.md``: our car 3D AP R11 beside the paper's, and the difference.

    A run that is missing or not evaluated yet leaves its cells empty. Returns the two paths.
    """
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir) if out_dir is not None else runs_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for resolved in resolve_table(table, runs_dir):
        found = _car_ap(run_dir(runs_dir, resolved)) if resolved["loss"] is not None else None
        record = {"row": resolved["row"], "run": f"{Path(resolved['cfg_file']).stem}/{resolved['tag']}"}
        record["epoch"] = found[0] if found else ""
        for level in DIFFICULTIES:
            ours, paper = (found[1][level] if found else None), resolved["paper"][level]
            record[f"{level}_ours"] = "" if ours is None else f"{ours:.2f}"
            record[f"{level}_paper"] = f"{paper:.2f}"
            record[f"{level}_diff"] = "" if ours is None else f"{ours - paper:+.2f}"
        record["note"] = resolved.get("reason", "" if found else "not evaluated yet")
        records.append(record)
    csv_path, md_path = out_dir / f"table{table}.csv", out_dir / f"table{table}.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    md_path.write_text(_markdown(table, records))
    return csv_path, md_path


def _markdown(table: int, records: list[dict]) -> str:
    header = ["row", "run", "epoch"] + [f"{d} {k}" for d in DIFFICULTIES for k in ("ours", "paper", "diff")] + ["note"]
    keys = ["row", "run", "epoch"] + [f"{d}_{k}" for d in DIFFICULTIES for k in ("ours", "paper", "diff")] + ["note"]
    lines = [
        f"# Table {table}: KITTI val, car, 3D AP R11 at IoU 0.7 (ours, the paper's, ours - paper)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(r[k]) or "-" for k in keys) + " |" for r in records]
    return "\n".join(lines) + "\n"


def _parse_args(argv: Sequence[str] | None):
    import argparse

    parser = argparse.ArgumentParser(
        description="Train and evaluate every row of one of the GCIoU paper's tables, or collect the results.",
        epilog="Arguments after '--' go to tools/train.py and tools/test.py, e.g. -- --data_path DIR --workers 8.",
    )
    parser.add_argument("--table", type=int, required=True, choices=TABLES, help="the paper's table number")
    parser.add_argument("--runs_dir", default="output/ablation", help="root of the run directories")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run; >1 trains through torchrun")
    parser.add_argument("--epochs", type=int, default=None, help="default: each config's NUM_EPOCHS")
    parser.add_argument("--dry_run", action="store_true", help="print what would run; run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry_run: the rows as a JSON list")
    parser.add_argument("--collect", metavar="RUNS_DIR", default=None, help="write tableN.md and tableN.csv")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    if args.json and not args.dry_run:
        parser.error("--json needs --dry_run")
    return args, extra


def ablate_main(argv: Sequence[str] | None = None) -> list[dict]:
    """Entry point of ``tools/ablate.py``; returns the resolved rows (with ``status``: skipped/ran/no loss)."""
    import json
    import shlex
    import subprocess

    args, extra = _parse_args(argv)
    if args.collect is not None:
        for path in collect_table(args.table, args.collect):
            print(path)
        return []
    rows = resolve_table(args.table, args.runs_dir, nproc=args.nproc, extra=extra, epochs=args.epochs)
    if args.dry_run:
        print(json.dumps(rows, indent=2) if args.json else "\n".join(_describe(row) for row in rows))
        return rows
    for row in rows:
        if row["loss"] is None:
            row["status"] = "no loss"
            print(f"[table {args.table}] {row['row']}: not run: {row['reason']}", flush=True)
        elif run_finished(args.runs_dir, row, args.epochs):
            row["status"] = "skipped"
            print(f"[table {args.table}] {row['row']}: finished, skipped ({run_dir(args.runs_dir, row)})", flush=True)
        else:
            for command in row["commands"]:
                print(f"[table {args.table}] {row['row']}: {shlex.join(command)}", flush=True)
                try:
                    subprocess.run(command, check=True)
                except subprocess.CalledProcessError as exc:
                    raise SystemExit(
                        f"ablate: error: table {args.table}, row {row['row']!r}: {_tool_name(command)} exited with "
                        f"{exc.returncode}; fix the cause above and rerun the same command (finished rows are skipped)"
                    ) from None
            row["status"] = "ran"
    return rows


def _tool_name(command: Sequence[str]) -> str:
    return next(Path(part).name for part in command if part.endswith(".py"))


def _describe(row: Mapping) -> str:
    import shlex

    if row["loss"] is None:
        return f"# {row['row']}: not run: {row['reason']}"
    return "\n".join([f"# {row['row']}: loss {row['loss']}"] + [shlex.join(c) for c in row["commands"]])

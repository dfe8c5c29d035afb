"""Convergence curves of training runs: read run directories, plot them overlaid, tabulate AP convergence.

A run directory is what ``tools/train.py`` / ``tools/test.py`` write, ``output/<cfg_tag>/<extra_tag>/``:

- ``metrics.csv`` (``step,epoch,tag,value``, long format, appended while training). When it is missing, the
  training scalars are read from the TensorBoard events in ``tensorboard/`` instead (no epochs there).
- ``eval_results.csv`` (``epoch,checkpoint,class,metric,difficulty,recall,ap``, AP in percent).

Runs in progress are fine: a half-written last line is skipped, and a run without any data is reported by
name instead of failing.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..training.rundir import (
    EVAL_CSV,
    EVAL_FIELDS,
    METRIC_FIELDS,
    METRICS_CSV,
    TENSORBOARD_DIR,
    check_columns,
    parse_eval_row,
    parse_metric_row,
)
from .figures import PALETTE, chunks, save_figure

APKey = Tuple[str, str, str, str]  # (class, metric, difficulty, recall)
SUMMARY_FIELDS = (
    "run",
    "class",
    "metric",
    "difficulty",
    "recall",
    "epochs_evaluated",
    "best_ap",
    "best_epoch",
    "final_ap",
    "final_epoch",
    "epoch_95pct_of_best",
    "auc_ap_epoch",
    "mean_ap_over_span",
    "note",
)


@dataclass
class Series:
    """One scalar over training: ``steps``, ``values`` and ``epochs`` (NaN when unknown), sorted by step."""

    steps: np.ndarray
    values: np.ndarray
    epochs: np.ndarray


@dataclass
class RunCurves:
    run_dir: Path
    label: str
    scalars: Dict[str, Series] = field(default_factory=dict)
    ap: Dict[APKey, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (epochs, AP %)
    scalar_source: str = "none"
    skipped_rows: int = 0

    @property
    def has_data(self) -> bool:
        return bool(self.scalars) or bool(self.ap)


def run_label(run_dir: Path) -> str:
    """``<cfg_tag>`` for ``output/<cfg_tag>/default``, else ``<cfg_tag>/<extra_tag>``."""
    run_dir = Path(run_dir)
    parent = run_dir.resolve().parent.name
    return parent if run_dir.name == "default" and parent else (f"{parent}/{run_dir.name}" if parent else run_dir.name)


def _series(rows: List[Tuple[int, float, float]]) -> Series:
    # keep the last value written for a step (a resumed run may repeat steps)
    by_step = {}
    for step, epoch, value in rows:
        by_step[step] = (epoch, value)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return Series(
        steps,
        np.array([by_step[s][1] for s in steps], dtype=float),
        np.array([by_step[s][0] for s in steps], dtype=float),
    )


def read_metrics_csv(path: Path) -> Tuple[Dict[str, Series], int]:
    """``({tag: Series}, skipped_row_count)`` from a ``metrics.csv``; malformed rows (a run still writing) are
    skipped."""
    rows: Dict[str, List[Tuple[int, float, float]]] = {}
    skipped = 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        check_columns(path, reader.fieldnames, METRIC_FIELDS)
        for raw in reader:
            try:
                row = parse_metric_row(raw)
            except ValueError:
                skipped += 1
                continue
            rows.setdefault(row.tag, []).append((row.step, float(row.epoch), row.value))
    return {tag: _series(r) for tag, r in rows.items()}, skipped


def read_tensorboard(log_dir: Path) -> Dict[str, Series]:
    """``{tag: Series}`` of the scalars in the event files directly under ``log_dir`` (epochs unknown: NaN)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        out[tag] = _series([(int(e.step), math.nan, float(e.value)) for e in acc.Scalars(tag)])
    return out


def read_eval_results(path: Path) -> Tuple[Dict[APKey, Tuple[np.ndarray, np.ndarray]], int]:
    """``({(class, metric, difficulty, recall): (epochs, ap)}, skipped_row_count)`` from ``eval_results.csv``."""
    table: Dict[APKey, Dict[int, float]] = {}
    skipped = 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        check_columns(path, reader.fieldnames, EVAL_FIELDS)
        for raw in reader:
            try:
                row = parse_eval_row(raw)
            except ValueError:
                skipped += 1
                continue
            table.setdefault((row.cls, row.metric, row.difficulty, row.recall), {})[row.epoch] = row.ap
    out = {}
    for key, by_epoch in table.items():
        epochs = np.array(sorted(by_epoch), dtype=float)
        out[key] = (epochs, np.array([by_epoch[int(e)] for e in epochs], dtype=float))
    return out, skipped


def load_run(run_dir, label: Optional[str] = None) -> RunCurves:
    """Everything a run directory holds so far. Raises ValueError only if ``run_dir`` is not a directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory not found: {run_dir}")
    run = RunCurves(run_dir, label or run_label(run_dir))
    metrics = run_dir / METRICS_CSV
    if metrics.is_file():
        run.scalars, run.skipped_rows = read_metrics_csv(metrics)
        run.scalar_source = METRICS_CSV
    elif (run_dir / TENSORBOARD_DIR).is_dir():
        run.scalars = read_tensorboard(run_dir / TENSORBOARD_DIR)
        run.scalar_source = "tensorboard" if run.scalars else "none"
    evals = run_dir / EVAL_CSV
    if evals.is_file():
        run.ap, skipped = read_eval_results(evals)
        run.skipped_rows += skipped
    return run


def unique_labels(labels: Sequence[str]) -> List[str]:
    """Append ``#2``, ``#3`` ... to repeated labels."""
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style debiased exponential moving average; ``weight`` in [0, 1), 0 = no smoothing."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight!r}")
    out = np.empty(len(values), dtype=float)
    last, count = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = math.nan
            continue
        last = last * weight + (1.0 - weight) * v
        count += 1
        out[i] = last / (1.0 - weight**count)
    return out


def ap_convergence(epochs: np.ndarray, ap: np.ndarray) -> Dict[str, float]:
    """Best AP and its epoch, final AP, first epoch reaching 95 % of the best, trapezoid area under AP(epoch).

    When the AP never rose above 0 there is no best epoch: ``best_epoch`` and ``epoch_95pct_of_best`` are ``""``
    and ``note`` says so.
    """
    best = int(np.argmax(ap))
    if not ap[best] > 0:
        return {
            "epochs_evaluated": len(ap),
            "best_ap": float(ap[best]),
            "best_epoch": "",
            "final_ap": float(ap[-1]),
            "final_epoch": int(epochs[-1]),
            "epoch_95pct_of_best": "",
            "auc_ap_epoch": 0.0,
            "mean_ap_over_span": 0.0,
            "note": f"AP never rose above 0 in {len(ap)} evaluation(s)",
        }
    reach = int(np.nonzero(ap >= 0.95 * ap[best])[0][0])
    auc = float(np.sum((ap[1:] + ap[:-1]) / 2 * np.diff(epochs))) if len(ap) > 1 else 0.0
    span = float(epochs[-1] - epochs[0])
    return {
        "epochs_evaluated": len(ap),
        "best_ap": float(ap[best]),
        "best_epoch": int(epochs[best]),
        "final_ap": float(ap[-1]),
        "final_epoch": int(epochs[-1]),
        "epoch_95pct_of_best": int(epochs[reach]),
        "auc_ap_epoch": auc,
        "mean_ap_over_span": auc / span if span > 0 else float(ap[0]),
        "note": "",
    }


def summary_rows(runs: Sequence[RunCurves], *, metric: str = "3d", difficulty: str = "moderate") -> List[dict]:
    """One row per run, class and recall setting (R11, R40) at ``metric``/``difficulty``; runs without AP get a note."""
    rows = []
    for run in runs:
        keys = sorted(k for k in run.ap if k[1] == metric and k[2] == difficulty)
        if not keys:
            note = "no data" if not run.has_data else f"no {metric}/{difficulty} AP in eval_results.csv yet"
            rows.append({**{f: "" for f in SUMMARY_FIELDS}, "run": run.label, "note": note})
            continue
        for key in keys:
            epochs, ap = run.ap[key]
            rows.append(
                {
                    "run": run.label,
                    "class": key[0],
                    "metric": key[1],
                    "difficulty": key[2],
                    "recall": key[3],
                    **ap_convergence(epochs, ap),
                }
            )
    return rows


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_markdown(rows: Sequence[dict]) -> str:
    cols = tuple(field for field in SUMMARY_FIELDS if field not in ("metric", "difficulty"))  # both in the title
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_summary(
    rows: Sequence[dict],
    out_dir: Path,
    *,
    metric: str,
    difficulty: str,
    runs: Sequence[RunCurves],
    figures: Sequence[str],
) -> str:
    text = "\n".join(
        [
            f"# Convergence comparison ({metric} AP, {difficulty})",
            "",
            "AP in percent. epoch_95pct_of_best: first evaluated epoch with AP >= 95 % of the run's best. "
            "auc_ap_epoch: trapezoid area under AP(epoch) between the first and last evaluated epochs "
            "(compare runs with the same evaluated span; mean_ap_over_span = area / span).",
            "",
            summary_markdown(rows),
            "",
            "Runs: "
            + "; ".join(
                f"{r.label} = {r.run_dir} (scalars: {r.scalar_source}"
                + (f", {r.skipped_rows} unreadable rows skipped" if r.skipped_rows else "")
                + ")"
                for r in runs
            ),
            "",
        ]
        + [f"![{name}]({name})" for name in figures]
        + [""]
    )
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "summary.md").write_text(text)
    return text


def _identical(a: Series, b: Series) -> bool:
    return a.steps.shape == b.steps.shape and bool(
        np.array_equal(a.steps, b.steps) and np.allclose(a.values, b.values, rtol=1e-6, atol=1e-9, equal_nan=True)
    )


def distinct_quantities(runs: Sequence[RunCurves], tags: Sequence[str]) -> List[List[str]]:
    """``tags`` grouped so that each group is one quantity: tags whose series are identical in every run.

    OpenPCDet logs a one-stage detector's total loss under several names (``loss``, ``loss_rpn``, ``rpn_loss``);
    those become one group and get one panel, titled with all their names.
    """
    groups: List[List[str]] = []
    for tag in sorted(tags):
        for group in groups:
            first = group[0]
            same = all(
                (tag in r.scalars) == (first in r.scalars)
                and (tag not in r.scalars or _identical(r.scalars[tag], r.scalars[first]))
                for r in runs
            )
            if same:
                group.append(tag)
                break
        else:
            groups.append([tag])
    return groups


def _loss_tags(runs: Sequence[RunCurves]) -> List[str]:
    tags = {t for r in runs for t in r.scalars if "loss" in t.split("/")[-1]}
    return sorted(tags)


RUN_LINE_STYLES = ("-", "--", "-.", ":")


def run_styles(n_runs: int) -> List[Tuple[str, str]]:
    """``(colour, linestyle)`` per run: both change from one run to the next, so runs differ in both."""
    return [(PALETTE[j % len(PALETTE)], RUN_LINE_STYLES[j % len(RUN_LINE_STYLES)]) for j in range(n_runs)]


def _scalar_panels(runs, quantities, smoothing, ylabel_of):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = run_styles(len(runs))
    run_sets = chunks(list(range(len(runs))))
    panels = [(group, run_set) for group in quantities for run_set in run_sets]
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.8 * rows_n), squeeze=False)
    for i, (group, run_set) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for j in run_set:
            series = runs[j].scalars.get(group[0])
            if series is None or not len(series.steps):
                continue
            colour, style = styles[j]
            ax.plot(series.steps, series.values, color=colour, alpha=0.2, linewidth=0.8, label="_raw")
            ax.plot(
                series.steps,
                ema(series.values, smoothing),
                color=colour,
                linestyle=style,
                linewidth=1.5,
                label=runs[j].label,
                marker="o" if len(series.steps) < 20 else None,
                markersize=3,
            )  # short runs stay visible
        suffix = f" (runs {run_set[0] + 1}-{run_set[-1] + 1})" if len(run_sets) > 1 else ""
        ax.set_title(" = ".join(group) + suffix, fontsize=9)
        ax.set_xlabel("iteration", fontsize=9)
        ax.set_ylabel(ylabel_of(group[0]), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for i in range(len(panels), rows_n * cols):
        axes[i // cols][i % cols].axis("off")
    fig.suptitle(f"EMA smoothing {smoothing:g} (faint: raw values)", fontsize=10)
    fig.tight_layout()
    return fig


def _ap_figure(runs, classes, recalls, metric, difficulty):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = run_styles(len(runs))
    run_sets = chunks(list(range(len(runs))))
    panels = [(cls, recall, run_set) for cls in classes for recall in recalls for run_set in run_sets]
    cols = len(recalls) * len(run_sets)
    fig, axes = plt.subplots(len(classes), cols, figsize=(5.2 * cols, 3.8 * len(classes)), squeeze=False)
    for i, (cls, recall, run_set) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for j in run_set:
            entry = runs[j].ap.get((cls, metric, difficulty, recall))
            if entry is None:
                continue
            never = not np.max(entry[1]) > 0
            colour, style = styles[j]
            label = runs[j].label + (" (AP 0 at every evaluation)" if never else "")
            ax.plot(entry[0], entry[1], marker="o", markersize=3, color=colour, linestyle=style, label=label)
        suffix = f" (runs {run_set[0] + 1}-{run_set[-1] + 1})" if len(run_sets) > 1 else ""
        ax.set_title(f"{cls} {metric} AP, {difficulty}, {recall}{suffix}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("AP (%)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_runs(
    runs: Sequence[RunCurves],
    out_dir: Path,
    *,
    smoothing: float = 0.9,
    metric: str = "3d",
    difficulty: str = "moderate",
) -> List[str]:
    """Write ``losses.png``, ``iou_pos.png`` and ``ap.png`` (each only if some run has the data); returns names.

    One panel per distinct quantity (tags with identical curves share a panel), at most 8 runs per panel.
    """
    written = []
    loss_tags = _loss_tags(runs)
    if loss_tags:
        fig = _scalar_panels(runs, distinct_quantities(runs, loss_tags), smoothing, lambda t: "loss value")
        save_figure(fig, out_dir / "losses.png")
        written.append("losses.png")
    iou_tags = sorted({t for r in runs for t in r.scalars if t.endswith("rpn_iou_pos")})
    if iou_tags:
        fig = _scalar_panels(runs, distinct_quantities(runs, iou_tags), smoothing, lambda t: "mean 3D IoU of positives")
        save_figure(fig, out_dir / "iou_pos.png")
        written.append("iou_pos.png")
    classes = sorted({k[0] for r in runs for k in r.ap if k[1] == metric and k[2] == difficulty})
    recalls = sorted({k[3] for r in runs for k in r.ap if k[1] == metric and k[2] == difficulty})
    if classes:
        save_figure(_ap_figure(runs, classes, recalls, metric, difficulty), out_dir / "ap.png")
        written.append("ap.png")
    return written


def compare_runs(
    run_dirs: Sequence,
    out_dir,
    *,
    labels: Optional[Sequence[str]] = None,
    smoothing: float = 0.9,
    metric: str = "3d",
    difficulty: str = "moderate",
) -> Tuple[List[RunCurves], List[dict], str]:
    """Load, plot and tabulate runs; returns ``(runs, summary rows, markdown)``."""
    if not run_dirs:
        raise ValueError("expected at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} run directories")
    ema(np.zeros(1), smoothing)  # validates the weight before any work
    runs = [load_run(d) for d in run_dirs]
    for run, label in zip(runs, unique_labels(labels if labels is not None else [r.label for r in runs])):
        run.label = label
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plot_runs(runs, out_dir, smoothing=smoothing, metric=metric, difficulty=difficulty)
    rows = summary_rows(runs, metric=metric, difficulty=difficulty)
    text = write_summary(rows, out_dir, metric=metric, difficulty=difficulty, runs=runs, figures=figures)
    return runs, rows, text

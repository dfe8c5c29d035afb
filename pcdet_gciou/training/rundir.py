"""The run directory: file names and CSV schemas, owned here and shared by the writers and the analysis.

Layout (``tools/train.py`` and ``tools/test.py`` write it; :mod:`pcdet_gciou.analysis.curves` reads it)::

    <output_dir>/<cfg_tag>/<extra_tag>/           default <repo>/output/<cfg_tag>/default/
        config.yaml                               merged config (after --set, --batch_size, --epochs)
        log_train_<timestamp>.txt, log_eval_<timestamp>.txt
        tensorboard/                              train/* scalars; tensorboard/eval/: eval/* scalars
        ckpt/checkpoint_epoch_<N>.pth             after epoch N
        ckpt/checkpoint_iter_<K>.pth              where --max_iters K ended the run inside an epoch
        ckpt/latest_model.pth                     resume point of an interrupted run (Ctrl-C, timed saves)
        metrics.csv                               step,epoch,tag,value
        eval_results.csv                          epoch,checkpoint,class,metric,difficulty,recall,ap
        eval/<checkpoint stem>/<split>/result.pkl detections (OpenPCDet's annos format)

``metrics.csv`` is long format, one row per scalar, appended while training. ``step`` counts optimiser steps
completed (1 for the first iteration); ``epoch`` is the 1-based epoch the step belongs to (the steps of epoch ``N``
lead to ``checkpoint_epoch_N.pth``). ``eval_results.csv`` holds AP in percent; ``epoch`` is the epoch the
evaluated checkpoint ends or lies in.

This module imports only the standard library and :mod:`pcdet_gciou.config`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

from ..config import config_tag, project_root

__all__ = [
    "CKPT_DIR",
    "CONFIG_YAML",
    "EVAL_CSV",
    "EVAL_FIELDS",
    "EVAL_TENSORBOARD_DIR",
    "EvalRow",
    "LATEST_CHECKPOINT",
    "METRICS_CSV",
    "METRIC_FIELDS",
    "MetricRow",
    "RunDir",
    "TENSORBOARD_DIR",
    "check_columns",
    "checkpoint_epoch",
    "checkpoint_iteration",
    "parse_eval_row",
    "parse_metric_row",
    "run_dir_for",
]

METRICS_CSV = "metrics.csv"
EVAL_CSV = "eval_results.csv"
CONFIG_YAML = "config.yaml"
TENSORBOARD_DIR = "tensorboard"
EVAL_TENSORBOARD_DIR = "tensorboard/eval"
CKPT_DIR = "ckpt"
LATEST_CHECKPOINT = "latest_model.pth"
METRIC_FIELDS = ("step", "epoch", "tag", "value")
EVAL_FIELDS = ("epoch", "checkpoint", "class", "metric", "difficulty", "recall", "ap")

_EPOCH_CKPT = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")
_ITER_CKPT = re.compile(r"^checkpoint_iter_(\d+)\.pth$")


def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The ``N`` of ``checkpoint_epoch_N.pth``, or None for any other file name.

    Example:
        >>> checkpoint_epoch("ckpt/checkpoint_epoch_12.pth"), checkpoint_epoch("latest_model.pth")
        (12, None)
    """
    match = _EPOCH_CKPT.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_iteration(path: str | os.PathLike) -> int | None:
    """The ``K`` of ``checkpoint_iter_K.pth`` (a run ended by ``--max_iters K``), or None for any other name."""
    match = _ITER_CKPT.match(Path(path).name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory ``root``."""

    root: Path

    @property
    def metrics_csv(self) -> Path:
        return self.root / METRICS_CSV

    @property
    def eval_csv(self) -> Path:
        return self.root / EVAL_CSV

    @property
    def config_yaml(self) -> Path:
        return self.root / CONFIG_YAML

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def eval_tensorboard(self) -> Path:
        return self.root / EVAL_TENSORBOARD_DIR

    @property
    def ckpt_dir(self) -> Path:
        return self.root / CKPT_DIR

    def log_file(self, kind: str, stamp: str) -> Path:
        """``log_<kind>_<stamp>.txt`` (kind ``train`` or ``eval``)."""
        return self.root / f"log_{kind}_{stamp}.txt"

    def eval_output(self, checkpoint: str | os.PathLike, split: str) -> Path:
        """``eval/<checkpoint stem>/<split>/``, where ``result.pkl`` goes."""
        name = Path(checkpoint).name
        epoch = checkpoint_epoch(name)
        stem = f"epoch_{epoch}" if epoch is not None else Path(name).stem
        return self.root / "eval" / stem / split


def run_dir_for(cfg_file: str | os.PathLike, extra_tag: str, output_dir: str | os.PathLike | None) -> RunDir:
    """``<output_dir or <repo>/output>/<cfg_tag>/<extra_tag>``."""
    root = Path(output_dir).expanduser() if output_dir else project_root() / "output"
    return RunDir((root / config_tag(cfg_file) / extra_tag).resolve())


class MetricRow(NamedTuple):
    step: int
    epoch: int
    tag: str
    value: float


class EvalRow(NamedTuple):
    epoch: int
    checkpoint: str
    cls: str
    metric: str
    difficulty: str
    recall: str
    ap: float


def check_columns(path: str | os.PathLike, fieldnames: Iterable[str] | None, expected: Iterable[str]) -> None:
    """Raise ValueError naming ``path`` when a CSV header lacks any of ``expected``."""
    missing = [f for f in expected if f not in set(fieldnames or ())]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected header {','.join(expected)}")


def parse_metric_row(row: Mapping[str, str]) -> MetricRow:
    """One ``metrics.csv`` row as typed values; ValueError for a malformed row (e.g. half-written by a live run).

    Example:
        >>> parse_metric_row({"step": "3", "epoch": "1", "tag": "train/loss", "value": "0.5"})
        MetricRow(step=3, epoch=1, tag='train/loss', value=0.5)
    """
    try:
        parsed = MetricRow(int(row["step"]), int(row["epoch"]), str(row["tag"]), float(row["value"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed metrics row {dict(row)}") from exc
    if not parsed.tag:
        raise ValueError(f"malformed metrics row {dict(row)}: empty tag")
    return parsed


def parse_eval_row(row: Mapping[str, str]) -> EvalRow:
    """One ``eval_results.csv`` row as typed values; ValueError for a malformed row."""
    try:
        parsed = EvalRow(
            int(row["epoch"]),
            str(row["checkpoint"]),
            str(row["class"]),
            str(row["metric"]),
            str(row["difficulty"]),
            str(row["recall"]),
            float(row["ap"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed eval row {dict(row)}") from exc
    if not all((parsed.cls, parsed.metric, parsed.difficulty, parsed.recall)):
        raise ValueError(f"malformed eval row {dict(row)}: empty key column")
    return parsed

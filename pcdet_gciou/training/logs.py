"""Run-directory logging: ``metrics.csv`` (long format) + TensorBoard, ``eval_results.csv`` and the text log.

The file names and CSV schemas are defined once, in :mod:`pcdet_gciou.training.rundir`.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from .rundir import EVAL_FIELDS, METRIC_FIELDS, METRICS_CSV, TENSORBOARD_DIR, check_columns, parse_metric_row

__all__ = [
    "EVAL_FIELDS",
    "METRIC_FIELDS",
    "MetricsLogger",
    "append_eval_rows",
    "create_logger",
    "evaluated_checkpoints",
    "read_metrics",
]


def create_logger(log_file: str | os.PathLike | None, rank: int = 0, name: str = "pcdet_gciou") -> logging.Logger:
    """INFO logger to stdout and ``log_file`` on rank 0; ERROR-only elsewhere."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s  %(levelname)5s  %(message)s")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None and rank == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def _rewrite_csv(path: Path, fields: Iterable[str], rows: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``metrics.csv`` as dicts with ``step``/``epoch`` as int and ``value`` as float."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        check_columns(path, reader.fieldnames, METRIC_FIELDS)
        return [parse_metric_row(r)._asdict() for r in reader]


def _complete_metric_rows(path: Path) -> list:
    """The well-formed rows of a ``metrics.csv`` (a killed run may have left a half-written last line)."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            try:
                rows.append(parse_metric_row(raw))
            except ValueError:
                continue
    return rows


class MetricsLogger:
    """Writes scalars to ``<run_dir>/metrics.csv`` and, optionally, ``<run_dir>/tensorboard``.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files.
        resume_step: when resuming from a checkpoint taken after this many steps, rows with a larger ``step``
            (logged after that checkpoint by the interrupted run) are dropped from ``metrics.csv`` and TensorBoard
            events beyond it are purged, so no iteration is counted twice.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / METRICS_CSV
        if resume_step is not None and self.csv_path.exists():
            kept = [r._asdict() for r in _complete_metric_rows(self.csv_path) if r.step <= resume_step]
            _rewrite_csv(self.csv_path, METRIC_FIELDS, kept)
        new_file = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._handle = open(self.csv_path, "a", newline="")
        self._writer = csv.writer(self._handle)
        if new_file:
            self._writer.writerow(METRIC_FIELDS)
            self._handle.flush()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)

    def log(self, step: int, epoch: int, scalars: Mapping[str, float]) -> None:
        """One row per scalar; values are converted with ``float``."""
        for tag, value in scalars.items():
            value = float(value)
            self._writer.writerow((int(step), int(epoch), tag, repr(value)))
            if self.tb is not None:
                self.tb.add_scalar(tag, value, int(step))
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_eval_rows(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """Append rows (dicts with :data:`EVAL_FIELDS`) to ``eval_results.csv``, writing the header when new.

    Rows for a checkpoint already present in the file are replaced, so re-evaluating never duplicates rows.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    for row in rows:
        missing = set(EVAL_FIELDS) - set(row)
        if missing:
            raise ValueError(f"eval row is missing {sorted(missing)}: {row}")
    new_ckpts = {str(r["checkpoint"]) for r in rows}
    existing = []
    if path.exists():
        with open(path, newline="") as handle:
            existing = [r for r in csv.DictReader(handle) if r["checkpoint"] not in new_ckpts]
    path.parent.mkdir(parents=True, exist_ok=True)
    _rewrite_csv(path, EVAL_FIELDS, existing + [{k: r[k] for k in EVAL_FIELDS} for r in rows])


def evaluated_checkpoints(path: str | os.PathLike) -> set[str]:
    """Checkpoint names (column ``checkpoint``) that already have rows in ``eval_results.csv``."""
    path = Path(path)
    if not path.exists():
        return set()
    with open(path, newline="") as handle:
        return {r["checkpoint"] for r in csv.DictReader(handle)}

"""The training engine: host-agnostic, it imports neither OpenPCDet nor :mod:`pcdet_gciou.openpcdet`.

- :mod:`.options`: the typed ``OPTIMIZATION`` section and the run options (defaults live in their fields).
- :mod:`.optim`: ``adam_onecycle`` (AdamW + one-cycle), ``adam``/``sgd`` with step decay, as OpenPCDet configures them.
- :mod:`.loop`: the :class:`Trainer` (clipping, per-iteration schedule, atomic checkpoints, exact resume, interrupts).
- :mod:`.data`: resumable sample order and per-sample augmentation seeds.
- :mod:`.rng`: random-state capture, restore and seeding.
- :mod:`.rundir`: the run-directory layout and its CSV schemas.
- :mod:`.logs`: ``metrics.csv`` / TensorBoard / ``eval_results.csv`` writers.
- :mod:`.checkpoint`: atomic saving, loading with config check, listing, pruning.
- :mod:`.distributed`: process-group setup for torchrun.

The OpenPCDet application (datasets, networks, KITTI evaluation, the tools) lives in :mod:`pcdet_gciou.openpcdet`.
"""

from .checkpoint import (
    CheckpointError,
    ConfigMismatchError,
    atomic_torch_save,
    checkpoint_epoch,
    find_resume_checkpoint,
    iter_new_checkpoints,
    list_epoch_checkpoints,
    list_run_checkpoints,
    load_checkpoint,
    load_pretrained,
    prune_checkpoints,
)
from .data import ResumableSampler, SeededSampleDataset, make_epoch_loader
from .logs import MetricsLogger, append_eval_rows, create_logger, evaluated_checkpoints, read_metrics
from .loop import LATEST_CHECKPOINT, Trainer, TrainingInterrupted, TrainState
from .optim import build_optimizer, build_scheduler, onecycle_reference_lr
from .options import OptimizationOptions, RunOptions
from .rundir import RunDir, run_dir_for

__all__ = [
    "CheckpointError",
    "ConfigMismatchError",
    "LATEST_CHECKPOINT",
    "MetricsLogger",
    "OptimizationOptions",
    "ResumableSampler",
    "RunDir",
    "RunOptions",
    "SeededSampleDataset",
    "TrainState",
    "Trainer",
    "TrainingInterrupted",
    "append_eval_rows",
    "atomic_torch_save",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_epoch",
    "create_logger",
    "evaluated_checkpoints",
    "find_resume_checkpoint",
    "iter_new_checkpoints",
    "list_epoch_checkpoints",
    "list_run_checkpoints",
    "load_checkpoint",
    "load_pretrained",
    "make_epoch_loader",
    "onecycle_reference_lr",
    "prune_checkpoints",
    "read_metrics",
    "run_dir_for",
]

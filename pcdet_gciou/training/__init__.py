"""Training and evaluation tools logic, independent of OpenPCDet.

- :mod:`.optim`: ``adam_onecycle`` (AdamW + one-cycle), ``adam``/``sgd`` with step decay, as OpenPCDet configures them.
- :mod:`.loop`: the :class:`Trainer` (clipping, per-iteration schedule, atomic checkpoints, exact resume).
- :mod:`.data`: resumable sample order and per-sample augmentation seeds.
- :mod:`.logs`: ``metrics.csv`` / TensorBoard / ``eval_results.csv`` writers.
- :mod:`.checkpoint`: atomic saving, loading with config check, pruning.
- :mod:`.cli`: ``tools/train.py``, ``tools/test.py``, ``tools/prepare_kitti.py`` (run directory layout in its docstring).

The OpenPCDet glue (datasets, networks, KITTI evaluation) lives in :mod:`pcdet_gciou.openpcdet`.
"""

from .checkpoint import (
    ConfigMismatchError,
    atomic_torch_save,
    checkpoint_epoch,
    list_epoch_checkpoints,
    load_checkpoint,
    load_pretrained,
    prune_checkpoints,
)
from .data import ResumableSampler, SeededSampleDataset, make_epoch_loader
from .logs import MetricsLogger, append_eval_rows, create_logger, evaluated_checkpoints, read_metrics
from .loop import LATEST_CHECKPOINT, Trainer, TrainState
from .optim import build_optimizer, build_scheduler, onecycle_reference_lr

__all__ = [
    "ConfigMismatchError",
    "LATEST_CHECKPOINT",
    "MetricsLogger",
    "ResumableSampler",
    "SeededSampleDataset",
    "TrainState",
    "Trainer",
    "append_eval_rows",
    "atomic_torch_save",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_epoch",
    "create_logger",
    "evaluated_checkpoints",
    "list_epoch_checkpoints",
    "load_checkpoint",
    "make_epoch_loader",
    "load_pretrained",
    "onecycle_reference_lr",
    "prune_checkpoints",
    "read_metrics",
]

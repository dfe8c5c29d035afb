"""Atomic, resumable training checkpoints.

A checkpoint is one ``torch.save`` dict:

``model_state``, ``optimizer_state``, ``scheduler_state``
    state dicts (the model's taken from the unwrapped module, tensors on CPU);
``epoch``
    epochs fully completed;
``global_iter``
    optimiser steps taken over the whole run (the next iteration has this 0-based index);
``rng_state``
    python ``random``, numpy and torch CPU (and CUDA when present) generator states
    (:func:`~pcdet_gciou.training.rng.capture_rng_state`);
``config``
    the merged run config as plain dicts, so a resume can refuse a different config;
``version``
    the format version below.

Files are written to a temporary file in the same directory, flushed and fsynced, then moved into place with
``os.replace`` (atomic on POSIX), so a crash never leaves a truncated ``.pth`` under the final name.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from .rundir import LATEST_CHECKPOINT, checkpoint_epoch, checkpoint_iteration

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "ConfigMismatchError",
    "RESUME_IGNORED_KEYS",
    "atomic_torch_save",
    "checkpoint_epoch",
    "config_differences",
    "find_resume_checkpoint",
    "iter_new_checkpoints",
    "list_epoch_checkpoints",
    "list_run_checkpoints",
    "load_checkpoint",
    "load_pretrained",
    "prune_checkpoints",
    "to_plain",
    "unwrap_model",
]

CHECKPOINT_VERSION = 1

#: config keys that may differ between a checkpoint and the run resuming it: where the data lives (``--data_path``
#: writes it), not what the experiment is.
RESUME_IGNORED_KEYS = ("DATA_CONFIG.DATA_PATH",)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupt, or not a training checkpoint."""


class ConfigMismatchError(CheckpointError):
    """A checkpoint was written by a run with a different config."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def to_plain(value: Any) -> Any:
    """Recursively convert dict subclasses (EasyDict), tuples and numpy scalars to plain python containers."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Iterable[str] = RESUME_IGNORED_KEYS,
    *,
    sections: Iterable[str] | None = None,
) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``"KEY: checkpoint=... current=..."`` lines.

    Args:
        saved, current: the checkpoint's and the current config.
        ignore: dotted keys (and everything below them) never compared.
        sections: when given, only these top-level keys are compared (e.g. the model and data sections, leaving
            out run options such as ``OPTIMIZATION.BATCH_SIZE_PER_GPU``).

    Example:
        >>> config_differences({"A": {"B": 1}, "C": 2}, {"A": {"B": 3}, "C": 2})
        ['A.B: checkpoint=1 current=3']
        >>> config_differences({"A": 1, "C": 2}, {"A": 1, "C": 5}, sections=["A"])
        []
    """
    ignored = tuple(ignore)
    kept = None if sections is None else set(sections)
    flat_saved, flat_current = _flatten(to_plain(saved)), _flatten(to_plain(current))
    lines = []
    for key in sorted(set(flat_saved) | set(flat_current)):
        if any(key == k or key.startswith(k + ".") for k in ignored):
            continue
        if kept is not None and key.split(".")[0] not in kept:
            continue
        old, new = flat_saved.get(key, "<missing>"), flat_current.get(key, "<missing>")
        if old != new:
            lines.append(f"{key}: checkpoint={old!r} current={new!r}")
    return lines


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``, so ``path`` is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # whatever torch.load raises, the file is unusable as a checkpoint
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{what} {path} cannot be read ({type(exc).__name__}: {reason}); it is corrupt, truncated or not a "
            f"torch checkpoint: delete it or pass another file"
        ) from exc


def load_checkpoint(path: str | os.PathLike, expected_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a training checkpoint (ours, or OpenPCDet's: a dict with ``model_state``) on CPU.

    Args:
        path: the ``.pth`` file.
        expected_config: when given, the run config that wants to resume; the checkpoint must store its config, and
            any difference (outside :data:`RESUME_IGNORED_KEYS`) raises :class:`ConfigMismatchError`.

    Raises:
        CheckpointError: missing, unreadable or corrupt file, or no ``model_state`` in it (one-line message).
        ConfigMismatchError: a different config (one line naming the first differing keys).
    """
    path = Path(path)
    ckpt = _torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise CheckpointError(
            f"{path} is not a training checkpoint (it holds no 'model_state'); pass a .pth written by "
            f"tools/train.py or OpenPCDet"
        )
    if expected_config is None:
        return ckpt
    if "config" not in ckpt:
        raise ConfigMismatchError(
            f"{path} stores no config (not written by pcdet_gciou's train.py?), so it cannot be resumed; "
            f"use --pretrained_model to load only its weights"
        )
    diffs = config_differences(ckpt["config"], expected_config)
    if diffs:
        shown = "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
        raise ConfigMismatchError(
            f"refusing to resume from {path}: it was written with a different config ({len(diffs)} differing "
            f"keys: {shown}); use a new --extra_tag for a new experiment, or --pretrained_model to load only "
            f"the weights"
        )
    return ckpt


def list_epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint_epoch_N.pth`` files in ``ckpt_dir`` sorted by ``N`` (numerically, so 10 follows 9)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if checkpoint_epoch(p) is not None]
    return sorted(found, key=checkpoint_epoch)


def list_run_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The evaluable checkpoints of a run: ``checkpoint_epoch_N.pth`` by ``N``, then ``checkpoint_iter_K.pth`` by
    ``K`` (runs ended by ``--max_iters``). ``latest_model.pth`` is a resume point only and is not listed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    iters = sorted((p for p in ckpt_dir.iterdir() if checkpoint_iteration(p) is not None), key=checkpoint_iteration)
    return list_epoch_checkpoints(ckpt_dir) + iters


def find_resume_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest (by modification time) of the run's checkpoints and ``latest_model.pth``, or None."""
    ckpt_dir = Path(ckpt_dir)
    candidates = list_run_checkpoints(ckpt_dir)
    if (ckpt_dir / LATEST_CHECKPOINT).is_file():
        candidates.append(ckpt_dir / LATEST_CHECKPOINT)
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def iter_new_checkpoints(
    ckpt_dir: Path,
    already_done: Callable[[], set[str]],
    *,
    wait: bool,
    max_waiting_s: float,
    poll_s: float,
    on_idle: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Path]:
    """Yield the :func:`list_run_checkpoints` of ``ckpt_dir`` whose names ``already_done()`` lacks, in order.

    Without ``wait`` one pass is made. With ``wait`` the folder is polled every ``poll_s`` seconds until
    ``max_waiting_s`` pass without a new checkpoint (checkpoints are written atomically, so a listed file is
    complete).
    """
    last_new = clock()
    yielded: set[str] = set()
    while True:
        done = already_done() | yielded
        pending = [p for p in list_run_checkpoints(ckpt_dir) if p.name not in done]
        for path in pending:
            yield path
            yielded.add(path.name)
            last_new = clock()
        if not wait or clock() - last_new > max_waiting_s:
            return
        if not pending:
            on_idle()
            sleep(poll_s)


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete the oldest ``checkpoint_epoch_N.pth`` files so that at most ``keep`` remain; returns the deleted."""
    if keep < 1:
        raise ValueError(f"max_ckpt_save_num must be >= 1, got {keep}")
    existing = list_epoch_checkpoints(ckpt_dir)
    doomed = existing[: max(len(existing) - keep, 0)]
    for path in doomed:
        path.unlink()
    return doomed


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load only the weights of ``path`` into ``model`` (``--pretrained_model``), keeping entries whose name and
    shape match; OpenPCDet's own checkpoints (key ``model_state``) work too.

    Returns:
        ``(loaded_keys, skipped_keys)`` where skipped lists model keys left at their initial values.
    """
    path = Path(path)
    ckpt = _torch_load(path, "pretrained model")
    weights = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path} holds no state dict (expected a dict, optionally under 'model_state')")
    target = unwrap_model(model)
    own = target.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    target.load_state_dict(matched, strict=False)
    return sorted(matched), sorted(set(own) - set(matched))

"""Atomic, resumable training checkpoints.

A checkpoint is one ``torch.save`` dict:

``model_state``, ``optimizer_state``, ``scheduler_state``
    state dicts (the model's taken from the unwrapped module, tensors on CPU);
``epoch``
    epochs fully completed;
``global_iter``
    optimiser steps taken over the whole run (the next iteration has this 0-based index);
``rng_state``
    python ``random``, numpy and torch CPU (and CUDA when present) generator states;
``config``
    the merged run config as plain dicts, so a resume can refuse a different config;
``version``
    the format version below.

Files are written to a temporary file in the same directory, flushed and fsynced, then moved into place with
``os.replace`` (atomic on POSIX), so a crash never leaves a truncated ``.pth`` under the final name.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_VERSION",
    "ConfigMismatchError",
    "atomic_torch_save",
    "capture_rng_state",
    "checkpoint_epoch",
    "config_differences",
    "list_epoch_checkpoints",
    "load_checkpoint",
    "load_pretrained",
    "prune_checkpoints",
    "restore_rng_state",
    "to_plain",
    "unwrap_model",
]

CHECKPOINT_VERSION = 1
_EPOCH_PATTERN = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")

#: config keys that may differ between a checkpoint and the run resuming it (paths, not the experiment).
RESUME_IGNORED_KEYS = ("DATA_CONFIG.DATA_PATH", "ROOT_DIR", "LOCAL_RANK", "EXP_GROUP_PATH", "TAG")


class ConfigMismatchError(ValueError):
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
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = RESUME_IGNORED_KEYS
) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``"KEY: saved=... current=..."`` lines.

    Example:
        >>> config_differences({"A": {"B": 1}, "C": 2}, {"A": {"B": 3}, "C": 2})
        ['A.B: checkpoint=1 current=3']
    """
    ignored = tuple(ignore)
    flat_saved, flat_current = _flatten(to_plain(saved)), _flatten(to_plain(current))
    lines = []
    for key in sorted(set(flat_saved) | set(flat_current)):
        if any(key == k or key.startswith(k + ".") for k in ignored):
            continue
        old, new = flat_saved.get(key, "<missing>"), flat_current.get(key, "<missing>")
        if old != new:
            lines.append(f"{key}: checkpoint={old!r} current={new!r}")
    return lines


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states (CUDA included when available)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a CUDA state is restored only when CUDA is available."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def load_checkpoint(path: str | os.PathLike, expected_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :class:`~pcdet_gciou.training.loop.Trainer` on CPU.

    Args:
        path: the ``.pth`` file.
        expected_config: when given, the run config that wants to resume; any difference from the config stored in
            the checkpoint (outside :data:`RESUME_IGNORED_KEYS`) raises :class:`ConfigMismatchError` listing the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint (expected a dict with 'model_state')")
    if expected_config is not None:
        if "config" not in ckpt:
            raise ConfigMismatchError(
                f"{path} stores no config (not written by pcdet_gciou's train.py?), so it cannot "
                f"be resumed; use --pretrained_model to load only its weights"
            )
        diffs = config_differences(ckpt["config"], expected_config)
        if diffs:
            raise ConfigMismatchError(
                f"refusing to resume from {path}: it was written with a different config "
                f"({len(diffs)} differing keys):\n  "
                + "\n  ".join(diffs[:20])
                + "\nUse a new --extra_tag for a new experiment, or --pretrained_model to load only the weights."
            )
    return ckpt


def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The ``N`` of ``checkpoint_epoch_N.pth``, or None for any other file name."""
    match = _EPOCH_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint_epoch_N.pth`` files in ``ckpt_dir`` sorted by ``N`` (numerically, so 10 follows 9)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if checkpoint_epoch(p) is not None]
    return sorted(found, key=checkpoint_epoch)


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
    if not path.is_file():
        raise FileNotFoundError(f"pretrained model not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    weights = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(weights, Mapping):
        raise ValueError(f"{path} holds no state dict (expected a dict, optionally under 'model_state')")
    target = unwrap_model(model)
    own = target.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    target.load_state_dict(matched, strict=False)
    return sorted(matched), sorted(set(own) - set(matched))

"""Typed config sections the engine reads: ``OPTIMIZATION`` and the run options.

Each section is parsed once, at start, into a frozen dataclass whose fields hold the defaults; nothing downstream
reads the raw mapping. An unknown key is a ValueError naming it (a misspelt key would otherwise be silently
ignored), and so is a key that the chosen optimiser needs but the section lacks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["OPTIMIZERS", "OptimizationOptions", "RunOptions", "parse_section"]

OPTIMIZERS = ("adam_onecycle", "adam", "sgd")


def parse_section(cls, section: Mapping[str, Any] | Any, name: str):
    """``cls(**section)`` for a dataclass ``cls``, with a ValueError naming unknown or missing keys of ``name``."""
    if isinstance(section, cls):
        return section
    if not isinstance(section, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(section).__name__}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {name}; known keys: {sorted(known)}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [key for key in required if key not in section]
    if missing:
        raise ValueError(f"{name} lacks required key(s) {missing}")
    return cls(**dict(section))


def _floats(values: Any, count: int, key: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise ValueError(f"OPTIMIZATION.{key} must hold {count} numbers, got {values!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class OptimizationOptions:
    """OpenPCDet's ``OPTIMIZATION`` section (see :mod:`pcdet_gciou.training.optim` for what each key does).

    ``MOMENTUM`` (sgd) and ``LR_DECAY``/``DECAY_STEP_LIST`` (adam, sgd) have no default: the optimiser that uses
    them requires them. ``LOSS_SCALE_FP16`` is accepted for compatibility with stock configs and unused (this
    engine trains in float32, as OpenPCDet does without ``--use_amp``).

    Example:
        >>> opts = OptimizationOptions.parse({"OPTIMIZER": "adam_onecycle", "LR": 0.003,
        ...                                   "BATCH_SIZE_PER_GPU": 4, "NUM_EPOCHS": 80})
        >>> opts.GRAD_NORM_CLIP, opts.DIV_FACTOR, opts.MOMS
        (10.0, 10.0, (0.95, 0.85))
        >>> OptimizationOptions.parse({"OPTIMIZER": "adam", "LR": 0.1, "BATCH_SIZE_PER_GPU": 4, "NUM_EPOCHS": 1,
        ...                            "LR_DECY": 0.1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown key(s) ['LR_DECY'] in OPTIMIZATION; known keys: [...]
    """

    OPTIMIZER: str
    LR: float
    BATCH_SIZE_PER_GPU: int
    NUM_EPOCHS: int
    WEIGHT_DECAY: float = 0.0
    GRAD_NORM_CLIP: float = 10.0
    DIV_FACTOR: float = 10.0
    PCT_START: float = 0.4
    MOMS: tuple = (0.95, 0.85)
    BETAS: tuple = (0.9, 0.99)
    MOMENTUM: float | None = None
    LR_DECAY: float | None = None
    DECAY_STEP_LIST: tuple | None = None
    LR_CLIP: float = 0.0
    LR_WARMUP: bool = False
    WARMUP_EPOCH: float = 1.0
    LOSS_SCALE_FP16: float | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, section: Mapping[str, Any] | OptimizationOptions) -> OptimizationOptions:
        """From the raw ``OPTIMIZATION`` mapping (an instance passes through)."""
        return parse_section(cls, section, "OPTIMIZATION")

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise types once, here
        if self.OPTIMIZER not in OPTIMIZERS:
            raise ValueError(f"OPTIMIZATION.OPTIMIZER must be one of {OPTIMIZERS}, got {self.OPTIMIZER!r}")
        for key in ("LR", "WEIGHT_DECAY", "GRAD_NORM_CLIP", "DIV_FACTOR", "PCT_START", "LR_CLIP", "WARMUP_EPOCH"):
            put(self, key, float(getattr(self, key)))
        for key in ("BATCH_SIZE_PER_GPU", "NUM_EPOCHS"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"OPTIMIZATION.{key} must be >= 1, got {getattr(self, key)!r}")
            put(self, key, int(getattr(self, key)))
        put(self, "MOMS", _floats(self.MOMS, 2, "MOMS"))
        put(self, "BETAS", _floats(self.BETAS, 2, "BETAS"))
        if self.OPTIMIZER == "adam_onecycle" and not 0.0 < self.PCT_START < 1.0:
            raise ValueError(f"OPTIMIZATION.PCT_START must lie in (0, 1), got {self.PCT_START}")
        if self.OPTIMIZER == "sgd" and self.MOMENTUM is None:
            raise ValueError("OPTIMIZATION.MOMENTUM is required for OPTIMIZER='sgd'")
        if self.OPTIMIZER in ("adam", "sgd"):
            for key in ("LR_DECAY", "DECAY_STEP_LIST"):
                if getattr(self, key) is None:
                    raise ValueError(f"OPTIMIZATION.{key} is required for OPTIMIZER={self.OPTIMIZER!r}")
            put(self, "DECAY_STEP_LIST", tuple(int(e) for e in self.DECAY_STEP_LIST))

    def with_run_overrides(self, *, batch_size_per_gpu: int | None, epochs: int | None) -> OptimizationOptions:
        """A copy with ``--batch_size``/``--epochs`` applied (None keeps the config's value)."""
        changes = {}
        if batch_size_per_gpu is not None:
            changes["BATCH_SIZE_PER_GPU"] = batch_size_per_gpu
        if epochs is not None:
            changes["NUM_EPOCHS"] = epochs
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunOptions:
    """How one training run saves, stops and reports (command-line options, not part of the experiment).

    Attributes:
        ckpt_save_interval: write ``checkpoint_epoch_N`` every this many epochs (and always after the last).
        max_ckpt_save_num: keep at most this many epoch checkpoints.
        max_iters: end the run after this many steps of the whole run (the LR schedule still spans every epoch),
            writing ``checkpoint_iter_<K>.pth``; a later run with a larger value continues exactly.
        ckpt_save_time_interval: also write ``latest_model.pth`` every this many seconds (0 disables).
        eval_interval: evaluate every this many epochs and after the run's last checkpoint (0 disables).
        progress: show a tqdm bar on rank 0.
        handle_signals: on SIGINT/SIGTERM finish the step, save ``latest_model.pth`` and raise
            :class:`~pcdet_gciou.training.loop.TrainingInterrupted` (main thread only).
    """

    ckpt_save_interval: int = 1
    max_ckpt_save_num: int = 30
    max_iters: int | None = None
    ckpt_save_time_interval: float = 300.0
    eval_interval: int = 0
    progress: bool = True
    handle_signals: bool = True

    def __post_init__(self) -> None:
        if self.ckpt_save_interval < 1:
            raise ValueError(f"ckpt_save_interval must be >= 1, got {self.ckpt_save_interval}")
        if self.max_ckpt_save_num < 1:
            raise ValueError(f"max_ckpt_save_num must be >= 1, got {self.max_ckpt_save_num}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"max_iters must be >= 1 or None, got {self.max_iters}")
        if self.eval_interval < 0 or self.ckpt_save_time_interval < 0:
            raise ValueError(
                f"eval_interval and ckpt_save_time_interval must be >= 0, got {self.eval_interval} "
                f"and {self.ckpt_save_time_interval}"
            )

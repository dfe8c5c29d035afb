"""Optimisers and per-iteration LR schedules that reproduce OpenPCDet's ``OPTIMIZATION`` section.

OpenPCDet keeps its optimiser code in ``tools/`` (not in the installed ``pcdet`` package), so we rebuild it from
torch parts. The schedules are *per iteration*: the scheduler is stepped once after every optimiser step, so
iteration ``i`` (0-based, counted over the whole run) trains with ``lr(i)``, exactly as in OpenPCDet, where
``lr_scheduler.step(accumulated_iter)`` runs before iteration ``accumulated_iter``.

Supported ``OPTIMIZATION.OPTIMIZER`` values:

``adam_onecycle``
    OpenPCDet wraps ``torch.optim.Adam`` (betas ``BETAS``, default (0.9, 0.99)) in fastai's ``OptimWrapper`` with
    ``true_wd=True, bn_wd=True``: every parameter, BatchNorm and biases included, is multiplied by
    ``1 - lr * WEIGHT_DECAY`` before the Adam step. That is ``torch.optim.AdamW`` with one parameter group.
    The LR follows fastai's one-cycle (``learning_schedules_fastai.OneCycle``): with ``T`` total iterations and
    ``a = int(T * PCT_START)``,

    .. math::
        lr(i) = \\cos\\_anneal(LR / DIV\\_FACTOR \\to LR,\\ i / a)                 \\quad i < a \\\\
        lr(i) = \\cos\\_anneal(LR \\to LR / DIV\\_FACTOR / 10^4,\\ (i - a) / (T - a)) \\quad i \\ge a

    with ``cos_anneal(s -> e, p) = e + (s - e) (1 + cos(pi p)) / 2``; beta1 follows ``MOMS`` (0.95 -> 0.85 -> 0.95)
    over the same two phases. ``torch.optim.lr_scheduler.OneCycleLR`` produces exactly these values when given
    ``total_steps = T + 1`` and ``pct_start = (a + 1) / (T + 1)`` (its phases end *at* a step index, fastai's
    phases end one step earlier), ``final_div_factor = 1e4`` and ``anneal_strategy="cos"``.
    Where fastai divides by zero (``a == 0``, runs shorter than ``1 / PCT_START`` iterations) we use ``a = 1``.

``adam`` / ``sgd``
    ``torch.optim.Adam`` (coupled L2 ``WEIGHT_DECAY``) or SGD with ``MOMENTUM``; LR multiplied by ``LR_DECAY`` at
    every epoch in ``DECAY_STEP_LIST`` (converted to iterations), never below ``LR_CLIP``. With ``LR_WARMUP`` the
    first ``WARMUP_EPOCH`` epochs rise along a cosine from ``LR / DIV_FACTOR`` to the decayed LR, as OpenPCDet's
    ``CosineWarmupLR``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

__all__ = ["build_optimizer", "build_scheduler", "onecycle_reference_lr", "OPTIMIZERS"]

OPTIMIZERS = ("adam_onecycle", "adam", "sgd")


def _require(optim_cfg: Mapping[str, Any], key: str) -> Any:
    if key not in optim_cfg:
        raise ValueError(f"OPTIMIZATION.{key} is required for OPTIMIZER={optim_cfg.get('OPTIMIZER')!r}")
    return optim_cfg[key]


def build_optimizer(model: torch.nn.Module, optim_cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build the optimiser named by ``optim_cfg["OPTIMIZER"]`` over the trainable parameters of ``model``.

    Args:
        model: the network (unwrapped or DDP-wrapped).
        optim_cfg: the ``OPTIMIZATION`` config section (``OPTIMIZER``, ``LR``, ``WEIGHT_DECAY``, ...).

    Example:
        >>> opt = build_optimizer(torch.nn.Linear(2, 1), {"OPTIMIZER": "adam_onecycle", "LR": 0.003,
        ...                                               "WEIGHT_DECAY": 0.01, "MOMS": [0.95, 0.85]})
        >>> type(opt).__name__
        'AdamW'
    """
    name = optim_cfg.get("OPTIMIZER")
    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(_require(optim_cfg, "LR"))
    weight_decay = float(optim_cfg.get("WEIGHT_DECAY", 0.0))
    if name == "adam_onecycle":
        betas = tuple(float(b) for b in optim_cfg.get("BETAS", (0.9, 0.99)))
        if len(betas) != 2:
            raise ValueError(f"OPTIMIZATION.BETAS must hold two values, got {optim_cfg.get('BETAS')!r}")
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        momentum = float(_require(optim_cfg, "MOMENTUM"))
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"OPTIMIZATION.OPTIMIZER must be one of {OPTIMIZERS}, got {name!r}")


def _onecycle_split(total_iters: int, pct_start: float) -> int:
    return min(max(int(total_iters * pct_start), 1), total_iters)


def onecycle_reference_lr(step: int, total_iters: int, lr_max: float, div_factor: float, pct_start: float) -> float:
    """fastai/OpenPCDet one-cycle LR at 0-based iteration ``step`` in closed form (used to document and test).

    Example:
        >>> round(onecycle_reference_lr(0, 100, 0.003, 10.0, 0.4), 8)
        0.0003
    """
    split = _onecycle_split(total_iters, pct_start)
    low = lr_max / div_factor

    def anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    if step < split:
        return anneal(low, lr_max, step / split)
    return anneal(lr_max, low / 1e4, (step - split) / (total_iters - split))


def _step_decay_lambda(optim_cfg: Mapping[str, Any], iters_per_epoch: int):
    lr = float(_require(optim_cfg, "LR"))
    decay = float(_require(optim_cfg, "LR_DECAY"))
    clip = float(optim_cfg.get("LR_CLIP", 0.0))
    decay_iters = [int(e) * iters_per_epoch for e in _require(optim_cfg, "DECAY_STEP_LIST")]
    warmup_iters = 0
    if optim_cfg.get("LR_WARMUP", False):
        warmup_iters = int(float(_require(optim_cfg, "WARMUP_EPOCH")) * iters_per_epoch)
    warmup_floor = 1.0 / float(optim_cfg.get("DIV_FACTOR", 10.0))

    def factor(it: int) -> float:
        scale = 1.0
        for boundary in decay_iters:
            if it >= boundary:
                scale *= decay
        scale = max(scale, clip / lr)
        if it < warmup_iters:
            rise = (1 - math.cos(math.pi * it / warmup_iters)) / 2
            scale = warmup_floor + (scale - warmup_floor) * rise
        return scale

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    optim_cfg: Mapping[str, Any],
    *,
    total_iters: int,
    iters_per_epoch: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration LR scheduler for ``optimizer``; call ``.step()`` once after every ``optimizer.step()``.

    Args:
        optimizer: from :func:`build_optimizer` with the same ``optim_cfg``.
        optim_cfg: the ``OPTIMIZATION`` config section.
        total_iters: iterations in the whole run (``epochs * iters_per_epoch``).
        iters_per_epoch: iterations per epoch, converts epoch-based settings to iterations.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> cfg = {"OPTIMIZER": "adam_onecycle", "LR": 0.003, "WEIGHT_DECAY": 0.01, "MOMS": [0.95, 0.85],
        ...        "DIV_FACTOR": 10, "PCT_START": 0.4}
        >>> sched = build_scheduler(build_optimizer(model, cfg), cfg, total_iters=100, iters_per_epoch=10)
        >>> round(sched.get_last_lr()[0], 8)
        0.0003
    """
    if total_iters < 1 or iters_per_epoch < 1:
        raise ValueError(f"total_iters and iters_per_epoch must be >= 1, got {total_iters} and {iters_per_epoch}")
    name = optim_cfg.get("OPTIMIZER")
    if name == "adam_onecycle":
        lr = float(_require(optim_cfg, "LR"))
        moms = [float(m) for m in _require(optim_cfg, "MOMS")]
        div_factor = float(optim_cfg.get("DIV_FACTOR", 10.0))
        pct_start = float(optim_cfg.get("PCT_START", 0.4))
        if len(moms) != 2:
            raise ValueError(f"OPTIMIZATION.MOMS must hold two values (max, base), got {moms!r}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"OPTIMIZATION.PCT_START must lie in (0, 1), got {pct_start}")
        split = _onecycle_split(total_iters, pct_start)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_iters + 1,
            pct_start=(split + 1) / (total_iters + 1),
            anneal_strategy="cos",
            cycle_momentum=True,
            base_momentum=moms[1],
            max_momentum=moms[0],
            div_factor=div_factor,
            final_div_factor=1e4,
        )
    if name in ("adam", "sgd"):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _step_decay_lambda(optim_cfg, iters_per_epoch))
    raise ValueError(f"OPTIMIZATION.OPTIMIZER must be one of {OPTIMIZERS}, got {name!r}")

"""Optimisers and per-iteration LR schedules that reproduce OpenPCDet's ``OPTIMIZATION`` section.

OpenPCDet keeps its optimiser code in ``tools/`` (not in the installed ``pcdet`` package), so we rebuild it from
torch parts. The schedules are *per iteration*: the scheduler is stepped once after every optimiser step, so
iteration ``i`` (0-based, counted over the whole run) trains with ``lr(i)``, exactly as in OpenPCDet, where
``lr_scheduler.step(accumulated_iter)`` runs before iteration ``accumulated_iter``.

The section is read through :class:`~pcdet_gciou.training.options.OptimizationOptions`, whose fields hold the
defaults. Supported ``OPTIMIZATION.OPTIMIZER`` values:

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

from .options import OPTIMIZERS, OptimizationOptions

__all__ = ["build_optimizer", "build_scheduler", "onecycle_reference_lr", "OPTIMIZERS"]


def build_optimizer(
    model: torch.nn.Module, optim_cfg: Mapping[str, Any] | OptimizationOptions
) -> torch.optim.Optimizer:
    """Build the optimiser named by ``OPTIMIZER`` over the trainable parameters of ``model``.

    Args:
        model: the network (unwrapped or DDP-wrapped).
        optim_cfg: the ``OPTIMIZATION`` section, raw or parsed (:class:`OptimizationOptions`).

    Example:
        >>> opt = build_optimizer(torch.nn.Linear(2, 1), {"OPTIMIZER": "adam_onecycle", "LR": 0.003,
        ...                       "WEIGHT_DECAY": 0.01, "BATCH_SIZE_PER_GPU": 4, "NUM_EPOCHS": 80})
        >>> type(opt).__name__
        'AdamW'
    """
    opts = OptimizationOptions.parse(optim_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.OPTIMIZER == "adam_onecycle":
        return torch.optim.AdamW(params, lr=opts.LR, betas=opts.BETAS, weight_decay=opts.WEIGHT_DECAY)
    if opts.OPTIMIZER == "adam":
        return torch.optim.Adam(params, lr=opts.LR, weight_decay=opts.WEIGHT_DECAY)
    return torch.optim.SGD(params, lr=opts.LR, weight_decay=opts.WEIGHT_DECAY, momentum=float(opts.MOMENTUM))


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


def _step_decay_lambda(opts: OptimizationOptions, iters_per_epoch: int):
    decay_iters = [epoch * iters_per_epoch for epoch in opts.DECAY_STEP_LIST]
    warmup_iters = int(opts.WARMUP_EPOCH * iters_per_epoch) if opts.LR_WARMUP else 0
    warmup_floor = 1.0 / opts.DIV_FACTOR

    def factor(it: int) -> float:
        scale = 1.0
        for boundary in decay_iters:
            if it >= boundary:
                scale *= opts.LR_DECAY
        scale = max(scale, opts.LR_CLIP / opts.LR)
        if it < warmup_iters:
            rise = (1 - math.cos(math.pi * it / warmup_iters)) / 2
            scale = warmup_floor + (scale - warmup_floor) * rise
        return scale

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    optim_cfg: Mapping[str, Any] | OptimizationOptions,
    *,
    total_iters: int,
    iters_per_epoch: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration LR scheduler for ``optimizer``; call ``.step()`` once after every ``optimizer.step()``.

    Args:
        optimizer: from :func:`build_optimizer` with the same ``optim_cfg``.
        optim_cfg: the ``OPTIMIZATION`` section, raw or parsed.
        total_iters: iterations in the whole run (``epochs * iters_per_epoch``).
        iters_per_epoch: iterations per epoch, converts epoch-based settings to iterations.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> cfg = {"OPTIMIZER": "adam_onecycle", "LR": 0.003, "WEIGHT_DECAY": 0.01, "BATCH_SIZE_PER_GPU": 4,
        ...        "NUM_EPOCHS": 10}
        >>> sched = build_scheduler(build_optimizer(model, cfg), cfg, total_iters=100, iters_per_epoch=10)
        >>> round(sched.get_last_lr()[0], 8)
        0.0003
    """
    if total_iters < 1 or iters_per_epoch < 1:
        raise ValueError(f"total_iters and iters_per_epoch must be >= 1, got {total_iters} and {iters_per_epoch}")
    opts = OptimizationOptions.parse(optim_cfg)
    if opts.OPTIMIZER != "adam_onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _step_decay_lambda(opts, iters_per_epoch))
    split = _onecycle_split(total_iters, opts.PCT_START)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=opts.LR,
        total_steps=total_iters + 1,
        pct_start=(split + 1) / (total_iters + 1),
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=opts.MOMS[1],
        max_momentum=opts.MOMS[0],
        div_factor=opts.DIV_FACTOR,
        final_div_factor=1e4,
    )

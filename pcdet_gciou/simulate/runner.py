"""The optimisation loop: every loss regresses its own copy of the same population for a fixed number of steps.

Under the ``residual`` and ``direct`` parametrisations each box is an independent problem with its own free
parameters (like the paper's toy, which regresses preset anchors directly); under ``shared_head`` the boxes of a
scenario share one linear head. All losses of a scenario are optimised in one batched tensor ``(L, N, 7)`` (or
``(L, D, 7)``): the summed loss has block-diagonal gradients, and Adam and SGD act per element, so this is exactly L
separate runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from pcdet_gciou.geometry import heading_error, rotated_iou_3d
from pcdet_gciou.simulate.objectives import LOSS_SPECS, build_objective
from pcdet_gciou.simulate.parametrisation import check_param, to_boxes, to_params
from pcdet_gciou.simulate.scenarios import SCENARIOS, Problem, Scenario

METRICS: Tuple[str, ...] = ("iou", "centre_error", "centre_error_rel", "size_error_rel", "angle_error")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class ScenarioResult:
    """History of one scenario: ``history[t, l, n, m]`` is metric ``METRICS[m]`` of box ``n`` under loss ``l``
    after ``t`` optimiser steps (``t = 0`` is the initial prediction)."""

    scenario: Scenario
    losses: Tuple[str, ...]
    problem: Problem
    history: torch.Tensor
    param: str
    optimizer: str
    lr: float


def box_metrics(boxes: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` metrics of ``(..., 7)`` boxes against ``(..., 7)`` GT, in the order of :data:`METRICS`.

    Centre error in metres and relative to the GT's BEV diagonal; size error = mean of ``|s_pred / s_gt - 1|``
    over (dx, dy, dz); angle error in radians, folded into ``[0, pi/2]``.
    """
    iou = rotated_iou_3d(boxes, gt)
    centre = torch.linalg.vector_norm(boxes[..., :3] - gt[..., :3], dim=-1)
    diagonal = torch.sqrt(gt[..., 3] ** 2 + gt[..., 4] ** 2)
    size = (boxes[..., 3:6] / gt[..., 3:6] - 1.0).abs().mean(dim=-1)
    angle = heading_error(boxes[..., 6], gt[..., 6])
    return torch.stack((iou, centre, centre / diagonal, size, angle), dim=-1)


def scenario_seed(seed: int, scenario: Scenario) -> int:
    """Each scenario's population depends on the seed and the scenario only, not on which others run."""
    return seed * 1009 + list(SCENARIOS).index(scenario.key)


def _settings(scenario: Scenario, param: Optional[str], optimizer: Optional[str], lr: Optional[float]):
    param = param or scenario.default_param
    optimizer = optimizer or scenario.default_optimizer
    lr = scenario.default_lr if lr is None else lr
    check_param(param)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return param, optimizer, float(lr)


def run_simulation(
    scenarios: Sequence[Scenario],
    losses: Sequence[str],
    *,
    steps: int,
    boxes_per_group: int,
    seed: int,
    device: Optional[torch.device] = None,
    param: Optional[str] = None,
    optimizer: Optional[str] = None,
    lr: Optional[float] = None,
    progress=None,
) -> List[ScenarioResult]:
    """Regress every scenario's population with every loss in ``losses`` for ``steps`` steps.

    ``param``, ``optimizer`` and ``lr`` default to each scenario's own (the same for all losses of a scenario).
    Scenarios keep their own parameters and optimisers; they share the loss calls only, for speed (every
    loss is per box, so concatenating populations changes nothing). ``progress`` is an optional tqdm-like
    object whose ``update(1)`` is called once per step.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(boxes_per_group, int) or isinstance(boxes_per_group, bool) or boxes_per_group < 1:
        raise ValueError(f"boxes_per_group must be a positive integer, got {boxes_per_group!r}")
    if not scenarios:
        raise ValueError("scenarios must not be empty")
    for scenario in scenarios:
        if not isinstance(scenario, Scenario):
            raise TypeError(f"scenarios must be Scenario objects (see resolve_scenario), got {scenario!r}")
    if not losses:
        raise ValueError("losses must not be empty")
    device = torch.device("cpu") if device is None else device
    # a loss that normalises over its batch (rescale_normalize) sees one scenario at a time: a scenario is a batch
    objectives = [(build_objective(name), bool(LOSS_SPECS[name].kwargs.get("rescale_normalize"))) for name in losses]
    n_losses = len(losses)

    settings, problems, anchors, features, gts, params, opts = [], [], [], [], [], [], []
    for scenario in scenarios:
        s_param, s_opt, s_lr = _settings(scenario, param, optimizer, lr)
        problem = scenario.make(boxes_per_group, torch.Generator().manual_seed(scenario_seed(seed, scenario)))
        anchor = problem.anchors.to(device=device, dtype=torch.float32)
        feats = None if problem.features is None else problem.features.to(device=device, dtype=torch.float32)
        init = to_params(problem.init_boxes.to(device=device, dtype=torch.float32), anchor, s_param, feats)
        p = init.unsqueeze(0).repeat(n_losses, 1, 1).requires_grad_(True)
        settings.append((s_param, s_opt, s_lr))
        features.append(feats)
        problems.append(problem)
        anchors.append(anchor)
        gts.append(problem.gt.to(device=device, dtype=torch.float32))
        params.append(p)
        opts.append(torch.optim.Adam([p], lr=s_lr) if s_opt == "adam" else torch.optim.SGD([p], lr=s_lr))
    sizes = [gt.shape[0] for gt in gts]
    gt_all, anchors_all = torch.cat(gts), torch.cat(anchors)

    history = torch.empty(steps + 1, n_losses, gt_all.shape[0], len(METRICS), dtype=torch.float32, device=device)
    for step in range(steps + 1):
        boxes = torch.cat([to_boxes(p, a, s[0], f) for p, a, s, f in zip(params, anchors, settings, features)], dim=1)
        with torch.no_grad():
            history[step] = box_metrics(boxes.detach(), gt_all.expand_as(boxes))
        if step == steps:
            break
        per_box = torch.stack(
            [_per_box(fn, coupled, boxes[k], gt_all, anchors_all, sizes) for k, (fn, coupled) in enumerate(objectives)]
        )
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        per_box.sum().backward()
        _check_finite(per_box, params, losses, scenarios, sizes, step)
        for opt in opts:
            opt.step()
        if progress is not None:
            progress.update(1)

    results = []
    for scenario, problem, (s_param, s_opt, s_lr), part in zip(
        scenarios, problems, settings, history.cpu().split(sizes, dim=2)
    ):
        results.append(ScenarioResult(scenario, tuple(losses), problem, part.contiguous(), s_param, s_opt, s_lr))
    return results


def _per_box(fn, batch_coupled: bool, boxes, gt, anchors, sizes) -> torch.Tensor:
    if not batch_coupled:
        return fn(boxes, gt, anchors)
    parts = zip(boxes.split(sizes), gt.split(sizes), anchors.split(sizes))
    return torch.cat([fn(b, g, a) for b, g, a in parts])


def _check_finite(per_box, params, losses, scenarios, sizes, step) -> None:
    if torch.isfinite(per_box).all() and all(torch.isfinite(p.grad).all() for p in params):
        return
    bad = []
    for scenario, loss_part, p in zip(scenarios, per_box.split(sizes, dim=1), params):
        for k, loss in enumerate(losses):
            if not (torch.isfinite(loss_part[k]).all() and torch.isfinite(p.grad[k]).all()):
                bad.append(f"{scenario.key}/{loss}")
    raise FloatingPointError(f"non-finite loss or gradient at step {step} for {bad}")

"""Shared option checks, input preparation and reductions for the box losses."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..geometry import check_box_pair, detach_identical_pairs, promote_box_pair

REDUCTIONS = ("none", "mean", "sum")

#: Stand-in for zero-weight boxes before any geometry runs: a unit cube, whatever the masked values were.
_UNIT_BOX = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)


def check_loss_options(reduction: object, eps: object) -> None:
    """The options every loss takes; called when a loss module is built and on every functional call."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")


def check_loss_inputs(
    pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor], reduction: str, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate the inputs and prepare the pair for the geometry.

    - pred and target are promoted to their common geometry dtype, as the geometry does (half -> float32);
    - zero-weight boxes are replaced by a unit box before any geometry, so whatever their values (NaN, Inf) they
      add exactly 0 to the loss and exactly 0 to their gradient rows (``torch.where``, not a multiplication);
    Identical pairs are handled in :func:`reduce_loss`.
    """
    check_box_pair(pred, target, broadcast=False)
    check_loss_options(reduction, eps)
    pred, target = promote_box_pair(pred, target)
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(
                f"weights must be a torch.Tensor of shape {tuple(pred.shape[:-1])}, got {type(weights).__name__}"
            )
        if weights.shape != pred.shape[:-1]:
            raise ValueError(
                f"weights must have shape {tuple(pred.shape[:-1])} (pred without its last dim), "
                f"got {tuple(weights.shape)}"
            )
        if weights.device != pred.device:
            raise ValueError(f"weights must be on {pred.device}, got {weights.device}")
        active = (weights != 0)[..., None]
        unit = torch.tensor(_UNIT_BOX, dtype=pred.dtype, device=pred.device)
        pred, target = torch.where(active, pred, unit), torch.where(active, target, unit)
    return pred, target


def reduce_loss(
    loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor], reduction: str
) -> torch.Tensor:
    """Cut identical pairs from the graph, apply weights and the reduction.

    Identical pairs (:func:`pcdet_gciou.geometry.detach_identical_pairs`): every loss here is at its minimum
    there, and 0 is the subgradient chosen.

    - ``"none"``: per-box ``weights * loss``, shape ``pred.shape[:-1]``;
    - ``"sum"``: the sum of that;
    - ``"mean"``: the weighted mean ``sum(w * L) / sum(w)`` (plain mean without weights).

    ``pred`` and ``target`` are the prepared pair of :func:`check_loss_inputs`. Empty input or all-zero weights
    give a zero that is still connected to ``pred``'s graph, so DDP never sees unused parameters. Zero-weight boxes
    contribute exactly 0, whatever their loss.
    """
    loss = detach_identical_pairs(loss, pred, target)
    if weights is not None:
        loss = torch.where(weights != 0, loss * weights.to(loss.dtype), torch.zeros_like(loss))
    if reduction == "none":
        return loss
    zero_connected = pred.sum() * 0  # keeps the graph when there is nothing to reduce
    if loss.numel() == 0:
        return zero_connected.to(loss.dtype)
    total = loss.sum() + zero_connected.to(loss.dtype)
    if reduction == "sum":
        return total
    if weights is None:
        return total / loss.numel()
    denominator = weights.to(loss.dtype).sum()
    return total / torch.where(denominator != 0, denominator, torch.ones_like(denominator))

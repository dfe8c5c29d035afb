"""Shared input checks and reductions for the box losses."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..geometry.boxes import _float_for_geometry, check_box_pair

REDUCTIONS = ("none", "mean", "sum")


def check_loss_inputs(
    pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor], reduction: str, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(pred, target, weights, reduction, eps)``; return pred/target in a dtype fit for geometry."""
    check_box_pair(pred, target, broadcast=False)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(
                f"weights must be a torch.Tensor of shape {tuple(pred.shape[:-1])}, got {type(weights).__name__}"
            )
        if weights.shape != pred.shape[:-1]:
            raise ValueError(
                f"weights must have shape {tuple(pred.shape[:-1])} (pred without its last dim), got {tuple(weights.shape)}"
            )
        if weights.device != pred.device:
            raise ValueError(f"weights must be on {pred.device}, got {weights.device}")
    return _float_for_geometry(pred), _float_for_geometry(target).to(_float_for_geometry(pred).dtype)


def reduce_loss(
    loss: torch.Tensor, pred: torch.Tensor, weights: Optional[torch.Tensor], reduction: str
) -> torch.Tensor:
    """Apply weights and the reduction.

    - ``"none"``: per-box ``weights * loss``, shape ``pred.shape[:-1]``;
    - ``"sum"``: the sum of that;
    - ``"mean"``: the weighted mean ``sum(w * L) / sum(w)`` (plain mean without weights).

    Empty input or all-zero weights give a zero that is still connected to ``pred``'s graph, so DDP never
    sees unused parameters. Zero-weight boxes contribute exactly 0, whatever their loss.
    """
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

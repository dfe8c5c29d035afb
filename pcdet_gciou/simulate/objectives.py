"""The losses the simulation compares, each a callable ``(pred_boxes, gt_boxes, anchors) -> (N,)`` per-box loss.

Every IoU-type loss is built with :func:`pcdet_gciou.losses.build_loss` and sees decoded boxes in metres, the
paper's reading (the official code instead evaluates the IoU in the anchor-normalised residual space).
The Smooth-L1 baseline is the simulation's own: OpenPCDet's localisation loss written from its formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

from pcdet_gciou.simulate.parametrisation import encode_residual

# OpenPCDet's WeightedSmoothL1Loss default for the anchor heads' box regression.
SMOOTH_L1_BETA = 1.0 / 9.0


def smooth_l1_residual_loss(
    pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor, *, beta: float = SMOOTH_L1_BETA
) -> torch.Tensor:
    """Smooth-L1 on box-coder residuals, summed over the 7 codes; per box ``(N,)``.

    Args:
        pred_boxes: ``(N, 7)`` predicted boxes.
        gt_boxes: ``(N, 7)`` ground-truth boxes.
        anchors: ``(N, 7)`` anchors both are encoded against.
        beta: width of the quadratic zone.

    The heading residuals are compared through their sine, as OpenPCDet's ``add_sin_difference`` does:
    ``sin(a)cos(b) - cos(a)sin(b) = sin(a - b)``, so a prediction off by pi costs nothing (the direction
    classifier handles that) and the loss is smooth at zero error.

    .. math::

        \\ell(x) = \\begin{cases} 0.5 x^2 / \\beta & |x| < \\beta \\\\ |x| - 0.5\\beta & \\text{otherwise}\\end{cases}
    """
    pred_res = encode_residual(pred_boxes, anchors)
    gt_res = encode_residual(gt_boxes, anchors)
    diff = torch.cat((pred_res[..., :6] - gt_res[..., :6], torch.sin(pred_res[..., 6:] - gt_res[..., 6:])), dim=-1)
    abs_diff = diff.abs()
    per_code = torch.where(abs_diff < beta, 0.5 * abs_diff**2 / beta, abs_diff - 0.5 * beta)
    return per_code.sum(dim=-1)


@dataclass(frozen=True)
class LossSpec:
    """One compared loss: how it is built, and its label in tables and plots."""

    label: str
    build_name: str  # name for build_loss, or "smooth_l1"
    kwargs: Dict[str, object] = field(default_factory=dict)


LOSS_SPECS: Dict[str, LossSpec] = {
    "smooth_l1": LossSpec("Smooth-L1 (residuals)", "smooth_l1"),
    "iou": LossSpec("1 - IoU", "iou"),
    "log_iou": LossSpec("-ln IoU", "log_iou"),
    "giou": LossSpec("GIoU", "giou"),
    "diou": LossSpec("DIoU", "diou"),
    "odiou": LossSpec("ODIoU", "odiou"),
    "rdiou": LossSpec("RDIoU", "rdiou"),
    "gciou_f": LossSpec("GCIoU f only", "gciou", {"g": None}),
    "gciou_g": LossSpec("GCIoU g only", "gciou", {"alpha": None}),
    "gciou_fg": LossSpec("GCIoU f+g", "gciou", {}),
    "gciou_fg_gr": LossSpec("GCIoU f+g+GR", "gciou", {"grad_rescale": True}),
    "gciou_fg_exp": LossSpec("GCIoU f+g(e^D-1)", "gciou", {"g": "exp"}),
}
# Every loss by default: GCIoU's variants use g = tan (Eq. 17, the official code) except gciou_fg_exp, which
# uses g = e^D - 1 (Table 3's best, and what the shipped *_gciou.yaml configs use).
DEFAULT_LOSSES: Tuple[str, ...] = tuple(LOSS_SPECS)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def build_objective(name: str) -> LossFn:
    """The per-box loss ``(pred_boxes, gt_boxes, anchors) -> (N,)`` registered as ``name`` in :data:`LOSS_SPECS`."""
    if name not in LOSS_SPECS:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSS_SPECS)}")
    spec = LOSS_SPECS[name]
    if spec.build_name == "smooth_l1":
        return smooth_l1_residual_loss
    from pcdet_gciou.losses import build_loss

    module = build_loss(spec.build_name, **spec.kwargs)

    def objective(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return module(pred_boxes, gt_boxes)

    return objective

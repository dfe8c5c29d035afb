"""The IoU-family baselines of the GCIoU paper's Tables 1 and 5, on paired rotated 3D boxes.

All take ``(pred, target, weights=None, *, reduction="none", eps=1e-6)`` with ``(..., 7)`` boxes
``[x, y, z, dx, dy, dz, heading]`` and return the per-box loss for ``reduction="none"``.

==============  ===========================================================  ==================================
name            loss                                                         reference
==============  ===========================================================  ==================================
``iou``         ``1 - IoU``                                                  Zhou et al., 3DV 2019
``log_iou``     ``-ln(IoU + eps)``                                           Zhou et al., 3DV 2019
``giou``        ``1 - IoU + (C - U) / C``                                    Rezatofighi et al., CVPR 2019
``diou``        ``1 - IoU + rho^2 / c^2``                                    Zheng et al., AAAI 2020
``odiou``       ``1 - IoU + rho^2 / c^2 + gamma (1 - |cos(dtheta)|)``        SE-SSD, Zheng et al., CVPR 2021
``rdiou``       ``1 - clamp(RDIoU - rho_4^2 / c_4^2, -1, 1)``                RDIoU, Sheng et al., ECCV 2022
==============  ===========================================================  ==================================

Every loss is 0-gradient at ``pred == target``, gives zero-weight boxes exactly 0 loss and gradient whatever their
values, and NaN for a non-finite box with a non-zero weight; see :func:`pcdet_gciou.losses.gciou_loss`.

IoU is the exact rotated 3D IoU. ``C`` is the volume and ``c`` the diagonal of the enclosing box of
:func:`pcdet_gciou.geometry.enclosing_box_3d` (aligned with one of the two boxes), ``rho`` the distance of the
centres.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..geometry import center_distance_sq, enclosing_box_3d, heading_cos_error, iou_from_overlap, rotated_overlap_3d
from ._common import check_loss_inputs, check_loss_options, reduce_loss


def _iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return iou_from_overlap(*rotated_overlap_3d(pred, target))


def _check_orientation_weight(orientation_weight: object) -> None:
    if (
        isinstance(orientation_weight, bool)
        or not isinstance(orientation_weight, (int, float))
        or not (math.isfinite(orientation_weight) and orientation_weight >= 0)
    ):
        raise ValueError(f"orientation_weight must be a finite number >= 0, got {orientation_weight!r}")


def iou_loss(pred, target, weights=None, *, reduction: str = "none", eps: float = 1e-6) -> torch.Tensor:
    """``1 - IoU`` of paired rotated 3D boxes: ``(..., 7)`` pred and target, ``(...)`` weights.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> iou_loss(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # IoU 3/5
        tensor([0.4000])
    """
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    return reduce_loss(1 - _iou(pred, target), pred, target, weights, reduction)


def log_iou_loss(pred, target, weights=None, *, reduction: str = "none", eps: float = 1e-6) -> torch.Tensor:
    """``-ln(IoU + eps)`` of paired rotated 3D boxes (the GCIoU paper's baseline, Table 1 row 1).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> log_iou_loss(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # -ln(3/5)
        tensor([0.5108])
    """
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    return reduce_loss(-torch.log(_iou(pred, target) + eps), pred, target, weights, reduction)


def giou_loss(pred, target, weights=None, *, reduction: str = "none", eps: float = 1e-6) -> torch.Tensor:
    """``1 - IoU + (C - U) / C``, ``C`` = volume of the enclosing box (non-zero gradient for disjoint boxes).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> giou_loss(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # the enclosing box is the union: C = U
        tensor([0.4000])
    """
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    intersection, union = rotated_overlap_3d(pred, target)
    enclosing = enclosing_box_3d(pred, target)[..., :3].prod(dim=-1)
    loss = 1 - iou_from_overlap(intersection, union) + (enclosing - union) / (enclosing + eps)
    return reduce_loss(loss, pred, target, weights, reduction)


def _distance_penalty(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    diagonal_sq = (enclosing_box_3d(pred, target)[..., :3] ** 2).sum(dim=-1)
    return center_distance_sq(pred, target) / (diagonal_sq + eps)


def diou_loss(pred, target, weights=None, *, reduction: str = "none", eps: float = 1e-6) -> torch.Tensor:
    """``1 - IoU + rho^2 / c^2``: squared centre distance over the squared enclosing-box diagonal.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> diou_loss(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # 0.4 + 1 / (5^2 + 2^2 + 1.5^2)
        tensor([0.4320])
    """
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    loss = 1 - _iou(pred, target) + _distance_penalty(pred, target, eps)
    return reduce_loss(loss, pred, target, weights, reduction)


def odiou_loss(
    pred, target, weights=None, *, orientation_weight: float = 1.0, reduction: str = "none", eps: float = 1e-6
) -> torch.Tensor:
    """SE-SSD's orientation-aware DIoU: DIoU plus ``orientation_weight * (1 - |cos(dtheta)|)``.

    ``|cos|`` makes the orientation term pi-periodic like the IoU (the direction is left to the direction
    classifier). ``orientation_weight`` is SE-SSD's gamma (finite, ``>= 0``).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> odiou_loss(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # same heading: the DIoU
        tensor([0.4320])
    """
    _check_orientation_weight(orientation_weight)
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    orientation = 1 - heading_cos_error(pred[..., 6], target[..., 6]).abs()
    loss = 1 - _iou(pred, target) + _distance_penalty(pred, target, eps) + orientation_weight * orientation
    return reduce_loss(loss, pred, target, weights, reduction)


def rotation_decoupled_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6):
    """RDIoU and its 4D distance penalty (Sheng et al., "Rethinking IoU-based Optimization for Single-stage
    3D Object Detection", ECCV 2022).

    The heading becomes a fourth, axis-aligned dimension of unit extent, with centres
    ``sin(theta_p) cos(theta_t)`` for the prediction and ``cos(theta_p) sin(theta_t)`` for the target (their
    difference is ``sin(dtheta)``); x, y, z are treated as axis-aligned. The RDIoU is the 4D axis-aligned IoU,
    and the penalty the DIoU-style ``rho^2 / c^2`` over the 4D enclosing box.

    Returns:
        ``(rdiou, penalty)``, each ``(...)``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> rotation_decoupled_iou(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # 3/5, 1 / (5^2 + 2^2 + 1.5^2 + 1)
        (tensor([0.6000]), tensor([0.0310]))
    """
    sin_p, cos_p = torch.sin(pred[..., 6]), torch.cos(pred[..., 6])
    sin_t, cos_t = torch.sin(target[..., 6]), torch.cos(target[..., 6])
    centre_p = torch.cat([pred[..., :3], (sin_p * cos_t)[..., None]], dim=-1)
    centre_t = torch.cat([target[..., :3], (cos_p * sin_t)[..., None]], dim=-1)
    ones = torch.ones_like(pred[..., :1])
    size_p = torch.cat([pred[..., 3:6].clamp_min(0), ones], dim=-1)
    size_t = torch.cat([target[..., 3:6].clamp_min(0), ones], dim=-1)
    low = torch.maximum(centre_p - size_p / 2, centre_t - size_t / 2)
    high = torch.minimum(centre_p + size_p / 2, centre_t + size_t / 2)
    intersection = (high - low).clamp_min(0).prod(dim=-1)
    union = size_p.prod(dim=-1) + size_t.prod(dim=-1) - intersection
    enclosing = torch.maximum(centre_p + size_p / 2, centre_t + size_t / 2) - torch.minimum(
        centre_p - size_p / 2, centre_t - size_t / 2
    )
    penalty = ((centre_p - centre_t) ** 2).sum(dim=-1) / ((enclosing**2).sum(dim=-1) + eps)
    return iou_from_overlap(intersection, union), penalty


def rdiou_loss(pred, target, weights=None, *, reduction: str = "none", eps: float = 1e-6) -> torch.Tensor:
    """``1 - clamp(RDIoU - rho^2 / c^2, -1, 1)``, see :func:`rotation_decoupled_iou`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> rdiou_loss(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))
        tensor([0.4310])
    """
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    rdiou, penalty = rotation_decoupled_iou(pred, target, eps)
    return reduce_loss(1 - (rdiou - penalty).clamp(-1, 1), pred, target, weights, reduction)


class _BoxLoss(nn.Module):
    """Module form of a box-loss function: stores the options, calls the function."""

    function: Callable[..., torch.Tensor]

    def __init__(self, reduction: str = "none", eps: float = 1e-6, **options) -> None:
        super().__init__()
        check_loss_options(reduction, eps)  # at build time, not on the first call
        self.reduction, self.eps, self.options = reduction, eps, options

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        return type(self).function(pred, target, weights, reduction=self.reduction, eps=self.eps, **self.options)

    def extra_repr(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"reduction={self.reduction!r}, eps={self.eps}{options}"


class IoULoss(_BoxLoss):
    """Module form of :func:`iou_loss`; options are validated when it is built.

    Example:
        >>> criterion = IoULoss(reduction="mean")
        >>> criterion
        IoULoss(reduction='mean', eps=1e-06)
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> criterion(a, a[[1, 1]])  # a perfect box and a 1 m shift, averaged
        tensor(0.2000)
    """

    function = staticmethod(iou_loss)


class LogIoULoss(_BoxLoss):
    """Module form of :func:`log_iou_loss`; options are validated when it is built.

    Example:
        >>> criterion = LogIoULoss(reduction="mean")
        >>> criterion
        LogIoULoss(reduction='mean', eps=1e-06)
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> criterion(a, a[[1, 1]])  # a perfect box and a 1 m shift, averaged
        tensor(0.2554)
    """

    function = staticmethod(log_iou_loss)


class GIoULoss(_BoxLoss):
    """Module form of :func:`giou_loss`; options are validated when it is built.

    Example:
        >>> criterion = GIoULoss(reduction="mean")
        >>> criterion
        GIoULoss(reduction='mean', eps=1e-06)
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> criterion(a, a[[1, 1]])  # a perfect box and a 1 m shift, averaged
        tensor(0.2000)
    """

    function = staticmethod(giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`diou_loss`; options are validated when it is built.

    Example:
        >>> criterion = DIoULoss(reduction="mean")
        >>> criterion
        DIoULoss(reduction='mean', eps=1e-06)
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> criterion(a, a[[1, 1]])  # a perfect box and a 1 m shift, averaged
        tensor(0.2160)
    """

    function = staticmethod(diou_loss)


class ODIoULoss(_BoxLoss):
    """Module form of :func:`odiou_loss`; options are validated when it is built.

    Example:
        >>> criterion = ODIoULoss(reduction="mean")
        >>> criterion
        ODIoULoss(reduction='mean', eps=1e-06, orientation_weight=1.0)
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> criterion(a, a[[1, 1]])  # a perfect box and a 1 m shift, averaged
        tensor(0.2160)
    """

    function = staticmethod(odiou_loss)

    def __init__(self, orientation_weight: float = 1.0, reduction: str = "none", eps: float = 1e-6) -> None:
        _check_orientation_weight(orientation_weight)
        super().__init__(reduction=reduction, eps=eps, orientation_weight=orientation_weight)


class RDIoULoss(_BoxLoss):
    """Module form of :func:`rdiou_loss`; options are validated when it is built.

    Example:
        >>> criterion = RDIoULoss(reduction="mean")
        >>> criterion
        RDIoULoss(reduction='mean', eps=1e-06)
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> criterion(a, a[[1, 1]])  # a perfect box and a 1 m shift, averaged
        tensor(0.2155)
    """

    function = staticmethod(rdiou_loss)


BASELINE_LOSSES: Dict[str, type] = {
    "iou": IoULoss,
    "log_iou": LogIoULoss,
    "giou": GIoULoss,
    "diou": DIoULoss,
    "odiou": ODIoULoss,
    "rdiou": RDIoULoss,
}

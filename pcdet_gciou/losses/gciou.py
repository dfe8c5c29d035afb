"""GCIoU: the gradient-corrected IoU loss (Eq. 17) and gradient rescaling (Eq. 18).

Reference: Q. Ming, L. Miao, Z. Ma, L. Zhao, Z. Zhou, X. Huang, Y. Chen, Y. Guo, "Deep Dive into Gradients:
Better Optimization for 3D Object Detection with Gradient-Corrected IoU Supervision", CVPR 2023,
pp. 5136-5145.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional

import torch
from torch import nn

from ..geometry import check_boxes, heading_error, iou_from_overlap, rotated_overlap_3d
from ._common import check_loss_inputs, check_loss_options, reduce_loss

ANGLE_TERMS = ("tan", "exp", "linear", None)
P_FORMS = ("power", "linear")
DEFAULT_MAX_ANGLE = 0.49 * math.pi


def _scale_size_grad(grad: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``grad`` with its ``dx, dy, dz`` columns (``[..., 3:6]``) multiplied by ``factor``: the Eq. 18 update."""
    scale = torch.ones_like(grad)
    scale[..., 3:6] = factor.to(grad.dtype)[..., None]
    return grad * scale


def rescale_size_grad(boxes: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Gradient rescaling of the size parameters (GCIoU Eq. 18), as an identity with a custom backward.

    Forward returns ``boxes`` unchanged. In backward, the gradient reaching ``dx, dy, dz`` (``boxes[..., 3:6]``)
    is multiplied by ``factor``; the gradients of the centre and heading, and of ``factor``, are untouched /
    not computed (``factor`` is treated as a constant, as the paper's update rule implies).

    Args:
        boxes: ``(..., 7)`` boxes.
        factor: ``(...)`` per-box factor, e.g. ``U ** (2/3)`` with ``U`` the union volume.

    Returns:
        ``(..., 7)`` tensor equal to ``boxes``.

    Example:
        >>> boxes = torch.ones(2, 7, requires_grad=True)
        >>> rescale_size_grad(boxes, torch.tensor([2.0, 3.0])).sum().backward()
        >>> boxes.grad[:, 3]
        tensor([2., 3.])
    """
    check_boxes("boxes", boxes)
    if not isinstance(factor, torch.Tensor) or factor.shape != boxes.shape[:-1]:
        got = tuple(factor.shape) if isinstance(factor, torch.Tensor) else type(factor).__name__
        raise ValueError(f"factor must be a tensor of shape {tuple(boxes.shape[:-1])}, got {got}")
    rescaled = boxes.view_as(boxes)
    if rescaled.requires_grad:
        rescaled.register_hook(partial(_scale_size_grad, factor=factor.detach()))
    return rescaled


def _eq18_factor(union: torch.Tensor, weights: Optional[torch.Tensor], normalize: bool) -> torch.Tensor:
    """``U^(2/3)`` per pair, optionally divided by its mean over the pairs of non-zero weight (a constant)."""
    factor = union.detach().clamp_min(0) ** (2.0 / 3.0)
    if normalize:
        active = torch.ones_like(factor) if weights is None else (weights != 0).to(factor.dtype)
        mean = (factor * active).sum() / active.sum().clamp_min(1)
        factor = factor / torch.where(mean > 0, mean, torch.ones_like(mean))
    return factor


def _angle_weight(delta: torch.Tensor, alpha: Optional[float], p_form: str) -> torch.Tensor:
    if alpha is None:
        return torch.ones_like(delta)
    return torch.exp(delta**alpha if p_form == "power" else alpha * delta)


def _angle_offset(delta: torch.Tensor, g: Optional[str]) -> torch.Tensor:
    if g == "tan":
        return torch.tan(delta)
    if g == "exp":
        return torch.expm1(delta)
    if g == "linear":
        return delta
    return torch.zeros_like(delta)


def _check_gciou_options(alpha, g, max_angle, p_form, grad_rescale, rescale_normalize, reduction, eps) -> None:
    if g not in ANGLE_TERMS:
        raise ValueError(f"g must be one of {ANGLE_TERMS}, got {g!r}")
    if p_form not in P_FORMS:
        raise ValueError(f"p_form must be one of {P_FORMS}, got {p_form!r}")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number or None (f = 1), got {alpha!r}")
        # d(delta^alpha)/d(delta) = alpha * delta^(alpha - 1) is infinite at delta = 0 for alpha < 1.
        if p_form == "power" and not alpha >= 1:
            raise ValueError(
                f"alpha must be >= 1 with p_form='power' (delta^alpha has an infinite slope at 0 below 1), "
                f"got {alpha!r}"
            )
        if p_form == "linear" and not alpha > 0:
            raise ValueError(f"alpha must be > 0 with p_form='linear', got {alpha!r}")
    if not isinstance(max_angle, (int, float)) or isinstance(max_angle, bool) or not 0 < max_angle < math.pi / 2:
        raise ValueError(f"max_angle must be in (0, pi/2) because tan diverges at pi/2, got {max_angle!r}")
    for name, value in (("grad_rescale", grad_rescale), ("rescale_normalize", rescale_normalize)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    check_loss_options(reduction, eps)


def gciou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    *,
    alpha: Optional[float] = 2.0,
    g: Optional[str] = "tan",
    max_angle: float = DEFAULT_MAX_ANGLE,
    p_form: str = "power",
    grad_rescale: bool = False,
    rescale_normalize: bool = False,
    reduction: str = "none",
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""Gradient-corrected IoU loss of paired rotated 3D boxes (GCIoU, Ming et al., CVPR 2023).

    .. math::
        L = -\ln(\mathrm{IoU} + \epsilon)\, f(\Delta) + g(\Delta), \qquad f(\Delta) = e^{P(\Delta)},
        \quad P(\Delta) = \Delta^\alpha \ (\text{power}) \text{ or } \alpha\Delta \ (\text{linear})

    with ``IoU`` the exact rotated 3D IoU and ``Delta`` the heading error folded mod pi into ``[0, pi/2]``,
    clamped to ``max_angle`` (beyond it the angle terms pass no gradient, as in the official code).

    ``P`` is the paper's Table 2 choice: ``p_form="power"`` (``Delta^alpha``, the default and the paper's best with
    ``alpha=2``) or ``"linear"`` (``alpha * Delta``). The power form needs ``alpha >= 1``: below 1 its slope at
    ``Delta = 0`` is infinite (the paper uses alpha in {1, 2, 3, 5}), so smaller values are rejected at build.
    At ``Delta = 0`` the heading gradient is 0 (the zero subgradient of ``|Delta|``'s kink), and at
    ``pred == target`` every gradient is 0.

    ``f`` moves the peak of the angle gradient to large errors and makes it shrink as the error shrinks
    (Sec. 4.1, Eq. 15); ``g`` adds gradient at large errors. Options for ``g``: ``"tan"`` (tan Delta, Eq. 17 and
    the official code), ``"exp"`` (e^Delta - 1, best in Table 3), ``"linear"`` (Delta), ``None`` (0).

    Defaults: ``alpha=2`` (best in Table 2), ``g="tan"`` and ``max_angle=0.49*pi`` reproduce Eq. 17 and the
    released code; ``g="exp"`` is the variant Table 3 ranks best and is bounded (e^{pi/2} - 1 = 3.8 against
    tan(0.49 pi) = 31.8), so it is the safer choice when large heading errors are common.

    Gradient rescaling (Eq. 18, ``grad_rescale=True``): the gradient reaching ``pred``'s sizes ``dx, dy, dz`` is
    multiplied by the detached ``U ** (2/3)`` (``U`` = union volume of the pair, taken from this forward: a
    gradient hook, as in :func:`rescale_size_grad`, so the rescaling costs no second overlap computation); the
    loss value and every other gradient are unchanged. The size gradient of
    an IoU loss scales as ``1/s``; the factor scales as ``s^2``, so the step grows with the object. With
    ``rescale_normalize=True`` the factor is divided by its (weighted) batch mean, keeping the global step
    size comparable to the unscaled loss. The official code computes a different rescaling and never
    applies it; there the paper's version is what you get here.

    Args:
        pred: ``(..., 7)`` predicted boxes ``[x, y, z, dx, dy, dz, heading]``.
        target: ``(..., 7)`` target boxes, same shape.
        weights: optional ``(...)`` per-box weights.
        alpha: ``P``'s parameter: exponent (``>= 1``) for ``"power"``, factor (``> 0``) for ``"linear"``;
            ``None`` for ``f = 1``.
        g: the additive angle term, one of ``"tan"``, ``"exp"``, ``"linear"``, ``None``.
        max_angle: clamp of Delta, in ``(0, pi/2)``.
        p_form: ``"power"`` (``P = Delta^alpha``) or ``"linear"`` (``P = alpha * Delta``).
        grad_rescale: apply Eq. 18 to ``pred``'s size gradients.
        rescale_normalize: divide the rescaling factor by its batch mean.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (weighted mean ``sum(w L) / sum(w)``).
        eps: added to the IoU inside the log.

    Zero-weight boxes add exactly 0 to the loss and to their gradient rows, whatever their values; a box with a
    NaN or infinite parameter and a non-zero weight gives NaN (its IoU is NaN). pred and target are promoted to
    their common dtype, as in the geometry.

    Returns:
        ``(...)`` per-box loss for ``"none"``, else a scalar.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.3]])
        >>> target = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]])
        >>> gciou_loss(pred, target, reduction="mean")  # -ln(IoU) e^(0.3^2) + tan(0.3), IoU = 0.6971 (shapely)
        tensor(0.7042)
    """
    options = dict(alpha=alpha, g=g, max_angle=max_angle, p_form=p_form, grad_rescale=grad_rescale)
    return gciou_loss_and_iou(
        pred, target, weights, **options, rescale_normalize=rescale_normalize, reduction=reduction, eps=eps
    )[0]


def gciou_loss_and_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    *,
    alpha: Optional[float] = 2.0,
    g: Optional[str] = "tan",
    max_angle: float = DEFAULT_MAX_ANGLE,
    p_form: str = "power",
    grad_rescale: bool = False,
    rescale_normalize: bool = False,
    reduction: str = "none",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gciou_loss`, and the ``(...)`` IoU of the pairs it computed on the way, detached (to log it without
    computing it twice). Same arguments as :func:`gciou_loss`.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.3]])
        >>> target = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]])
        >>> gciou_loss_and_iou(pred, target, reduction="mean")
        (tensor(0.7042), tensor([0.6971]))
    """
    _check_gciou_options(alpha, g, max_angle, p_form, grad_rescale, rescale_normalize, reduction, eps)
    pred, target = check_loss_inputs(pred, target, weights, reduction, eps)
    if grad_rescale:
        pred = pred.view_as(pred)  # the node whose size gradient Eq. 18 rescales, once this forward gives U
    overlap, union = rotated_overlap_3d(pred, target)
    iou = iou_from_overlap(overlap, union)
    if grad_rescale and pred.requires_grad:
        pred.register_hook(partial(_scale_size_grad, factor=_eq18_factor(union, weights, rescale_normalize)))
    delta = heading_error(pred[..., 6], target[..., 6]).clamp_max(max_angle)
    loss = -torch.log(iou + eps) * _angle_weight(delta, alpha, p_form) + _angle_offset(delta, g)
    return reduce_loss(loss, pred, target, weights, reduction), iou.detach()


class GCIoULoss(nn.Module):
    """Module form of :func:`gciou_loss`; stores the options and calls the function.

    Every option is validated here, when the loss is built.

    Example:
        >>> criterion = GCIoULoss(g="exp", grad_rescale=True, reduction="sum")
        >>> box = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]])
        >>> criterion(box, box.clone(), torch.ones(1))  # perfect match: -ln(1 + eps) in float32
        tensor(-9.5367e-07)
        >>> GCIoULoss(alpha=0.5)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be >= 1 with p_form='power' (delta^alpha has an infinite slope at 0 below 1), got 0.5
    """

    def __init__(
        self,
        alpha: Optional[float] = 2.0,
        g: Optional[str] = "tan",
        max_angle: float = DEFAULT_MAX_ANGLE,
        p_form: str = "power",
        grad_rescale: bool = False,
        rescale_normalize: bool = False,
        reduction: str = "none",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        _check_gciou_options(alpha, g, max_angle, p_form, grad_rescale, rescale_normalize, reduction, eps)
        self.alpha, self.g, self.max_angle, self.p_form = alpha, g, max_angle, p_form
        self.grad_rescale, self.rescale_normalize = grad_rescale, rescale_normalize
        self.reduction, self.eps = reduction, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.loss_and_iou(pred, target, weights)[0]

    def loss_and_iou(
        self, pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the detached IoU it computed (:func:`gciou_loss_and_iou`)."""
        return gciou_loss_and_iou(
            pred,
            target,
            weights,
            alpha=self.alpha,
            g=self.g,
            max_angle=self.max_angle,
            p_form=self.p_form,
            grad_rescale=self.grad_rescale,
            rescale_normalize=self.rescale_normalize,
            reduction=self.reduction,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, g={self.g!r}, max_angle={self.max_angle:.4f}, p_form={self.p_form!r}, "
            f"grad_rescale={self.grad_rescale}, "
            f"rescale_normalize={self.rescale_normalize}, reduction={self.reduction!r}"
        )

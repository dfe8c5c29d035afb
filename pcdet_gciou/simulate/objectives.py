"""The losses the simulation compares, each a callable ``(pred_boxes, gt_boxes, anchors) -> (N,)`` per-box loss.

The loss names come from the loss registry (:data:`pcdet_gciou.losses.LOSSES`): every registry loss but
``gciou`` is compared as it is, and ``gciou`` as the variants of the paper's ablation (f, g, GR) plus the
batch-normalised rescaling. A variant is a configuration: a registry name plus options, see :class:`LossSpec`.
``smooth_l1`` is the simulation's own Smooth-L1 on box-coder residuals, OpenPCDet's localisation loss written
from its formula (it is not a box loss on decoded boxes, so it is not in the registry).

Every IoU-type loss is built with :func:`pcdet_gciou.losses.build_loss` and sees decoded boxes in metres, the
paper's reading (the official code instead evaluates the IoU in the anchor-normalised residual space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

from pcdet_gciou.losses import LOSSES
from pcdet_gciou.simulate.parametrisation import encode_residual

# OpenPCDet's WeightedSmoothL1Loss default for the anchor heads' box regression.
SMOOTH_L1_BETA = 1.0 / 9.0
SMOOTH_L1 = "smooth_l1"


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
    """One compared loss: a registry name (or ``smooth_l1``) plus the options it is built with."""

    build_name: str
    kwargs: Dict[str, object] = field(default_factory=dict)
    note: str = ""

    @property
    def description(self) -> str:
        """``name(option=value, ...)``: how the loss is built, for tables and legends."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.build_name}({options})"


# GCIoU's variants: Table 1's ablation (f, g, GR) with Eq. 17's g = tan, Table 3's g = e^D - 1, and the two
# readings of the rescaling: Eq. 18 as written (grad_rescale) and divided by its batch mean (rescale_normalize).
GCIOU_VARIANTS: Dict[str, Dict[str, object]] = {
    "gciou_f": {"g": None},
    "gciou_g": {"alpha": None},
    "gciou_fg": {},
    "gciou_fg_gr": {"grad_rescale": True, "rescale_normalize": False},
    "gciou_fg_gr_norm": {"grad_rescale": True, "rescale_normalize": True},
    "gciou_fg_exp": {"g": "exp"},
    "gciou_fg_exp_gr_norm": {"g": "exp", "grad_rescale": True, "rescale_normalize": True},
}
GCIOU_NOTES = {
    "gciou_fg_gr": "Eq. 18 as written: size gradient x U^(2/3)",
    "gciou_fg_gr_norm": "Eq. 18 factor divided by its batch mean",
    "gciou_fg_exp": "Table 3's g = e^D - 1",
    "gciou_fg_exp_gr_norm": "the configs shipped before the Eq. 18 decision (g exp, normalised GR)",
}


def _loss_specs() -> Dict[str, LossSpec]:
    """Smooth-L1, then every registry loss but gciou (registry order), then GCIoU's variants."""
    specs = {SMOOTH_L1: LossSpec(SMOOTH_L1, note="OpenPCDet's Smooth-L1 on the residuals (beta 1/9)")}
    specs.update({name: LossSpec(name) for name in LOSSES if name != "gciou"})
    if "gciou" in LOSSES:
        specs.update({key: LossSpec("gciou", kw, GCIOU_NOTES.get(key, "")) for key, kw in GCIOU_VARIANTS.items()})
    return specs


LOSS_SPECS: Dict[str, LossSpec] = _loss_specs()
DEFAULT_LOSSES: Tuple[str, ...] = tuple(LOSS_SPECS)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def build_objective(name: str) -> LossFn:
    """The per-box loss ``(pred_boxes, gt_boxes, anchors) -> (N,)`` registered as ``name`` in :data:`LOSS_SPECS`."""
    if name not in LOSS_SPECS:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSS_SPECS)}")
    spec = LOSS_SPECS[name]
    if spec.build_name == SMOOTH_L1:
        return smooth_l1_residual_loss
    from pcdet_gciou.losses import build_loss

    module = build_loss(spec.build_name, **spec.kwargs)

    def objective(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return module(pred_boxes, gt_boxes)

    return objective

"""Box-regression losses on paired rotated 3D boxes: GCIoU and the IoU-family baselines.

Each loss is a function ``loss(pred, target, weights=None, *, reduction="none", eps=1e-6, ...)`` plus an
``nn.Module`` that stores the options; :func:`build_loss` builds a module by the name configs use.
"""

from __future__ import annotations

import inspect
from typing import Dict

from torch import nn

from .gciou import ANGLE_TERMS, P_FORMS, GCIoULoss, gciou_loss, gciou_loss_and_iou, rescale_size_grad
from .iou_losses import (
    BASELINE_LOSSES,
    DIoULoss,
    GIoULoss,
    IoULoss,
    LogIoULoss,
    ODIoULoss,
    RDIoULoss,
    diou_loss,
    giou_loss,
    iou_loss,
    log_iou_loss,
    odiou_loss,
    rdiou_loss,
    rotation_decoupled_iou,
)

LOSSES: Dict[str, type] = {"gciou": GCIoULoss, **BASELINE_LOSSES}

#: The loss names, from the registry itself: the single source for configs, the simulation and the analysis.
#: RIoU (Zheng et al., ECCV 2020) is absent: its definition was not found in any reachable reference.
LOSS_NAMES = tuple(LOSSES)


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a box loss by name: one of ``gciou, iou, log_iou, giou, diou, odiou, rdiou``.

    Args:
        name: the loss name (case-insensitive).
        **kwargs: the loss options, e.g. ``alpha``, ``g``, ``grad_rescale`` for ``gciou``; ``reduction``, ``eps``.

    Every option is validated here, at build time (not on the first call).

    Raises:
        ValueError: unknown name, an option the loss does not take (the message lists the valid ones), or an
            invalid option value.

    Example:
        >>> criterion = build_loss("gciou", g="exp")
        >>> criterion
        GCIoULoss(alpha=2.0, g='exp', max_angle=1.5394, p_form='power', grad_rescale=False, rescale_normalize=False, \
reduction='none')
        >>> build_loss("iou", reduction="avg")
        Traceback (most recent call last):
        ...
        ValueError: reduction must be one of ('none', 'mean', 'sum'), got 'avg'
        >>> LOSS_NAMES
        ('gciou', 'iou', 'log_iou', 'giou', 'diou', 'odiou', 'rdiou')
    """
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    cls = LOSSES[name.lower()]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "options")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r} does not take option(s) {unknown}; it takes {accepted}")
    return cls(**kwargs)


__all__ = [
    "ANGLE_TERMS",
    "LOSSES",
    "LOSS_NAMES",
    "P_FORMS",
    "build_loss",
    "GCIoULoss",
    "gciou_loss",
    "gciou_loss_and_iou",
    "rescale_size_grad",
    "IoULoss",
    "LogIoULoss",
    "GIoULoss",
    "DIoULoss",
    "ODIoULoss",
    "RDIoULoss",
    "iou_loss",
    "log_iou_loss",
    "giou_loss",
    "diou_loss",
    "odiou_loss",
    "rdiou_loss",
    "rotation_decoupled_iou",
]

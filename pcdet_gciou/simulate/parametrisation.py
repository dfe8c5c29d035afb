"""How the simulated "head" parametrises a predicted box.

Three parametrisations (the ``--param`` option):

- ``residual`` (default): the box coder of an anchor head, written from its formula:

  .. math::

      t_x = \\frac{x - x_a}{d_a},\\; t_y = \\frac{y - y_a}{d_a},\\; t_z = \\frac{z - z_a}{h_a},\\;
      t_{w} = \\ln\\frac{d_x}{d_{x,a}}, \\ldots,\\; t_\\theta = \\theta - \\theta_a,
      \\qquad d_a = \\sqrt{d_{x,a}^2 + d_{y,a}^2}

  The optimiser moves ``t``, as the regression layer of a detector does.
- ``shared_head``: the residuals above come out of one linear layer shared by every box of the scenario,
  ``t_n = phi_n W`` with fixed per-box features ``phi_n`` (``(N, D)``, the scenario's ``features``); the
  optimiser moves ``W`` (``(D, 7)``). Like a detector's regression conv, every box's gradient lands on the same
  weights, so how a loss weights one box against another (e.g. Eq. 18's ``U^(2/3)``) decides who converges
  first, and Adam's per-parameter normalisation can no longer cancel a per-box factor.
- ``direct``: the optimiser moves the raw box ``(x, y, z, dx, dy, dz, heading)`` in metres and radians.
  This is the setting of the paper's gradient analysis (Sec. 3.2), where ``dL/d(size)`` scales as ``1/s``.

Why it matters: with log sizes, ``dL/dt_w = s * dL/ds``, so the ``1/s`` anomaly of Eq. 10/11 cancels for the
size parameters of a residual head; it survives in ``direct``.
"""

from __future__ import annotations

from typing import Optional

import torch

PARAMETRISATIONS = ("residual", "direct", "shared_head")

# exp(5) = 148x the anchor size: far beyond any real box, only there so that a runaway optimiser cannot overflow.
MAX_LOG_SIZE_RATIO = 5.0
# Smallest extent (metres) a directly parametrised box may take; keeps log() in the Smooth-L1 encoding finite.
MIN_DIRECT_EXTENT = 1e-3


def anchor_diagonal(anchors: torch.Tensor) -> torch.Tensor:
    """``(N,)`` BEV diagonal ``sqrt(dx^2 + dy^2)`` of ``(N, 7)`` anchors."""
    return torch.sqrt(anchors[..., 3] ** 2 + anchors[..., 4] ** 2)


def encode_residual(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Residual targets ``(N, 7)`` of ``(N, 7)`` boxes against ``(N, 7)`` anchors (box-coder encoding)."""
    diag = anchor_diagonal(anchors)
    centre = torch.stack(
        (
            (boxes[..., 0] - anchors[..., 0]) / diag,
            (boxes[..., 1] - anchors[..., 1]) / diag,
            (boxes[..., 2] - anchors[..., 2]) / anchors[..., 5],
        ),
        dim=-1,
    )
    log_size = torch.log(boxes[..., 3:6] / anchors[..., 3:6])
    heading = (boxes[..., 6] - anchors[..., 6]).unsqueeze(-1)
    return torch.cat((centre, log_size, heading), dim=-1)


def decode_residual(residuals: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``(N, 7)`` from ``(N, 7)`` residuals against ``(N, 7)`` anchors; inverse of :func:`encode_residual`."""
    diag = anchor_diagonal(anchors)
    centre = torch.stack(
        (
            residuals[..., 0] * diag + anchors[..., 0],
            residuals[..., 1] * diag + anchors[..., 1],
            residuals[..., 2] * anchors[..., 5] + anchors[..., 2],
        ),
        dim=-1,
    )
    size = torch.exp(residuals[..., 3:6].clamp(max=MAX_LOG_SIZE_RATIO)) * anchors[..., 3:6]
    heading = (residuals[..., 6] + anchors[..., 6]).unsqueeze(-1)
    return torch.cat((centre, size, heading), dim=-1)


def to_params(
    boxes: torch.Tensor, anchors: torch.Tensor, param: str, features: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The free parameters that represent ``(N, 7)`` boxes under ``param``: ``(N, 7)``, or ``(D, 7)`` for
    ``shared_head`` (the least-squares weights mapping ``features`` to the residuals; exact when they are
    representable, e.g. zero when the boxes are the anchors)."""
    check_param(param)
    if param == "residual":
        return encode_residual(boxes, anchors)
    if param == "shared_head":
        features = _check_features(features, boxes)
        return torch.linalg.lstsq(features, encode_residual(boxes, anchors)).solution
    return boxes.clone()


def to_boxes(
    params: torch.Tensor, anchors: torch.Tensor, param: str, features: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Decoded boxes ``(..., N, 7)`` from the free parameters (``(..., N, 7)``, or ``(..., D, 7)`` for
    ``shared_head``); differentiable."""
    check_param(param)
    if param == "residual":
        return decode_residual(params, anchors)
    if param == "shared_head":
        return decode_residual(torch.matmul(_check_features(features, anchors), params), anchors)
    return torch.cat((params[..., :3], params[..., 3:6].clamp(min=MIN_DIRECT_EXTENT), params[..., 6:]), dim=-1)


def _check_features(features: Optional[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    if features is None:
        raise ValueError("param 'shared_head' needs per-box features; this scenario has none (use residual/direct)")
    if features.dim() != 2 or features.shape[0] != boxes.shape[-2]:
        raise ValueError(f"features must be (N, D) with N = {boxes.shape[-2]} boxes, got {tuple(features.shape)}")
    return features


def check_param(param: str) -> None:
    if param not in PARAMETRISATIONS:
        raise ValueError(f"param must be one of {PARAMETRISATIONS}, got {param!r}")

"""Pure-torch pieces of the GCIoU anchor head (no pcdet import, so they are testable anywhere).

Encodings follow OpenPCDet's ``ResidualCoder`` (code size 7): ``(x_t, y_t, z_t, t_dx, t_dy, t_dz, r_t)``
with ``x_t = (x - x_a) / d_a``, ``y_t = (y - y_a) / d_a`` (``d_a`` the anchor's BEV diagonal),
``z_t = (z - z_a) / dz_a``, ``t_d* = log(d* / d*_a)`` and ``r_t = heading - heading_a``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "flat_anchors",
    "mean_positive_iou",
    "SIZE_LOG_CLAMP",
    "straight_through_clamp",
    "clamp_encoded_sizes",
    "residual_space_boxes",
    "shift_no_wrap",
    "heading_across_axis",
    "enlarge_positives",
    "quality_focal_loss",
]

#: Bound on the encoded log-size ratios ``t_d* = log(d*/d*_a)`` before they are exponentiated for an
#: IoU loss: exp(4) ~ 55, so a size stays within [anchor/55, 55 x anchor]. KITTI ground truth lies
#: within exp(+-1.5) of its class anchor, so the bound never touches a sensible prediction; it only
#: keeps a diverging one (real training produced dx = 0 and dy ~ 1e11) finite.
SIZE_LOG_CLAMP = 4.0


class _StraightThroughClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high):
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` in the forward pass, identity in the backward pass.

    A hard clamp would zero the gradient of an out-of-range value, so a prediction that has run away
    could never come back; with the identity gradient, the loss evaluated at the bound still pulls it in.
    """
    return _StraightThroughClamp.apply(x, low, high)


def clamp_encoded_sizes(encodings: torch.Tensor, bound: float = SIZE_LOG_CLAMP) -> torch.Tensor:
    """(..., 7) encodings -> a copy whose log-size slots 3:6 are straight-through clamped to [-bound, bound]."""
    sizes = straight_through_clamp(encodings[..., 3:6], -bound, bound)
    return torch.cat([encodings[..., :3], sizes, encodings[..., 6:]], dim=-1)


def residual_space_boxes(encodings: torch.Tensor, bound: float = SIZE_LOG_CLAMP) -> torch.Tensor:
    """The official GCIoU code's "boxes in residual space".

    (..., 7) encodings -> (..., 7) boxes ``(x_t, 2 y_t, 2 z_t, e^{t_dx}, e^{t_dy}, e^{t_dz}, r_t)``.
    The factor 2 on y and z is the official code's (inherited from RDIoU); the log sizes are
    straight-through clamped to ``[-bound, bound]`` (the official code has no clamp and can overflow).
    """
    sizes = torch.exp(straight_through_clamp(encodings[..., 3:6], -bound, bound))
    return torch.cat([encodings[..., 0:1], 2.0 * encodings[..., 1:3], sizes, encodings[..., 6:7]], dim=-1)


def shift_no_wrap(x: torch.Tensor, step: int, dim: int) -> torch.Tensor:
    """Move every entry ``step`` cells along ``dim`` (``out[i + step] = x[i]``), filling with zeros.

    Unlike ``torch.roll`` (used by the official code) nothing wraps from one map edge to the other.
    """
    length = x.shape[dim]
    out = torch.zeros_like(x)
    if abs(step) >= length:
        return out
    if step >= 0:
        out.narrow(dim, step, length - step).copy_(x.narrow(dim, 0, length - step))
    else:
        out.narrow(dim, 0, length + step).copy_(x.narrow(dim, -step, length + step))
    return out


def heading_across_axis(headings: torch.Tensor) -> torch.Tensor:
    """(A,) anchor headings -> (A,) bool, True where "across the heading" is the map's y axis.

    The direction across a box of heading h is (-sin h, cos h): mostly along y when |cos h| >= |sin h|
    (the 0-rad anchor), mostly along x otherwise (the pi/2 anchor).
    """
    return headings.cos().abs() >= headings.sin().abs()


def enlarge_positives(
    labels: torch.Tensor,
    reg_targets: torch.Tensor,
    anchors: torch.Tensor,
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy each positive anchor to its +-1 neighbour cells across its heading (official GCIoU/RDIoU trick).

    For every anchor slot (class, size, rotation) of a cell, a positive is copied to the same slot of
    the previous and next cell along y (for headings near 0) or along x (near pi/2), see
    :func:`heading_across_axis`. Rules:

    - only anchors that are not already positive become positive (ignored and negative ones may);
    - no wrap-around at the map edges (the official code's ``torch.roll`` wraps);
    - when two positives could enlarge into the same anchor, the one with the lower cell index wins;
    - the host assigner stores zeros as the regression target of a non-foreground anchor, so each new
      positive gets a real target: the source's ground-truth box, recovered exactly by decoding the
      source's target against the source anchor, is encoded against the new anchor.

    Args:
        labels: (B, ny, nx, A) int, -1 ignore / 0 background / k > 0 class.
        reg_targets: (B, ny, nx, A, 7) encoded targets.
        anchors: (ny, nx, A, 7) anchors.
        encode: ``ResidualCoder.encode_torch``-like ``(boxes (P,7), anchors (P,7)) -> (P,7)``.
        decode: ``ResidualCoder.decode_torch``-like ``(encodings (P,7), anchors (P,7)) -> (P,7)``.

    Returns:
        ``(labels, reg_targets, added)``: new tensors (inputs are not modified); ``added`` is the
        (B, ny, nx, A) bool mask of the new positives.
    """
    if labels.dim() != 4 or reg_targets.shape[:4] != labels.shape or anchors.shape[:3] != labels.shape[1:]:
        raise ValueError(
            "expected labels (B, ny, nx, A), reg_targets (B, ny, nx, A, 7), anchors (ny, nx, A, 7); got "
            f"{tuple(labels.shape)}, {tuple(reg_targets.shape)}, {tuple(anchors.shape)}"
        )
    positive = labels > 0
    batch_anchors = anchors.unsqueeze(0).expand_as(reg_targets)
    along_y = heading_across_axis(anchors[0, 0, :, 6])
    slot_axis = {1: along_y, 2: ~along_y}  # dim 1 is y (rows), dim 2 is x (columns)

    new_labels = labels.clone()
    source_labels = torch.zeros_like(labels)
    source_targets = torch.zeros_like(reg_targets)
    source_anchors = torch.zeros_like(reg_targets)
    taken = positive.clone()
    for dim, slots in slot_axis.items():
        for step in (1, -1):
            take = shift_no_wrap(positive, step, dim) & slots & ~taken
            source_labels = torch.where(take, shift_no_wrap(labels, step, dim), source_labels)
            source_targets = torch.where(take[..., None], shift_no_wrap(reg_targets, step, dim), source_targets)
            source_anchors = torch.where(take[..., None], shift_no_wrap(batch_anchors, step, dim), source_anchors)
            taken = taken | take
    added = taken & ~positive
    new_labels = torch.where(added, source_labels, new_labels)
    new_targets = reg_targets.clone()
    if bool(added.any()):
        gt_boxes = decode(source_targets[added], source_anchors[added])
        new_targets[added] = encode(gt_boxes, batch_anchors[added].clone())
    return new_labels, new_targets, added


def flat_anchors(anchors: Sequence[torch.Tensor], multihead: bool = False) -> torch.Tensor:
    """An anchor head's per-class anchor tensors -> (N, 7), in the order of its flattened outputs and targets.

    ``anchors``: OpenPCDet's ``head.anchors``, one ``(1, ny, nx, sizes, rotations, 7)`` tensor per class.
    """
    if multihead:
        return torch.cat([a.permute(3, 4, 0, 1, 2, 5).reshape(-1, a.shape[-1]) for a in anchors], dim=0)
    return torch.cat(list(anchors), dim=-3).view(-1, anchors[0].shape[-1])


@torch.no_grad()
def mean_positive_iou(head) -> Optional[float]:
    """Mean 3D IoU of an anchor head's positive predictions with their ground truth, after its last training forward.

    Our GCIoU anchor heads answer from the positives they decoded for the loss (``head.positives()``). Any other
    OpenPCDet anchor head with a ``ResidualCoder`` (``AnchorHeadSingle``, ``AnchorHeadMulti``) is decoded the same
    way by duck typing (predicted log sizes clamped as in :func:`clamp_encoded_sizes`), so a baseline and a GCIoU
    run log the same quantity. 0.0 when the batch has no positives; ``None`` when ``head`` is not such a head or has
    no training outputs.
    """
    from .positives import decode_anchor_positives

    outputs = getattr(head, "forward_ret_dict", None)
    if not isinstance(outputs, dict) or not all(
        k in outputs for k in ("box_preds", "box_cls_labels", "box_reg_targets")
    ):
        return None
    if callable(getattr(head, "positives", None)):
        return head.positives().mean_iou
    coder = getattr(head, "box_coder", None)
    if not hasattr(coder, "decode_torch") or not hasattr(head, "anchors"):
        return None
    labels, targets = outputs["box_cls_labels"], outputs["box_reg_targets"]
    box_preds = outputs["box_preds"]
    numel = sum(p.numel() for p in box_preds) if isinstance(box_preds, (list, tuple)) else box_preds.numel()
    if targets.shape[:2] != labels.shape or numel != targets.numel():
        return None
    anchors = flat_anchors(head.anchors, getattr(head, "use_multihead", False))
    return decode_anchor_positives(box_preds, labels, targets, anchors, coder.decode_torch).mean_iou


def quality_focal_loss(logits: torch.Tensor, soft_targets: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    r"""Element-wise quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020).

    .. math:: \mathrm{QFL}(x, t) = -|t - \sigma(x)|^{\beta}\,\big(t \log\sigma(x) + (1-t)\log(1-\sigma(x))\big)

    Args:
        logits: (..., C) classification logits.
        soft_targets: (..., C) targets in [0, 1]: the detached IoU of a positive in its class column, 0 elsewhere.
        beta: modulation exponent (2 in GFL and in the official GCIoU code).

    Returns:
        (..., C) loss, not reduced.
    """
    modulation = (soft_targets - torch.sigmoid(logits)).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none") * modulation

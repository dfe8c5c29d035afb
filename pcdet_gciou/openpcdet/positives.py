"""The positives of one training step, decoded once, and the IoU-family box loss on them (no pcdet import).

Every GCIoU dense head (anchor, centre, sparse centre) reduces its step to a :class:`Positives`: the decoded
predicted boxes, their ground truth and the host's normalisation weight of each. The loss, the quality focal
loss' soft targets and the logged mean IoU all read the same object, so the positives are found and decoded
once per step.

Centre heads decode exactly as OpenPCDet's ``decode_bbox_from_heatmap`` / ``_get_predicted_boxes``
(:func:`decode_center_boxes`)::

    x = (cell_x + offset_x) * stride * voxel_x + range_x_min      z = center_z
    y = (cell_y + offset_y) * stride * voxel_y + range_y_min      (dx, dy, dz) = exp(log dims)
    heading = atan2(sin, cos)

Example:
    >>> import torch
    >>> boxes = torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3]])
    >>> pos = Positives(pred=boxes, target=boxes, weights=torch.ones(1))
    >>> round(pos.mean_iou, 6), float(weighted_box_loss(pos, lambda p, t: (p - t).abs().sum(-1), 2.0))
    (1.0, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from pcdet_gciou.geometry import rotated_iou_3d

from .anchor_ops import SIZE_LOG_CLAMP, clamp_encoded_sizes, residual_space_boxes, straight_through_clamp

__all__ = [
    "Positives",
    "weighted_box_loss",
    "grouped_box_loss",
    "grouped_box_loss_and_iou",
    "decode_anchor_positives",
    "decode_center_boxes",
    "ScaledHostLoss",
    "SharedGatherRegLoss",
    "gather_center_rows",
    "center_code_keep_mask",
]

#: CenterHead/VoxelNeXtHead regression heads whose L1 terms the IoU loss replaces (all box parameters but velocity)
IOU_COVERED_HEADS = ("center", "center_z", "dim", "rot")


@dataclass
class Positives:
    """Positive predictions of one step and their ground truth.

    Attributes:
        pred: (P, 7) decoded predicted boxes, differentiable.
        target: (P, 7) ground-truth boxes.
        weights: (P,) the host's normalisation: the box loss is ``scale * sum_i weights_i * L(pred_i, target_i)``.
        loss_pred, loss_target: the boxes the loss sees when they differ from the decoded ones (the anchor heads'
            ``SPACE: residual``); None means ``pred``/``target``.
    """

    pred: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor
    loss_pred: Optional[torch.Tensor] = None
    loss_target: Optional[torch.Tensor] = None

    def __post_init__(self):
        count = self.pred.shape[0]
        if self.pred.shape != (count, 7) or self.target.shape != (count, 7) or self.weights.shape != (count,):
            raise ValueError(
                "expected pred (P, 7), target (P, 7), weights (P,); got "
                f"{tuple(self.pred.shape)}, {tuple(self.target.shape)}, {tuple(self.weights.shape)}"
            )

    @classmethod
    def concat(cls, groups: Sequence[Positives]) -> Positives:
        """The positives of several groups (task heads) as one, in order; decoded-space boxes only."""
        return cls(*(torch.cat([getattr(g, name) for g in groups]) for name in ("pred", "target", "weights")))

    @property
    def loss_boxes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_pred is None:
            return self.pred, self.target
        return self.loss_pred, self.loss_target

    @cached_property
    def iou(self) -> torch.Tensor:
        """(P,) detached 3D IoU of the decoded boxes, in [0, 1]."""
        with torch.no_grad():
            return rotated_iou_3d(self.pred.detach(), self.target).clamp(0.0, 1.0)

    @cached_property
    def loss_space_iou(self) -> torch.Tensor:
        """(P,) detached IoU of the boxes the loss sees (the quality focal loss' soft targets)."""
        if self.loss_pred is None:
            return self.iou
        with torch.no_grad():
            return rotated_iou_3d(self.loss_pred.detach(), self.loss_target).clamp(0.0, 1.0)

    @property
    def mean_iou(self) -> float:
        """Mean decoded IoU; 0.0 without positives."""
        return float(self.iou.mean()) if self.iou.numel() else 0.0


def weighted_box_loss(positives: Positives, loss_fn: Callable, scale: float) -> torch.Tensor:
    r"""``scale * sum_i w_i L(pred_i, target_i)``: the box loss normalised like the host head.

    Without positives it is an exact zero that still belongs to the graph of ``pred`` (so DDP sees the parameters).
    """
    return grouped_box_loss([positives], loss_fn, scale)[0]


def grouped_box_loss(groups: Sequence[Positives], loss_fn: Callable, scale: float) -> list[torch.Tensor]:
    """:func:`weighted_box_loss` of each group (e.g. each task head), with one call of ``loss_fn`` for all of them."""
    pred = torch.cat([group.loss_boxes[0] for group in groups])
    target = torch.cat([group.loss_boxes[1] for group in groups])
    return _group_terms(loss_fn(pred, target) if pred.shape[0] else pred.sum(-1), pred, groups, scale)


def grouped_box_loss_and_iou(groups: Sequence[Positives], loss_fn: Callable, scale: float):
    """:func:`grouped_box_loss` and the decoded IoU of all the positives (``Positives.concat(groups).iou``).

    A loss with ``loss_and_iou`` (GCIoU) gives the IoU it computed for the loss; others get it computed apart.
    Decoded-space groups only (the loss must see the decoded boxes for its IoU to be theirs).
    """
    if any(group.loss_pred is not None for group in groups):
        raise ValueError("grouped_box_loss_and_iou needs decoded-space positives (loss_pred None)")
    pred = torch.cat([group.pred for group in groups])
    target = torch.cat([group.target for group in groups])
    if not pred.shape[0] or not hasattr(loss_fn, "loss_and_iou"):
        return grouped_box_loss(groups, loss_fn, scale), Positives.concat(groups).iou
    per_box, iou = loss_fn.loss_and_iou(pred, target)
    return _group_terms(per_box, pred, groups, scale), iou.clamp(0.0, 1.0)


def _group_terms(per_box: torch.Tensor, pred: torch.Tensor, groups: Sequence[Positives], scale: float):
    weights = torch.cat([group.weights for group in groups])
    per_box = per_box * weights
    zero = pred.sum() * 0.0
    return [zero + scale * chunk.sum() for chunk in per_box.split([g.weights.shape[0] for g in groups])]


def decode_anchor_positives(
    box_preds,
    labels: torch.Tensor,
    reg_targets: torch.Tensor,
    anchors: torch.Tensor,
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    residual_space: bool = False,
) -> Positives:
    """An anchor head's positives, decoded against their anchors (decoded targets = the matched GT boxes).

    Args:
        box_preds: (B, ...) predictions holding ``N * C`` values per sample, or a list of them (one per head of a
            multi-head, in the order of the flattened anchors and targets).
        labels: (B, N) -1 ignore / 0 background / k > 0 class.
        reg_targets: (B, N, C) encoded targets.
        anchors: (N, C') anchors in the flattened order.
        decode: the head's ``box_coder.decode_torch``; its first 7 outputs are the box.
        residual_space: also give the official code's residual-space boxes as the loss boxes (code size 7 only).

    Weights: ``1 / (B * max(#positives of the sample, 1))``, OpenPCDet's anchor-head normalisation (the sum over
    the positives of a sample divided by their count, averaged over the batch), single- and multi-head alike.
    """
    batch_size, num_anchors = labels.shape
    code_size = reg_targets.shape[-1]
    if isinstance(box_preds, (list, tuple)):
        box_preds = torch.cat([p.reshape(batch_size, -1, code_size) for p in box_preds], dim=1)
    box_preds = box_preds.reshape(batch_size, num_anchors, code_size)
    positives = labels > 0
    per_sample = positives.sum(dim=1, keepdim=True).clamp(min=1).float() * batch_size
    weights = (positives.float() / per_sample)[positives]
    pred = box_preds[positives].float()
    target = reg_targets[positives].float()
    matched = anchors.float().unsqueeze(0).expand(batch_size, -1, -1)[positives]
    decoded = Positives(
        pred=decode(clamp_encoded_sizes(pred), matched)[:, :7],
        target=decode(target, matched)[:, :7],
        weights=weights,
    )
    if residual_space:
        decoded.loss_pred, decoded.loss_target = residual_space_boxes(pred), residual_space_boxes(target)
    return decoded


def decode_center_boxes(
    center: torch.Tensor,
    center_z: torch.Tensor,
    log_dim: torch.Tensor,
    rot: torch.Tensor,
    cell_xy: torch.Tensor,
    stride: float,
    voxel_size: Sequence[float],
    point_cloud_range: Sequence[float],
) -> torch.Tensor:
    """(P,2) offsets, (P,1) z, (P,3) log dims, (P,2) (cos, sin), (P,2) integer cells (x, y) -> (P,7) lidar boxes.

    As the host's decoders; the log dims are straight-through clamped to +-``SIZE_LOG_CLAMP`` (a diverging
    prediction stays finite and keeps its gradient), and atan2 gets cos = 1 where (cos, sin) = (0, 0), so its
    gradient is finite there.
    """
    cos, sin = rot[:, 0:1], rot[:, 1:2]
    cos = torch.where((cos == 0) & (sin == 0), torch.ones_like(cos), cos)
    xy = (cell_xy.to(center.dtype) + center) * stride
    x = xy[:, 0:1] * voxel_size[0] + point_cloud_range[0]
    y = xy[:, 1:2] * voxel_size[1] + point_cloud_range[1]
    dims = torch.exp(straight_through_clamp(log_dim, -SIZE_LOG_CLAMP, SIZE_LOG_CLAMP))
    return torch.cat([x, y, center_z, dims, torch.atan2(sin, cos)], dim=-1)


def center_code_keep_mask(head_order: Sequence[str], head_dict) -> torch.Tensor:
    """Per-code-dimension 1/0 mask over ``HEAD_ORDER``: 0 on the terms the IoU loss covers, 1 elsewhere (velocity)."""
    keep = [
        0.0 if name in IOU_COVERED_HEADS else 1.0 for name in head_order for _ in range(head_dict[name]["out_channels"])
    ]
    return torch.tensor(keep)


class ScaledHostLoss(nn.Module):
    """The host's regression loss with its output multiplied by ``scale`` (a number or a per-code vector).

    Used to drop (scale 0) or re-weight exactly the host terms an IoU loss replaces, while the host keeps computing
    everything else (direction classifier, velocity L1, its own IoU branches) unchanged.
    """

    def __init__(self, inner: nn.Module, scale):
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs) * self.scale


def gather_center_rows(maps: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) maps read at the flat cells ``inds`` (B, K) (``y * W + x``) -> (B, K, C) rows.

    The same rows as OpenPCDet's ``_transpose_and_gather_feat``, read from the (B, C, H*W) view instead of a
    channels-last copy of the whole map (the copy and its backward cost more than the gather itself).

    Example:
        >>> maps = torch.arange(12.0).reshape(1, 2, 2, 3)  # channel 0: 0..5, channel 1: 6..11
        >>> gather_center_rows(maps, torch.tensor([[4, 0]]))
        tensor([[[ 4., 10.],
                 [ 0.,  6.]]])
    """
    index = inds.unsqueeze(1).expand(-1, maps.shape[1], -1)
    return maps.flatten(2).gather(2, index).transpose(1, 2).contiguous()


class SharedGatherRegLoss(nn.Module):
    """A centre head's regression loss ``inner(maps, mask, ind, target)`` computed on :func:`gather_center_rows`.

    ``inner`` gets the gathered rows with ``ind=None`` (OpenPCDet's ``RegLossCenterNet`` then reads them as its
    prediction), so its values are the host's; ``scale`` (a per-code vector, or None) multiplies its output as
    :class:`ScaledHostLoss` does. The rows of each call are kept in ``gathered`` (``(ind, rows)`` pairs, cleared
    by the head each step): the IoU term reads its channels from them, so the maps are gathered, and their
    gradient scattered back, once for both losses.
    """

    def __init__(self, inner: nn.Module, scale=None):
        super().__init__()
        self.inner = inner
        self.register_buffer(
            "scale", None if scale is None else torch.as_tensor(scale, dtype=torch.float32), persistent=False
        )
        self.gathered: list[tuple[torch.Tensor, torch.Tensor]] = []

    def rows_for(self, inds: torch.Tensor) -> Optional[torch.Tensor]:
        """The rows gathered at this very ``inds`` tensor since the last clear, or None."""
        return next((rows for key, rows in self.gathered if key is inds), None)

    def forward(self, maps: torch.Tensor, mask: torch.Tensor, ind: torch.Tensor, target: torch.Tensor):
        rows = gather_center_rows(maps, ind)
        self.gathered.append((ind, rows))
        loss = self.inner(rows, mask, None, target)
        return loss if self.scale is None else loss * self.scale

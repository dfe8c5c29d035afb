"""CPU versions of OpenPCDet's compiled box ops (rotated IoU, rotated NMS, points in boxes).

Each function has the signature and return convention of the OpenPCDet function of the same name in
``pcdet.ops.iou3d_nms.iou3d_nms_utils`` or ``pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils``, so that
:func:`pcdet_gciou.openpcdet.cpu.install` can swap them in. The geometry is ours (``pcdet_gciou.geometry``);
this module imports only torch, numpy and that package.

Boxes are ``(N, 7)`` = ``[x, y, z, dx, dy, dz, heading]`` in OpenPCDet's LiDAR convention (z = centre).

IoU matrices are :func:`pcdet_gciou.geometry.rotated_iou_bev_matrix` / ``rotated_iou_3d_matrix``. NMS and the
KITTI evaluator's overlaps work on a sparse pair list instead, from the geometry's one pair prefilter
(:func:`pcdet_gciou.geometry.candidate_pairs`), so NMS can walk each kept box's overlaps.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pcdet_gciou.geometry import (
    candidate_pairs,
    check_boxes,
    fill_nonfinite_pairs,
    points_in_boxes_mask,
    rotated_iou_3d,
    rotated_iou_3d_matrix,
    rotated_iou_bev,
    rotated_iou_bev_matrix,
)
from pcdet_gciou.geometry.chunking import PAIRS_PER_CHUNK

__all__ = [
    "overlapping_pairs",
    "pairwise_box_values",
    "boxes_iou_bev",
    "boxes_bev_iou_cpu",
    "boxes_iou3d_gpu",
    "boxes_aligned_iou3d_gpu",
    "paired_boxes_iou3d_gpu",
    "greedy_nms",
    "nms_gpu",
    "nms_normal_gpu",
    "points_in_boxes_cpu",
    "points_in_boxes_gpu",
]


def overlapping_pairs(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``(i, j)``, sorted by ``(i, j)``, that may overlap in BEV.

    The geometry's one prefilter, :func:`pcdet_gciou.geometry.candidate_pairs`: every pair with non-zero BEV
    overlap is among them.
    """
    return candidate_pairs(boxes_a, boxes_b, sort=True)


def pairwise_box_values(
    boxes_a: torch.Tensor,
    boxes_b: torch.Tensor,
    paired_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dense ``(N, M)`` matrix of ``paired_fn`` on overlapping pairs, zero elsewhere.

    ``paired_fn(a (P, 7), b (P, 7)) -> (P,)`` must be zero for boxes that do not overlap in BEV. Rows and columns of
    boxes with a NaN or infinite parameter are NaN, as in the geometry's matrices.
    """
    out = torch.zeros(boxes_a.shape[0], boxes_b.shape[0], dtype=dtype, device=boxes_a.device)
    pair_i, pair_j = overlapping_pairs(boxes_a, boxes_b)
    with torch.no_grad():
        for start in range(0, pair_i.numel(), PAIRS_PER_CHUNK):
            i, j = pair_i[start : start + PAIRS_PER_CHUNK], pair_j[start : start + PAIRS_PER_CHUNK]
            out[i, j] = paired_fn(boxes_a[i], boxes_b[j]).to(dtype)
    return fill_nonfinite_pairs(out, boxes_a, boxes_b)


def boxes_iou_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """All-pairs rotated BEV IoU ``(N, M)`` of ``(N, 7)`` and ``(M, 7)`` boxes (OpenPCDet's ``boxes_iou_bev``)."""
    check_boxes("boxes_a", boxes_a, ndim=2)
    check_boxes("boxes_b", boxes_b, ndim=2)
    return rotated_iou_bev_matrix(boxes_a, boxes_b).to(boxes_a.dtype)


def boxes_bev_iou_cpu(boxes_a, boxes_b):
    """Like :func:`boxes_iou_bev`, accepting numpy arrays (returns numpy then), as OpenPCDet's CPU op."""
    is_numpy = isinstance(boxes_a, np.ndarray)
    tensor_a = torch.from_numpy(np.ascontiguousarray(boxes_a)).float() if is_numpy else boxes_a
    tensor_b = torch.from_numpy(np.ascontiguousarray(boxes_b)).float() if isinstance(boxes_b, np.ndarray) else boxes_b
    iou = boxes_iou_bev(tensor_a, tensor_b)
    return iou.numpy() if is_numpy else iou


def boxes_iou3d_gpu(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """All-pairs rotated 3D IoU ``(N, M)`` (OpenPCDet's ``boxes_iou3d_gpu``, on any device)."""
    check_boxes("boxes_a", boxes_a, ndim=2)
    check_boxes("boxes_b", boxes_b, ndim=2)
    return rotated_iou_3d_matrix(boxes_a, boxes_b).to(boxes_a.dtype)


def paired_boxes_iou3d_gpu(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Rotated 3D IoU ``(N,)`` of row-aligned ``(N, 7)`` boxes (OpenPCDet's ``paired_boxes_iou3d_gpu``)."""
    check_boxes("boxes_a", boxes_a, ndim=2)
    check_boxes("boxes_b", boxes_b, ndim=2)
    if boxes_a.shape[0] != boxes_b.shape[0]:
        raise ValueError(f"paired boxes need equal counts, got {boxes_a.shape[0]} and {boxes_b.shape[0]}")
    with torch.no_grad():
        return rotated_iou_3d(boxes_a, boxes_b).to(boxes_a.dtype)


def boxes_aligned_iou3d_gpu(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Rotated 3D IoU ``(N, 1)`` of row-aligned boxes (OpenPCDet's ``boxes_aligned_iou3d_gpu``)."""
    return paired_boxes_iou3d_gpu(boxes_a, boxes_b).view(-1, 1)


def greedy_nms(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy rotated-BEV NMS of boxes already sorted by descending score.

    A box is dropped when its BEV IoU with an already kept, higher-scored box is ``> threshold`` (strict, as
    OpenPCDet's kernel). IoUs are computed once for the overlapping pairs; the Python loop runs once per
    *kept* box and suppresses all its overlaps at once.

    Args:
        boxes: ``(N, 7)`` boxes in descending score order.
        threshold: IoU threshold.

    Returns:
        ``(K,)`` int64 positions into ``boxes`` of the kept boxes, ascending.
    """
    check_boxes("boxes", boxes, ndim=2)
    num = boxes.shape[0]
    if num == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    pair_i, pair_j = overlapping_pairs(boxes, boxes)
    later = pair_j > pair_i
    pair_i, pair_j = pair_i[later], pair_j[later]
    with torch.no_grad():
        ious = (
            torch.cat(
                [
                    rotated_iou_bev(boxes[pair_i[s : s + PAIRS_PER_CHUNK]], boxes[pair_j[s : s + PAIRS_PER_CHUNK]])
                    for s in range(0, pair_i.numel(), PAIRS_PER_CHUNK)
                ]
            )
            if pair_i.numel()
            else boxes.new_zeros(0)
        )
    over = ious > threshold
    suppressor = pair_i[over].cpu().numpy()  # sorted ascending: overlapping_pairs yields rows in order
    suppressed_by = pair_j[over].cpu().numpy()
    row_start = np.searchsorted(suppressor, np.arange(num + 1))
    suppressed = np.zeros(num, dtype=bool)
    keep = []
    current = 0
    while True:
        keep.append(current)
        suppressed[suppressed_by[row_start[current] : row_start[current + 1]]] = True
        remaining = ~suppressed[current + 1 :]
        if not remaining.any():
            break
        current += 1 + int(remaining.argmax())
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


def nms_gpu(boxes: torch.Tensor, scores: torch.Tensor, thresh: float, pre_maxsize: int | None = None, **kwargs):
    """Rotated BEV NMS (OpenPCDet's ``nms_gpu``): returns ``(kept indices into boxes, None)``."""
    check_boxes("boxes", boxes, ndim=2)
    order = scores.sort(0, descending=True)[1]
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    keep = greedy_nms(boxes[order], thresh)
    return order[keep].contiguous(), None


def nms_normal_gpu(boxes: torch.Tensor, scores: torch.Tensor, thresh: float, **kwargs):
    """Axis-aligned BEV NMS that ignores the heading (OpenPCDet's ``nms_normal_gpu``)."""
    check_boxes("boxes", boxes, ndim=2)
    order = scores.sort(0, descending=True)[1]
    upright = boxes[order].clone()
    upright[:, 6] = 0
    keep = greedy_nms(upright, thresh)
    return order[keep].contiguous(), None


def points_in_boxes_cpu(points, boxes):
    """Point-in-box flags ``(M, N)`` int32 of ``(N, 3)`` points in ``(M, 7)`` boxes (OpenPCDet's CPU op).

    Accepts numpy arrays (returns numpy then) or tensors.
    """
    is_numpy = isinstance(points, np.ndarray)
    points_t = torch.from_numpy(np.ascontiguousarray(points)).float() if is_numpy else points.float()
    boxes_t = torch.from_numpy(np.ascontiguousarray(boxes)).float() if isinstance(boxes, np.ndarray) else boxes.float()
    check_boxes("boxes", boxes_t, ndim=2)
    if points_t.dim() != 2 or points_t.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points_t.shape)}")
    flags = points_in_boxes_mask(points_t, boxes_t).transpose(0, 1).to(torch.int32).contiguous()
    return flags.numpy() if is_numpy else flags


def points_in_boxes_gpu(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Index of the first box holding each point, ``-1`` for none (OpenPCDet's ``points_in_boxes_gpu``).

    Args:
        points: ``(B, N, 3)``.
        boxes: ``(B, T, 7)``.

    Returns:
        ``(B, N)`` int32.
    """
    if points.dim() != 3 or points.shape[2] != 3:
        raise ValueError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    if boxes.dim() != 3 or boxes.shape[2] != 7 or boxes.shape[0] != points.shape[0]:
        raise ValueError(f"boxes must have shape (B, T, 7) with B = {points.shape[0]}, got {tuple(boxes.shape)}")
    result = points.new_full(points.shape[:2], -1, dtype=torch.int32)
    if boxes.shape[1] == 0:
        return result
    for batch in range(points.shape[0]):
        inside = points_in_boxes_mask(points[batch], boxes[batch])  # (N, T)
        found = inside.any(dim=1)
        result[batch] = torch.where(found, inside.to(torch.uint8).argmax(dim=1), -1).to(torch.int32)
    return result

"""CPU stand-in for ``pcdet.datasets.kitti.kitti_object_eval_python.rotate_iou``.

OpenPCDet's KITTI evaluator computes BEV and 3D overlaps with ``rotate_iou_gpu_eval``, a numba.cuda kernel
that is compiled when the module is imported, so the evaluator cannot even be imported without a GPU.
:func:`pcdet_gciou.openpcdet.cpu.install` serves this module under that name instead.

The evaluator passes camera-frame boxes ``(N, 5)`` = ``[x, z, l, w, ry]`` (the ground plane of KITTI's
camera frame). The kernel builds corners with the matrix ``[[cos, sin], [-sin, cos]]``, i.e. it rotates by
``-ry`` in the (x, z) plane ("clockwise when positive"); in our counter-clockwise convention the same
rectangle has heading ``-ry``.
"""

from __future__ import annotations

import numpy as np
import torch

from pcdet_gciou.geometry import rotated_overlap_bev

from .box_ops import pairwise_box_values

__all__ = ["rotate_iou_gpu_eval"]


def _as_boxes(boxes: np.ndarray, name: str) -> torch.Tensor:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{name} must have shape (N, 5) [x, z, l, w, ry], got {boxes.shape}")
    planar = torch.from_numpy(boxes.astype(np.float64))
    lifted = planar.new_zeros(planar.shape[0], 7)
    lifted[:, [0, 1, 3, 4]] = planar[:, :4]
    lifted[:, 5] = 1.0
    lifted[:, 6] = -planar[:, 4]
    return lifted


def _intersection_area(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    return rotated_overlap_bev(boxes_a, boxes_b)[0]


def rotate_iou_gpu_eval(boxes: np.ndarray, query_boxes: np.ndarray, criterion: int = -1, device_id: int = 0):
    """Rotated overlap ``(N, K)`` of camera-frame ground-plane boxes, on CPU.

    Args:
        boxes: ``(N, 5)`` ``[x, z, l, w, ry]``.
        query_boxes: ``(K, 5)`` likewise.
        criterion: ``-1`` IoU, ``0`` intersection / area of ``boxes``, ``1`` intersection / area of
            ``query_boxes``, any other value the intersection area itself (as the original kernel).
        device_id: ignored; kept for the original signature.

    Returns:
        ``(N, K)`` array of ``boxes``' dtype.
    """
    lifted_a, lifted_b = _as_boxes(boxes, "boxes"), _as_boxes(query_boxes, "query_boxes")
    intersection = pairwise_box_values(lifted_a, lifted_b, _intersection_area, dtype=torch.float64)
    area_a = (lifted_a[:, 3] * lifted_a[:, 4])[:, None]
    area_b = (lifted_b[:, 3] * lifted_b[:, 4])[None, :]
    if criterion == -1:
        union = area_a + area_b - intersection
        result = torch.where(intersection > 0, intersection / union.clamp_min(1e-12), torch.zeros_like(intersection))
    elif criterion == 0:
        result = torch.where(intersection > 0, intersection / area_a.clamp_min(1e-12), torch.zeros_like(intersection))
    elif criterion == 1:
        result = torch.where(intersection > 0, intersection / area_b.clamp_min(1e-12), torch.zeros_like(intersection))
    else:
        result = intersection
    return result.numpy().astype(np.asarray(boxes).dtype)

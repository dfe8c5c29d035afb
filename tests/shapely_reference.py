"""Slow, independent float64 reference for rotated box overlap, built on shapely polygons.

Written from the box convention alone (``[x, y, z, dx, dy, dz, heading]``, dx along the heading, heading
counter-clockwise about +z, z = centre), one pair at a time in Python floats. Shared by the geometry tests and
the benchmark's "reference loop" row. Zero-area or zero-volume unions give IoU 0 by definition.
"""

from __future__ import annotations

import math

import torch
from shapely.geometry import Polygon


def corners_bev(box, origin=(0.0, 0.0)) -> list[tuple[float, float]]:
    """The four BEV corners of one box, counter-clockwise, relative to ``origin``."""
    x, y, _, dx, dy, _, heading = (float(v) for v in box)
    cos_h, sin_h = math.cos(heading), math.sin(heading)
    x, y = x - origin[0], y - origin[1]
    local = ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2))
    return [(x + u * cos_h - v * sin_h, y + u * sin_h + v * cos_h) for u, v in local]


def overlap_bev(box1, box2) -> tuple[float, float]:
    """(intersection area, union area) of one pair."""
    area1 = float(box1[3]) * float(box1[4])
    area2 = float(box2[3]) * float(box2[4])
    if area1 <= 0.0 or area2 <= 0.0:
        intersection = 0.0
    else:
        # Coordinates relative to box 1's centre keep shapely's shoelace sums accurate at 1e4 m.
        origin = (float(box1[0]), float(box1[1]))
        intersection = Polygon(corners_bev(box1, origin)).intersection(Polygon(corners_bev(box2, origin))).area
    return intersection, area1 + area2 - intersection


def overlap_3d(box1, box2) -> tuple[float, float]:
    """(intersection volume, union volume) of one pair: BEV intersection times z overlap."""
    area_intersection, _ = overlap_bev(box1, box2)
    z1, dz1, z2, dz2 = float(box1[2]), float(box1[5]), float(box2[2]), float(box2[5])
    z_overlap = max(0.0, min(z1 + dz1 / 2, z2 + dz2 / 2) - max(z1 - dz1 / 2, z2 - dz2 / 2))
    intersection = area_intersection * z_overlap
    volume1 = float(box1[3]) * float(box1[4]) * dz1
    volume2 = float(box2[3]) * float(box2[4]) * dz2
    return intersection, volume1 + volume2 - intersection


def _ratio(intersection: float, union: float) -> float:
    return intersection / union if union > 0.0 else 0.0


def iou_bev_pair(box1, box2) -> float:
    return _ratio(*overlap_bev(box1, box2))


def iou_3d_pair(box1, box2) -> float:
    return _ratio(*overlap_3d(box1, box2))


def _paired(pair_fn, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    b1, b2 = torch.broadcast_tensors(boxes1.detach().cpu().double(), boxes2.detach().cpu().double())
    flat1, flat2 = b1.reshape(-1, 7).tolist(), b2.reshape(-1, 7).tolist()
    values = [pair_fn(p, q) for p, q in zip(flat1, flat2)]
    return torch.tensor(values, dtype=torch.float64).reshape(b1.shape[:-1])


def iou_bev(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Reference BEV IoU of paired (broadcast) boxes ``(..., 7)`` -> ``(...)``, float64 on CPU."""
    return _paired(iou_bev_pair, boxes1, boxes2)


def iou_3d(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Reference 3D IoU of paired (broadcast) boxes ``(..., 7)`` -> ``(...)``, float64 on CPU."""
    return _paired(iou_3d_pair, boxes1, boxes2)


def _paired_overlap(overlap_fn, boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b1, b2 = torch.broadcast_tensors(boxes1.detach().cpu().double(), boxes2.detach().cpu().double())
    values = [overlap_fn(p, q) for p, q in zip(b1.reshape(-1, 7).tolist(), b2.reshape(-1, 7).tolist())]
    table = torch.tensor(values, dtype=torch.float64).reshape(*b1.shape[:-1], 2)
    return table[..., 0], table[..., 1]


def overlap_3d_paired(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (intersection volume, union volume) of paired boxes, float64 on CPU."""
    return _paired_overlap(overlap_3d, boxes1, boxes2)


def overlap_bev_paired(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (intersection area, union area) of paired boxes, float64 on CPU."""
    return _paired_overlap(overlap_bev, boxes1, boxes2)


def iou_matrix(pair_fn, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Reference ``(N, M)`` matrix from a pair function, by the obvious double loop."""
    rows1 = boxes1.detach().cpu().double().tolist()
    rows2 = boxes2.detach().cpu().double().tolist()
    values = [[pair_fn(p, q) for q in rows2] for p in rows1]
    return torch.tensor(values, dtype=torch.float64).reshape(len(rows1), len(rows2))

"""Box geometry in pure torch: the box convention, exact differentiable rotated IoU, and helpers.

Imports nothing but torch. See :mod:`pcdet_gciou.geometry.boxes` for the box convention.
"""

from .boxes import (
    box_corners_3d,
    box_corners_bev,
    center_distance_sq,
    check_box_pair,
    check_boxes,
    check_boxes_finite,
    enclosing_box_3d,
    enclosing_box_bev,
    enclosing_z_extent,
    heading_error,
    points_in_boxes_mask,
)
from .iou import (
    rotated_iou_3d,
    rotated_iou_3d_matrix,
    rotated_iou_bev,
    rotated_iou_bev_matrix,
    rotated_overlap_3d,
    rotated_overlap_bev,
)

__all__ = [
    "box_corners_3d",
    "box_corners_bev",
    "center_distance_sq",
    "check_box_pair",
    "check_boxes",
    "check_boxes_finite",
    "enclosing_box_3d",
    "enclosing_box_bev",
    "enclosing_z_extent",
    "heading_error",
    "points_in_boxes_mask",
    "rotated_iou_3d",
    "rotated_iou_3d_matrix",
    "rotated_iou_bev",
    "rotated_iou_bev_matrix",
    "rotated_overlap_3d",
    "rotated_overlap_bev",
]

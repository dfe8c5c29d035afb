"""Box geometry in pure torch: the box convention, exact differentiable rotated IoU, the pair prefilter, helpers.

Imports nothing but torch. See :mod:`pcdet_gciou.geometry.boxes` for the box convention.

Hardening contract (every function here):

- a box with a NaN or infinite parameter gives NaN for its pair (IoU, overlap, matrix row/column), never a
  silent number;
- a pair is degenerate (IoU 0) only when both boxes have zero volume: no absolute size threshold;
- headings of any magnitude are reduced (through their own cosine and sine) before they are compared;
- at identical boxes the IoU's gradient is 0, the subgradient that leaves a perfect box in place;
- half-precision inputs compute in float32, mixed dtypes are promoted (:func:`promote_box_pair`).
"""

from . import chunking
from .boxes import (
    box_corners_3d,
    box_corners_bev,
    center_distance_sq,
    check_box_pair,
    check_boxes,
    check_boxes_finite,
    detach_identical_pairs,
    enclosing_box_3d,
    enclosing_box_bev,
    enclosing_z_extent,
    geometry_float,
    heading_cos_error,
    heading_error,
    points_in_boxes_mask,
    promote_box_pair,
)
from .iou import (
    iou_from_overlap,
    rotated_iou_3d,
    rotated_iou_3d_matrix,
    rotated_iou_bev,
    rotated_iou_bev_matrix,
    rotated_overlap_3d,
    rotated_overlap_bev,
)
from .pairs import candidate_pairs, fill_nonfinite_pairs, x_sweep_blocks

__all__ = [
    "chunking",
    "box_corners_3d",
    "box_corners_bev",
    "candidate_pairs",
    "center_distance_sq",
    "check_box_pair",
    "check_boxes",
    "check_boxes_finite",
    "detach_identical_pairs",
    "enclosing_box_3d",
    "enclosing_box_bev",
    "enclosing_z_extent",
    "fill_nonfinite_pairs",
    "geometry_float",
    "heading_cos_error",
    "heading_error",
    "iou_from_overlap",
    "points_in_boxes_mask",
    "promote_box_pair",
    "rotated_iou_3d",
    "rotated_iou_3d_matrix",
    "rotated_iou_bev",
    "rotated_iou_bev_matrix",
    "rotated_overlap_3d",
    "rotated_overlap_bev",
    "x_sweep_blocks",
]

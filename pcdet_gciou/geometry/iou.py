"""Exact, differentiable IoU of rotated boxes (BEV and 3D), in pure torch.

How the intersection is computed
--------------------------------
Work in the frame of one box (the *region*, the one with the larger extent), where it is the axis-aligned
rectangle ``[-a, a] x [-b, b]``. Walk the boundary of the other box (the *path*) and map every point through
``pi(x, y) = (clamp(x, -a, a), clamp(y, -b, b))``, the nearest-point projection onto the region. The projected
path winds once around every point of the intersection and zero times around every other point, so its
shoelace area is exactly the intersection area (parts outside the region collapse onto the region's boundary
and enclose nothing). ``pi`` is affine between the parameters where an edge crosses ``x = +-a`` or
``y = +-b``, so sampling each edge at its start and its (at most four) crossings, in order, gives the projected
path exactly: 4 edges x 5 points, elementwise apart from ordering four numbers per edge, with no data-dependent
shapes. This is Sutherland-Hodgman clipping against the four half-planes done in one pass.

Lengths are measured in units of the region's half extents, so the region is the square ``[-1, 1]^2`` and the
clamps have constant bounds (a cheaper backward); the area is scaled back by ``a * b``.

Precision: coordinates are relative to the region's centre and the shoelace is taken about the path's
centre, so float32 stays accurate for boxes 1e4 m from the origin; the smaller box is always the path, so
the crossing parameters are well conditioned even when one box is 1e11 m long.

References: Sutherland & Hodgman, "Reentrant polygon clipping", CACM 1974; the GCIoU paper (Ming et al.,
CVPR 2023) uses the exact rotated 3D IoU ``I / U``, ``U = V1 + V2 - I`` (Sec. 3.1).
"""

from __future__ import annotations

import warnings
from typing import Callable, Tuple

import torch

from .boxes import check_box_pair, detach_identical_pairs, promote_box_pair
from .chunking import BLOCK_ELEMENTS, PAIRS_PER_CHUNK
from .pairs import _check_matrix_inputs, candidate_pairs, fill_nonfinite_pairs

__all__ = [
    "iou_from_overlap",
    "rotated_overlap_bev",
    "rotated_overlap_3d",
    "rotated_iou_bev",
    "rotated_iou_3d",
    "rotated_iou_bev_matrix",
    "rotated_iou_3d_matrix",
]


def _edge_crossings(start: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Edge parameters t where ``start + t * step`` crosses ``x = +-1`` or ``y = +-1``: ``(..., edges, 4)``.

    ``start`` and ``step`` are ``(..., edges, 2)`` (x, y). Only crossings strictly inside the edge (0 < t < 1) are
    real; a line the edge does not cross contributes t = 0, a harmless extra sample of the edge's start.
    """
    gap = start.new_tensor([-1.0, 1.0]) - start[..., None]  # (..., edges, 2 coordinates, 2 bounds)
    step = step[..., None]
    with torch.no_grad():
        crosses = gap * (gap - step) < 0  # strictly opposite sides, so step != 0
    return torch.where(crosses, gap / torch.where(crosses, step, 1.0), 0.0).flatten(-2)


def _bev_intersection_area(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection area of broadcast ``(..., 7)`` boxes in float32/float64: ``(...)``."""
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    path_is_1 = torch.maximum(boxes1[..., 3], boxes1[..., 4]) < torch.maximum(boxes2[..., 3], boxes2[..., 4])
    region = torch.where(path_is_1[..., None], boxes2, boxes1)
    path = torch.where(path_is_1[..., None], boxes1, boxes2)

    half_a = region[..., 3].clamp_min(0) / 2
    half_b = region[..., 4].clamp_min(0) / 2
    # Lengths in units of the region's half extents, where it is the square [-1, 1]^2: the clamps get constant
    # bounds (a backward without bound gradients to reduce) and the area is scaled back by a * b at the end.
    unit_a = torch.where(half_a > 0, half_a, torch.ones_like(half_a))[..., None]
    unit_b = torch.where(half_b > 0, half_b, torch.ones_like(half_b))[..., None]
    cos_r, sin_r = torch.cos(region[..., 6]), torch.sin(region[..., 6])
    offset_x = path[..., 0] - region[..., 0]
    offset_y = path[..., 1] - region[..., 1]
    centre_x = (offset_x * cos_r + offset_y * sin_r)[..., None] / unit_a  # path centre in the region frame
    centre_y = (-offset_x * sin_r + offset_y * cos_r)[..., None] / unit_b
    # Relative rotation from each heading's own cosine and sine: large headings are reduced before differencing.
    cos_h, sin_h = torch.cos(path[..., 6]), torch.sin(path[..., 6])
    cos_p = (cos_h * cos_r + sin_h * sin_r)[..., None]
    sin_p = (sin_h * cos_r - cos_h * sin_r)[..., None]

    sign_x = path.new_tensor([1.0, 1.0, -1.0, -1.0])  # counter-clockwise corners
    sign_y = path.new_tensor([-1.0, 1.0, 1.0, -1.0])
    local_x = sign_x * (path[..., 3:4].clamp_min(0) / 2)
    local_y = sign_y * (path[..., 4:5].clamp_min(0) / 2)
    start_x = centre_x + (local_x * cos_p - local_y * sin_p) / unit_a  # (..., 4)
    start_y = centre_y + (local_x * sin_p + local_y * cos_p) / unit_b
    step_x = torch.roll(start_x, -1, dims=-1) - start_x
    step_y = torch.roll(start_y, -1, dims=-1) - start_y

    # Sample every edge at its start and at its (up to four) crossings, in ascending t. The order is found
    # without gradient; the gradient flows through the gathered t values into the sample points.
    crossings = _edge_crossings(torch.stack([start_x, start_y], dim=-1), torch.stack([step_x, step_y], dim=-1))
    order = torch.argsort(crossings.detach(), dim=-1)
    t = torch.cat([torch.zeros_like(crossings[..., :1]), crossings.gather(-1, order)], dim=-1)  # (..., 4, 5)

    x = torch.clamp(start_x[..., None] + t * step_x[..., None], -1.0, 1.0)
    y = torch.clamp(start_y[..., None] + t * step_y[..., None], -1.0, 1.0)
    x = x.flatten(-2) - centre_x  # shoelace about the path centre: small numbers, small rounding
    y = y.flatten(-2) - centre_y
    twice_area = (x * torch.roll(y, -1, dims=-1) - torch.roll(x, -1, dims=-1) * y).sum(dim=-1)
    return (twice_area * (half_a * half_b / 2)).clamp_min(0)


def _overlap_3d_kernel(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    area = _bev_intersection_area(boxes1, boxes2)
    size1, size2 = boxes1[..., 3:6].clamp_min(0), boxes2[..., 3:6].clamp_min(0)
    top = torch.minimum(boxes1[..., 2] + size1[..., 2] / 2, boxes2[..., 2] + size2[..., 2] / 2)
    bottom = torch.maximum(boxes1[..., 2] - size1[..., 2] / 2, boxes2[..., 2] - size2[..., 2] / 2)
    volume1, volume2 = size1.prod(dim=-1), size2.prod(dim=-1)
    # Rounding may push the clipped volume a hair above the smaller box: keep 0 <= IoU <= 1 exactly.
    intersection = torch.minimum(area * (top - bottom).clamp_min(0), torch.minimum(volume1, volume2))
    return intersection, volume1 + volume2 - intersection


def _overlap_bev_kernel(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    area1 = boxes1[..., 3].clamp_min(0) * boxes1[..., 4].clamp_min(0)
    area2 = boxes2[..., 3].clamp_min(0) * boxes2[..., 4].clamp_min(0)
    intersection = torch.minimum(_bev_intersection_area(boxes1, boxes2), torch.minimum(area1, area2))
    return intersection, area1 + area2 - intersection


_compiled_kernels: dict = {}


def _kernel(kernel: Callable, compiled: bool) -> Callable:
    """The eager kernel, or a lazily built ``torch.compile`` of it (falls back to eager if compiling fails)."""
    if not compiled:
        return kernel
    if kernel not in _compiled_kernels:
        compiled_kernel = torch.compile(kernel, dynamic=True)

        def run(boxes1: torch.Tensor, boxes2: torch.Tensor):
            if _compiled_kernels[kernel] is kernel:
                return kernel(boxes1, boxes2)
            try:
                return compiled_kernel(boxes1, boxes2)
            except Exception as exc:  # a missing C compiler or an unsupported backend: stay correct
                warnings.warn(
                    f"torch.compile of the IoU kernel failed ({type(exc).__name__}: {exc}); using eager", stacklevel=2
                )
                _compiled_kernels[kernel] = kernel
                return kernel(boxes1, boxes2)

        _compiled_kernels[kernel] = run
    return _compiled_kernels[kernel]


def _overlap(kernel: Callable, boxes1: torch.Tensor, boxes2: torch.Tensor, compiled: bool):
    shape = check_box_pair(boxes1, boxes2)
    with torch.autocast(device_type=boxes1.device.type, enabled=False):
        boxes1, boxes2 = promote_box_pair(boxes1, boxes2)
        run = _kernel(kernel, compiled)
        pairs = shape.numel()
        if pairs <= PAIRS_PER_CHUNK:
            intersection, union = run(boxes1, boxes2)
        else:
            flat1 = boxes1.expand(*shape, 7).reshape(pairs, 7)
            flat2 = boxes2.expand(*shape, 7).reshape(pairs, 7)
            parts = [
                run(flat1[i : i + PAIRS_PER_CHUNK], flat2[i : i + PAIRS_PER_CHUNK])
                for i in range(0, pairs, PAIRS_PER_CHUNK)
            ]
            intersection, union = (torch.cat([part[k] for part in parts]).view(shape) for k in range(2))
        # A non-finite parameter makes the pair's values NaN, never a silent number: the row sums (one cheap
        # matrix-vector product) are finite exactly when every parameter is, so ``0 * sum`` is 0 or NaN.
        ones = boxes1.new_ones(7)
        nan_if_not_finite = (boxes1.detach() @ ones + boxes2.detach() @ ones) * 0
        return intersection + nan_if_not_finite, union + nan_if_not_finite


def rotated_overlap_3d(
    boxes1: torch.Tensor, boxes2: torch.Tensor, *, compiled: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union volumes of paired rotated 3D boxes.

    Args:
        boxes1: ``(..., 7)`` boxes ``[x, y, z, dx, dy, dz, heading]`` (see :mod:`pcdet_gciou.geometry.boxes`).
        boxes2: ``(..., 7)`` boxes, broadcastable with ``boxes1``.
        compiled: run a ``torch.compile``-d kernel (built on first use; falls back to eager with a warning).

    Returns:
        ``(intersection, union)``, each of the broadcast leading shape, in float32 for half-precision
        inputs (also under autocast) and in the promoted input dtype otherwise. ``union = V1 + V2 - intersection``.
        Differentiable w.r.t. all seven parameters of both boxes. Both are NaN for a pair with a NaN or
        infinite parameter.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> rotated_overlap_3d(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # 3 x 2 x 1.5 = 9; 12 + 12 - 9
        (tensor(9.), tensor(15.))
    """
    return _overlap(_overlap_3d_kernel, boxes1, boxes2, compiled)


def rotated_overlap_bev(
    boxes1: torch.Tensor, boxes2: torch.Tensor, *, compiled: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union areas of the boxes' BEV rectangles; as :func:`rotated_overlap_3d`.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0])
        >>> rotated_overlap_bev(a, a + torch.tensor([0, 0, 0, 0, 0, 0, 0.7853981633974483]))  # square vs. diamond
        (tensor(3.3137), tensor(4.6863))
    """
    return _overlap(_overlap_bev_kernel, boxes1, boxes2, compiled)


def iou_from_overlap(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """``intersection / union``, with 0 for degenerate pairs and NaN kept NaN.

    A pair is degenerate only when both boxes have zero volume (area), i.e. the union is 0: the cut-off is
    relative to the boxes' own size, not a threshold in m^3, so IoU stays scale-invariant and millimetre boxes get
    their exact IoU in float32. Unions below the dtype's smallest normal number count as 0 too, since ``1 / U``
    would overflow in the gradient. A NaN intersection or union (a non-finite box) gives NaN, never 0.

    Example:
        >>> iou_from_overlap(torch.tensor([9.0, 0.0, 1e-9, float("nan")]), torch.tensor([15.0, 0.0, 1e-9, 2.0]))
        tensor([0.6000, 0.0000, 1.0000,    nan])
    """
    degenerate = union < torch.finfo(union.dtype).tiny  # False for NaN: NaN passes through the ratio
    return torch.where(
        degenerate, torch.zeros_like(union), intersection / torch.where(degenerate, torch.ones_like(union), union)
    )


def rotated_iou_3d(boxes1: torch.Tensor, boxes2: torch.Tensor, *, compiled: bool = False) -> torch.Tensor:
    """Exact IoU of paired rotated 3D boxes, differentiable (heading included).

    ``IoU = I / U`` with ``I`` the volume of the intersection (BEV polygon area times z-overlap) and
    ``U = V1 + V2 - I``. Two zero-volume boxes get IoU 0 (:func:`iou_from_overlap`); a pair with a NaN or
    infinite parameter gets NaN. Headings of any size are reduced before they are compared. At identical boxes
    the gradient is 0 (:func:`pcdet_gciou.geometry.detach_identical_pairs`): the IoU's maximum is a kink, and 0
    is the subgradient that leaves a perfect box in place.

    Args:
        boxes1: ``(..., 7)`` boxes ``[x, y, z, dx, dy, dz, heading]``.
        boxes2: ``(..., 7)`` boxes, broadcastable with ``boxes1``.
        compiled: see :func:`rotated_overlap_3d`.

    Returns:
        ``(...)`` IoU in ``[0, 1]``.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> rotated_iou_3d(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))  # shifted by 1 m along x: 3/5
        tensor(0.6000)
    """
    iou = iou_from_overlap(*rotated_overlap_3d(boxes1, boxes2, compiled=compiled))
    return detach_identical_pairs(iou, boxes1, boxes2)


def rotated_iou_bev(boxes1: torch.Tensor, boxes2: torch.Tensor, *, compiled: bool = False) -> torch.Tensor:
    """Exact IoU of the paired boxes' BEV rectangles (z and dz ignored); as :func:`rotated_iou_3d`.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> rotated_iou_bev(a, a + torch.tensor([0, 0, 5.0, 0, 0, 0, 0]))  # z ignored
        tensor(1.)
    """
    iou = iou_from_overlap(*rotated_overlap_bev(boxes1, boxes2, compiled=compiled))
    return detach_identical_pairs(iou, boxes1, boxes2)


def _iou_matrix(
    boxes1: torch.Tensor, boxes2: torch.Tensor, use_height: bool, block_elements: int, pair_chunk: int
) -> torch.Tensor:
    _check_matrix_inputs(boxes1, boxes2)
    if isinstance(pair_chunk, bool) or not isinstance(pair_chunk, int) or pair_chunk < 1:
        raise ValueError(f"pair_chunk must be a positive int, got {pair_chunk!r}")
    boxes1, boxes2 = promote_box_pair(boxes1, boxes2)
    result = boxes1.new_zeros(boxes1.shape[0], boxes2.shape[0])
    index1, index2 = candidate_pairs(boxes1, boxes2, use_height=use_height, sort=False, block_elements=block_elements)
    kernel = _overlap_3d_kernel if use_height else _overlap_bev_kernel
    for start in range(0, index1.numel(), pair_chunk):
        i, j = index1[start : start + pair_chunk], index2[start : start + pair_chunk]
        result[i, j] = iou_from_overlap(*kernel(boxes1[i], boxes2[j]))
    return fill_nonfinite_pairs(result, boxes1, boxes2)  # never a silent 0 for a non-finite box


@torch.no_grad()
def rotated_iou_3d_matrix(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    *,
    block_elements: int = BLOCK_ELEMENTS,
    pair_chunk: int = PAIRS_PER_CHUNK,
) -> torch.Tensor:
    """All-pairs exact 3D IoU, without gradient (for NMS, target assignment and evaluation).

    Only the pairs :func:`pcdet_gciou.geometry.candidate_pairs` finds (sort and sweep, bounding circles and
    z-intervals, separating axes) go to the exact IoU, ``pair_chunk`` at a time; the others are exactly 0. Memory
    stays bounded by ``block_elements`` per prefilter block; the output itself is ``N * M`` floats. Rows and
    columns of boxes with a NaN or infinite parameter are NaN.

    Args:
        boxes1: ``(N, 7)`` boxes.
        boxes2: ``(M, 7)`` boxes.
        block_elements: largest dense block of the prefilter.
        pair_chunk: candidate pairs per exact-IoU call.

    Returns:
        ``(N, M)`` IoU matrix, float32 for half inputs, else the promoted input dtype.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [50.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> rotated_iou_3d_matrix(a, a[:1] + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))
        tensor([[0.6000],
                [0.0000]])
    """
    return _iou_matrix(boxes1, boxes2, True, block_elements, pair_chunk)


@torch.no_grad()
def rotated_iou_bev_matrix(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    *,
    block_elements: int = BLOCK_ELEMENTS,
    pair_chunk: int = PAIRS_PER_CHUNK,
) -> torch.Tensor:
    """All-pairs exact BEV IoU, without gradient; as :func:`rotated_iou_3d_matrix`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> rotated_iou_bev_matrix(a, a + torch.tensor([0, 0, 9.0, 0, 0, 0, 1.5707963267948966]))
        tensor([[0.3333]])
    """
    return _iou_matrix(boxes1, boxes2, False, block_elements, pair_chunk)

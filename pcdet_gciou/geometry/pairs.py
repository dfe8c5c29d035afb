"""The one pair prefilter of the package: which boxes (or points) can touch, without the all-pairs work.

Used by the IoU matrices (:func:`pcdet_gciou.geometry.rotated_iou_3d_matrix`), the portable NMS and the KITTI
evaluator's overlaps (``pcdet_gciou.openpcdet.cpu``), and, through :func:`x_sweep_blocks`, the portable ball query.

Three stages, each a necessary condition for a positive overlap, so no overlapping pair is ever dropped:

1. sort and sweep along x: a block of queries, taken in x order, meets only the boxes whose x lies within reach
   (binary search in the x-sorted boxes); inputs with at most ``SWEEP_ROWS**2`` pairs are one dense block;
2. BEV circumscribed circles (and, for 3D, z-intervals) meet, tested densely inside the block;
3. separating-axis test of the two rectangles (the exact overlap test of two convex polygons: they are disjoint
   iff their projections on one of the four edge normals are), which removes the circle test's false positives
   (about two thirds of its pairs in a cluttered scene) before the costly exact IoU; skipped for blocks with
   fewer than ``SEPARATING_AXIS_MIN_PAIRS`` circle pairs, where its fixed cost exceeds what it saves.

All tests run in float64 with a relative slack of 1e-9, so only pairs that touch or are disjoint can be dropped.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from .boxes import check_boxes
from .chunking import BLOCK_ELEMENTS, SWEEP_ROWS

__all__ = ["x_sweep_blocks", "candidate_pairs", "fill_nonfinite_pairs"]

_SLACK = 1 + 1e-9

#: Below this many circle pairs in a block the separating-axis stage costs more (fixed per-call overhead) than the
#: exact IoU it saves, so it is skipped: the result is still a superset of the overlapping pairs.
SEPARATING_AXIS_MIN_PAIRS = 512


def x_sweep_blocks(
    query_x: torch.Tensor,
    query_reach: torch.Tensor,
    point_x: torch.Tensor,
    point_reach: float,
    rows: int = SWEEP_ROWS,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Blocks of queries with every point that could lie within reach of one of them along x.

    Queries are processed in x order, ``rows`` at a time; for each block the candidates are the points whose x
    lies in ``[min(query_x - query_reach) - point_reach, max(query_x + query_reach) + point_reach]`` (necessary
    for being within reach in the plane or in space), found by binary search in the x-sorted points.

    Args:
        query_x: ``(Q,)`` query x coordinates.
        query_reach: ``(Q,)`` or scalar tensor: how far each query reaches.
        point_x: ``(P,)`` point x coordinates.
        point_reach: largest reach of any point (0 for plain points).
        rows: queries per block.

    Yields:
        ``(query_idx, point_idx)`` int64 index tensors into the inputs.

    Example:
        >>> blocks = list(x_sweep_blocks(torch.tensor([0.0, 10.0]), torch.tensor(1.0), torch.tensor([0.5, 5.0]), 0.0))
        >>> [(q.tolist(), p.tolist()) for q, p in blocks]
        [([0, 1], [0, 1])]
        >>> [(q.tolist(), p.tolist()) for q, p in x_sweep_blocks(torch.tensor([0.0, 10.0]), torch.tensor(1.0),
        ...                                                        torch.tensor([0.5, 5.0]), 0.0, rows=1)]
        [([0], [0]), ([1], [])]
    """
    query_reach = torch.as_tensor(query_reach, dtype=query_x.dtype, device=query_x.device).expand_as(query_x)
    query_order = torch.argsort(query_x)
    point_order = torch.argsort(point_x)
    sorted_point_x = point_x[point_order].contiguous()
    low_edge = query_x - query_reach
    high_edge = query_x + query_reach
    for start in range(0, query_x.shape[0], rows):
        queries = query_order[start : start + rows]
        # Relative slack: the bounds are only a prefilter, so err on the side of more candidates.
        low = low_edge[queries].min() - point_reach
        high = high_edge[queries].max() + point_reach
        slack = 1e-6 * (1.0 + max(abs(float(low)), abs(float(high))))
        first = int(torch.searchsorted(sorted_point_x, low - slack, right=False))
        last = int(torch.searchsorted(sorted_point_x, high + slack, right=True))
        yield queries, point_order[first:last]


class _Rectangles:
    """Float64 BEV frame data of boxes: centre, half extents, BEV circumradius, z-interval, heading cosine/sine."""

    def __init__(self, boxes: torch.Tensor) -> None:
        self.boxes = boxes.double()
        self.x, self.y, self.z = self.boxes[:, 0], self.boxes[:, 1], self.boxes[:, 2]
        half = self.boxes[:, 3:6].clamp_min(0) / 2
        self.half_x, self.half_y, self.half_z = half[:, 0], half[:, 1], half[:, 2]
        self.radius = torch.hypot(self.half_x, self.half_y)
        self._cos_sin: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def cos_sin(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Heading cosine and sine, computed once and only if the separating-axis stage runs."""
        if self._cos_sin is None:
            self._cos_sin = torch.cos(self.boxes[:, 6]), torch.sin(self.boxes[:, 6])
        return self._cos_sin


def _circles_meet(a: _Rectangles, b: _Rectangles, rows: torch.Tensor, cols: torch.Tensor, use_height: bool):
    """Dense ``(rows, cols)`` mask: BEV circumscribed circles (and z-intervals) meet."""
    # Explicit differences, not torch.cdist: its matmul shortcut loses precision for nearby centres.
    distance_sq = (a.x[rows, None] - b.x[None, cols]).square_()
    distance_sq.add_((a.y[rows, None] - b.y[None, cols]).square_())
    reach_sq = (a.radius[rows, None] + b.radius[None, cols]).square_()
    near = distance_sq <= reach_sq.mul_(_SLACK)
    if use_height:
        near &= (a.z[rows, None] - b.z[None, cols]).abs() <= (a.half_z[rows, None] + b.half_z[None, cols]) * _SLACK
    return near


def _rectangles_meet(a: _Rectangles, b: _Rectangles, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Separating-axis test of paired BEV rectangles ``a[i]``, ``b[j]``: ``(P,)`` True unless provably disjoint."""
    dx, dy = b.x[j] - a.x[i], b.y[j] - a.y[i]
    (cos_a, sin_a), (cos_b, sin_b) = a.cos_sin(), b.cos_sin()
    cos_a, sin_a, cos_b, sin_b = cos_a[i], sin_a[i], cos_b[j], sin_b[j]
    ax, ay, bx, by = a.half_x[i], a.half_y[i], b.half_x[j], b.half_y[j]
    cos_rel = (cos_a * cos_b + sin_a * sin_b).abs()  # |cos| and |sin| of the relative rotation
    sin_rel = (sin_b * cos_a - cos_b * sin_a).abs()
    meet = (dx * cos_a + dy * sin_a).abs() <= (ax + bx * cos_rel + by * sin_rel) * _SLACK
    meet &= (dy * cos_a - dx * sin_a).abs() <= (ay + bx * sin_rel + by * cos_rel) * _SLACK
    meet &= (dx * cos_b + dy * sin_b).abs() <= (bx + ax * cos_rel + ay * sin_rel) * _SLACK
    meet &= (dy * cos_b - dx * sin_b).abs() <= (by + ax * sin_rel + ay * cos_rel) * _SLACK
    return meet


def _nonfinite_rows(boxes: torch.Tensor) -> Optional[torch.Tensor]:
    """``(N,)`` mask of the boxes with a NaN or infinite parameter, or None when there are none."""
    if bool(torch.isfinite(boxes.sum())):  # one reduction decides the common case
        return None
    nonfinite = ~torch.isfinite(boxes).all(dim=1)
    return nonfinite if bool(nonfinite.any()) else None  # the sum overflowed, the boxes are finite


def _finite_rows(boxes: torch.Tensor) -> Optional[torch.Tensor]:
    """Indices of the boxes with only finite parameters, or None when that is all of them."""
    nonfinite = _nonfinite_rows(boxes)
    return None if nonfinite is None else (~nonfinite).nonzero()[:, 0]


def fill_nonfinite_pairs(matrix: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Set the rows of ``matrix`` for boxes1 and the columns for boxes2 with a NaN or infinite parameter to NaN.

    In place, and returned: a pair matrix never shows a silent number for a non-finite box.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0], [0.0, 0, 0, 1, 1, float("inf"), 0]])
        >>> fill_nonfinite_pairs(torch.zeros(2, 1), boxes, boxes[:1])
        tensor([[0.],
                [nan]])
    """
    for boxes, view in ((boxes1, matrix), (boxes2, matrix.T)):
        nonfinite = _nonfinite_rows(boxes)
        if nonfinite is not None:
            view[nonfinite] = float("nan")
    return matrix


def _check_matrix_inputs(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    if boxes1.dim() != 2 or boxes2.dim() != 2:
        raise ValueError(
            f"expected boxes1 (N, 7) and boxes2 (M, 7), got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    if boxes1.device != boxes2.device:
        raise ValueError(f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}")


@torch.no_grad()
def candidate_pairs(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    *,
    use_height: bool = False,
    sort: bool = True,
    block_elements: int = BLOCK_ELEMENTS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``(i, j)`` of boxes that may overlap: every pair with a positive BEV (3D) overlap is among them.

    See the module docstring for the three stages. Boxes with a non-finite parameter are never candidates (their
    IoU is NaN, which the callers fill in). Memory stays bounded by ``block_elements`` per dense block.

    Args:
        boxes1: ``(N, 7)`` boxes ``[x, y, z, dx, dy, dz, heading]``.
        boxes2: ``(M, 7)`` boxes.
        use_height: also require the z-intervals to meet (3D overlap).
        sort: return the pairs sorted by ``(i, j)`` (NMS walks them row by row); otherwise in sweep order.
        block_elements: largest dense block of the circle test.

    Returns:
        Two ``(P,)`` int64 tensors ``i`` and ``j``.

    Example:
        >>> car = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> others = torch.tensor([[3.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],   # overlaps
        ...                        [4.05, 0.5, 0.0, 4.0, 2.0, 1.5, 0.0],  # circles meet, rectangles do not
        ...                        [9.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])  # far
        >>> candidate_pairs(car, others)  # a block this small skips the separating axes: a superset
        (tensor([0, 0]), tensor([0, 1]))
    """
    _check_matrix_inputs(boxes1, boxes2)
    if isinstance(block_elements, bool) or not isinstance(block_elements, int) or block_elements < 1:
        raise ValueError(f"block_elements must be a positive int, got {block_elements!r}")
    empty = torch.zeros(0, dtype=torch.long, device=boxes1.device)
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return empty, empty.clone()
    index1, index2 = _finite_rows(boxes1), _finite_rows(boxes2)
    if (index1 is not None and index1.numel() == 0) or (index2 is not None and index2.numel() == 0):
        return empty, empty.clone()
    a = _Rectangles(boxes1 if index1 is None else boxes1[index1])
    b = _Rectangles(boxes2 if index2 is None else boxes2[index2])
    pairs_i, pairs_j = [], []
    if a.x.numel() * b.x.numel() <= SWEEP_ROWS**2:  # small: one dense block, no sweep, pairs come out sorted
        blocks = [(torch.arange(a.x.numel(), device=a.x.device), torch.arange(b.x.numel(), device=b.x.device))]
    else:
        blocks = x_sweep_blocks(a.x, a.radius, b.x, float(b.radius.max()))
    for rows_a, cols_b in blocks:
        if cols_b.numel() == 0:
            continue
        for rows in rows_a.split(max(1, block_elements // cols_b.numel())):
            i, j = _circles_meet(a, b, rows, cols_b, use_height).nonzero(as_tuple=True)
            i, j = rows[i], cols_b[j]
            if i.numel() >= SEPARATING_AXIS_MIN_PAIRS:
                meet = _rectangles_meet(a, b, i, j)
                i, j = i[meet], j[meet]
            pairs_i.append(i)
            pairs_j.append(j)
    if not pairs_i:
        return empty, empty.clone()
    pair_i, pair_j = torch.cat(pairs_i), torch.cat(pairs_j)
    pair_i = pair_i if index1 is None else index1[pair_i]
    pair_j = pair_j if index2 is None else index2[pair_j]
    if sort and len(pairs_i) > 1:
        order = torch.argsort(pair_i * boxes2.shape[0] + pair_j)
        pair_i, pair_j = pair_i[order], pair_j[order]
    return pair_i, pair_j

"""Sort-and-sweep candidate search shared by the pairwise box ops and the ball query."""

from __future__ import annotations

from typing import Iterator

import torch


def x_sweep_blocks(
    query_x: torch.Tensor, query_reach: torch.Tensor, point_x: torch.Tensor, point_reach: float, rows: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Blocks of queries with every point that could lie within reach of one of them along x.

    Queries are processed in x order, ``rows`` at a time; for each block the candidates are the points whose x lies
    in ``[min(query_x - query_reach) - point_reach, max(query_x + query_reach) + point_reach]`` (a necessary
    condition for being within reach in the plane or in space), found by binary search in the x-sorted points.

    Args:
        query_x: ``(Q,)`` query x coordinates.
        query_reach: ``(Q,)`` or scalar tensor: how far each query reaches.
        point_x: ``(P,)`` point x coordinates.
        point_reach: largest reach of any point (0 for plain points).
        rows: queries per block.

    Yields:
        ``(query_idx, point_idx)`` int64 index tensors into the inputs.
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

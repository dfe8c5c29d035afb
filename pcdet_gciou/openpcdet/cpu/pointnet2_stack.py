"""Pure-torch versions of OpenPCDet's stacked PointNet++ ops (``pcdet.ops.pointnet2.pointnet2_stack``).

They replace the functions of ``pointnet2_stack.pointnet2_utils`` that call the compiled
``pointnet2_stack_cuda`` extension, with the same signatures, index conventions and edge cases, so that
PV-RCNN's keypoint sampling (FPS), set abstraction (ball query + grouping) and interpolation run on CPU.
Gradients flow through :func:`grouping_operation` and :func:`three_interpolate` by ordinary autograd.

"Stacked" tensors hold the points of all samples one after another; ``*_batch_cnt`` gives the count per sample.
Work is vectorised per sample; ball queries only compare a block of centres with the points in their x-range
(sort and sweep). Farthest-point sampling is inherently sequential and loops once per sampled point.
"""

from __future__ import annotations

import torch

from ...geometry.chunking import BALL_QUERY_SWEEP_ROWS as _SWEEP_ROWS
from ...geometry.chunking import BLOCK_ELEMENTS as _BLOCK_ELEMENTS
from ...geometry.pairs import x_sweep_blocks

__all__ = [
    "ball_query",
    "grouping_operation",
    "farthest_point_sample",
    "stack_farthest_point_sample",
    "three_nn",
    "three_interpolate",
    "PATCHES",
]


def _batch_starts(batch_cnt: torch.Tensor) -> list[int]:
    counts = [int(c) for c in batch_cnt.tolist()]
    starts = [0]
    for count in counts[:-1]:
        starts.append(starts[-1] + count)
    return starts


def _segments(batch_cnt: torch.Tensor) -> list[tuple[int, int]]:
    counts = [int(c) for c in batch_cnt.tolist()]
    return list(zip(_batch_starts(batch_cnt), counts))


def ball_query(
    radius: float,
    nsample: int,
    xyz: torch.Tensor,
    xyz_batch_cnt: torch.Tensor,
    new_xyz: torch.Tensor,
    new_xyz_batch_cnt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``nsample`` points (in storage order) strictly within ``radius`` of each query centre.

    Args:
        radius: ball radius.
        nsample: slots per ball.
        xyz: ``(N1 + N2 ..., 3)`` stacked points.
        xyz_batch_cnt: ``(B,)`` ``[N1, N2, ...]``.
        new_xyz: ``(M1 + M2 ..., 3)`` stacked centres.
        new_xyz_batch_cnt: ``(B,)`` ``[M1, M2, ...]``.

    Returns:
        ``idx`` ``(M, nsample)`` int32 indices *within the centre's sample*; unused slots repeat the first hit,
        empty balls are all zeros; ``empty_ball_mask`` ``(M,)`` bool.
    """
    if len(xyz_batch_cnt) != len(new_xyz_batch_cnt):
        raise ValueError(
            f"xyz_batch_cnt and new_xyz_batch_cnt need the same batch size, got "
            f"{len(xyz_batch_cnt)} and {len(new_xyz_batch_cnt)}"
        )
    idx = torch.zeros(new_xyz.shape[0], nsample, dtype=torch.int32, device=new_xyz.device)
    empty = torch.ones(new_xyz.shape[0], dtype=torch.bool, device=new_xyz.device)
    radius_sq = float(radius) ** 2
    for (point_start, num_points), (query_start, num_queries) in zip(
        _segments(xyz_batch_cnt), _segments(new_xyz_batch_cnt)
    ):
        if num_points == 0 or num_queries == 0:
            continue
        points = xyz[point_start : point_start + num_points]
        queries = new_xyz[query_start : query_start + num_queries]
        for query_rows, candidates in x_sweep_blocks(
            queries[:, 0], queries.new_tensor(float(radius)), points[:, 0], 0.0, rows=_SWEEP_ROWS
        ):
            if candidates.numel() == 0:
                continue
            # Storage order decides which hits fill the slots: sort candidate indices, non-hits get key num_points.
            candidates = candidates.sort().values
            near = queries[query_rows]
            distance_sq = (near[:, 0, None] - points[None, candidates, 0]).square_()
            distance_sq.add_((near[:, 1, None] - points[None, candidates, 1]).square_())
            distance_sq.add_((near[:, 2, None] - points[None, candidates, 2]).square_())
            keys = torch.where(distance_sq < radius_sq, candidates[None, :], num_points)
            take = min(nsample, candidates.numel())
            first = torch.topk(keys, take, dim=1, largest=False, sorted=True).values
            if take < nsample:
                first = torch.cat([first, first.new_full((first.shape[0], nsample - take), num_points)], dim=1)
            has_hit = first[:, 0] < num_points
            first = torch.where(first < num_points, first, first[:, :1])
            rows = query_rows + query_start
            idx[rows] = torch.where(has_hit[:, None], first, 0).to(torch.int32)
            empty[rows] = ~has_hit
    return idx, empty


def grouping_operation(
    features: torch.Tensor, features_batch_cnt: torch.Tensor, idx: torch.Tensor, idx_batch_cnt: torch.Tensor
) -> torch.Tensor:
    """Gather grouped points' features: ``(M, C, nsample)`` from ``(N, C)`` and per-sample ``idx`` ``(M, nsample)``."""
    if features.shape[0] != int(features_batch_cnt.sum()) or idx.shape[0] != int(idx_batch_cnt.sum()):
        raise ValueError(
            f"features {tuple(features.shape)} / idx {tuple(idx.shape)} do not match their batch counts "
            f"{features_batch_cnt.tolist()} / {idx_batch_cnt.tolist()}"
        )
    starts = torch.as_tensor(_batch_starts(features_batch_cnt), dtype=torch.long, device=features.device)
    sample_of_row = torch.repeat_interleave(  # output_size: no host sync on CUDA
        torch.arange(len(idx_batch_cnt), device=features.device),
        idx_batch_cnt.to(device=features.device, dtype=torch.long),
        output_size=idx.shape[0],
    )
    global_idx = idx.long() + starts[sample_of_row][:, None]
    return features[global_idx].permute(0, 2, 1).contiguous()


def _farthest_point_indices(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Greedy farthest-point sampling from index 0, ``(num_samples,)`` int64; repeats index 0 once exhausted."""
    selected = torch.zeros(num_samples, dtype=torch.long, device=points.device)
    if points.shape[0] == 0 or num_samples == 0:
        return selected
    nearest_sq = torch.full((points.shape[0],), 1e10, dtype=points.dtype, device=points.device)
    last = 0
    for step in range(1, num_samples):
        nearest_sq = torch.minimum(nearest_sq, (points - points[last]).square().sum(-1))
        last = int(nearest_sq.argmax())
        selected[step] = last
    return selected


def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Farthest-point sampling of ``(B, N, 3)`` points: ``(B, npoint)`` int32 indices, starting at index 0."""
    if xyz.dim() != 3 or xyz.shape[2] != 3:
        raise ValueError(f"xyz must have shape (B, N, 3), got {tuple(xyz.shape)}")
    with torch.no_grad():
        return torch.stack([_farthest_point_indices(points, int(npoint)) for points in xyz]).to(torch.int32)


def stack_farthest_point_sample(xyz: torch.Tensor, xyz_batch_cnt: torch.Tensor, npoint) -> torch.Tensor:
    """Per-sample farthest-point sampling of stacked points: ``(sum npoint,)`` int32 *stacked* indices.

    ``npoint`` is an int (same for every sample), a list, or a ``(B,)`` tensor.
    """
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must have shape (N, 3), got {tuple(xyz.shape)}")
    batch_size = len(xyz_batch_cnt)
    if isinstance(npoint, torch.Tensor):
        counts = [int(n) for n in npoint.tolist()]
    elif isinstance(npoint, (list, tuple)):
        counts = [int(n) for n in npoint]
    else:
        counts = [int(npoint)] * batch_size
    with torch.no_grad():
        chunks = [
            start + _farthest_point_indices(xyz[start : start + length], count)
            for (start, length), count in zip(_segments(xyz_batch_cnt), counts)
        ]
    if not chunks:
        return torch.zeros(0, dtype=torch.int32, device=xyz.device)
    return torch.cat(chunks).to(torch.int32)


def three_nn(
    unknown: torch.Tensor, unknown_batch_cnt: torch.Tensor, known: torch.Tensor, known_batch_cnt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three nearest known points of each unknown point, within its sample.

    Returns:
        ``dist`` ``(N, 3)`` Euclidean distances (ascending) and ``idx`` ``(N, 3)`` int32 *stacked* indices.
        Missing neighbours (fewer than three known points) get distance 1e20 and the sample's first index.
    """
    dist = unknown.new_full((unknown.shape[0], 3), 1e20)
    idx = torch.zeros(unknown.shape[0], 3, dtype=torch.int32, device=unknown.device)
    with torch.no_grad():
        for (query_start, num_queries), (known_start, num_known) in zip(
            _segments(unknown_batch_cnt), _segments(known_batch_cnt)
        ):
            idx[query_start : query_start + num_queries] = known_start
            if num_known == 0 or num_queries == 0:
                continue
            points = known[known_start : known_start + num_known]
            take = min(3, num_known)
            rows = max(1, _BLOCK_ELEMENTS // num_known)
            for start in range(query_start, query_start + num_queries, rows):
                stop = min(start + rows, query_start + num_queries)
                dist_sq = (unknown[start:stop, None, :] - points[None, :, :]).square().sum(-1)
                nearest = torch.topk(dist_sq, take, dim=1, largest=False, sorted=True)
                dist[start:stop, :take] = nearest.values.sqrt()
                idx[start:stop, :take] = (nearest.indices + known_start).to(torch.int32)
    return dist, idx


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of three gathered feature rows: ``(N, C)`` from ``(M, C)``, ``idx``/``weight`` ``(N, 3)``."""
    if idx.shape != weight.shape or idx.dim() != 2 or idx.shape[1] != 3:
        raise ValueError(f"idx and weight must both be (N, 3), got {tuple(idx.shape)} and {tuple(weight.shape)}")
    return (features[idx.long()] * weight[..., None]).sum(dim=1)


PATCHES = {
    "ball_query": ball_query,
    "grouping_operation": grouping_operation,
    "farthest_point_sample": farthest_point_sample,
    "furthest_point_sample": farthest_point_sample,
    "stack_farthest_point_sample": stack_farthest_point_sample,
    "three_nn": three_nn,
    "three_interpolate": three_interpolate,
}

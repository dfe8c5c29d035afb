"""Box convention, input checks and small box helpers (pure torch).

Box convention (the one OpenPCDet uses for LiDAR boxes)::

    boxes[..., :] = [x, y, z, dx, dy, dz, heading]

- LiDAR frame, metres: x forward, y left, z up.
- ``(x, y, z)`` is the box **centre** (z too, not the bottom).
- ``dx`` is the extent along the heading, ``dy`` across it, ``dz`` the height.
- ``heading`` is in radians, counter-clockwise about +z, measured from +x.
  A box is symmetric under ``heading + pi``: IoU cannot see the direction.

Corner order of :func:`box_corners_3d` (bottom face first, counter-clockwise seen from above, starting at
the front-right corner; "front" is the +dx end, where the heading points)::

    BEV, seen from above (bottom face 0..3, top face 4..7 above it)

        2 --------------- 1        ^ y (dy)
        |                 |        |
        |        c  --->  |        +---> x (dx), heading = 0
        |                 |
        3 --------------- 0

i.e. corners 0..3 = (+dx/2, -dy/2), (+dx/2, +dy/2), (-dx/2, +dy/2), (-dx/2, -dy/2) at z - dz/2, and 4..7 the
same at z + dz/2. :func:`box_corners_bev` returns corners 0..3 in (x, y).

Negative extents are treated as zero everywhere in :mod:`pcdet_gciou.geometry`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .chunking import POINTS_PER_CHUNK

BOX_DIM = 7


def check_boxes(name: str, boxes: object, *, ndim: Optional[int] = None) -> None:
    """Cheap structural check of a box tensor: a floating-point tensor of shape ``(..., 7)``.

    The package's one box check (no value check, so no device sync; see :func:`check_boxes_finite` for that).

    Args:
        name: the argument's name, for the message.
        boxes: the object to check.
        ndim: if given, the number of dimensions required, e.g. 2 for ``(N, 7)``.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: last dimension is not 7, or not ``ndim`` dimensions.

    Example:
        >>> check_boxes("boxes", torch.zeros(3, 7), ndim=2)
        >>> check_boxes("boxes", torch.zeros(3, 6))
        Traceback (most recent call last):
        ...
        ValueError: boxes must have shape (..., 7) = [x, y, z, dx, dy, dz, heading], got (3, 6)
    """
    expected = "(..., 7)" if ndim is None else "(N, 7)" if ndim == 2 else f"(..., 7) with {ndim} dimensions"
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(boxes).__name__}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {boxes.dtype}")
    if boxes.dim() == 0 or boxes.shape[-1] != BOX_DIM or (ndim is not None and boxes.dim() != ndim):
        raise ValueError(
            f"{name} must have shape {expected} = [x, y, z, dx, dy, dz, heading], got {tuple(boxes.shape)}"
        )


def check_box_pair(boxes1: object, boxes2: object, *, broadcast: bool = True) -> torch.Size:
    """Check two box tensors that are used together; returns the broadcast leading shape.

    Raises:
        TypeError / ValueError: as :func:`check_boxes`, plus mixed devices or shapes that do not broadcast
        (or, with ``broadcast=False``, that are not equal).

    Example:
        >>> check_box_pair(torch.zeros(4, 1, 7), torch.zeros(5, 7))
        torch.Size([4, 5])
    """
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    if boxes1.device != boxes2.device:
        raise ValueError(f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}")
    if not broadcast:
        if boxes1.shape != boxes2.shape:
            raise ValueError(
                f"pred and target must have the same shape (..., 7), got {tuple(boxes1.shape)} and "
                f"{tuple(boxes2.shape)}"
            )
        return boxes1.shape[:-1]
    try:
        return torch.broadcast_shapes(boxes1.shape[:-1], boxes2.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"leading dimensions of boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} do not broadcast"
        ) from None


def check_boxes_finite(name: str, boxes: torch.Tensor) -> None:
    """Value check (synchronises with the device): finite entries and non-negative extents.

    Not called by the IoU functions or the losses, which must not sync the device on every step; call it
    when debugging a diverging run (the geometry itself treats negative extents as zero and stays finite).

    Raises:
        ValueError: naming the first offending box.

    Example:
        >>> check_boxes_finite("pred", torch.tensor([[0.0, 0, 0, 1, 1, float("nan"), 0]]))
        Traceback (most recent call last):
        ...
        ValueError: pred[0] = [0.0, 0.0, 0.0, 1.0, 1.0, nan, 0.0] is not a valid box: expected finite values and \
non-negative extents dx, dy, dz
    """
    bad = ~torch.isfinite(boxes).all(dim=-1) | (boxes[..., 3:6] < 0).any(dim=-1)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}{list(index)} = {boxes[index].tolist()} is not a valid box: expected finite values and "
            "non-negative extents dx, dy, dz"
        )


def geometry_float(boxes: torch.Tensor) -> torch.Tensor:
    """``boxes`` in a dtype fit for polygon clipping: half precision becomes float32, float32/64 stay.

    Example:
        >>> geometry_float(torch.zeros(2, 7, dtype=torch.float16)).dtype
        torch.float32
    """
    if boxes.dtype in (torch.float16, torch.bfloat16):
        return boxes.float()
    return boxes


def promote_box_pair(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both box tensors in their common geometry dtype: :func:`geometry_float`, then ``torch.promote_types``.

    Every function of the package computes a pair in this dtype, losses included (no casting to ``pred``'s dtype).

    Example:
        >>> a, b = promote_box_pair(torch.zeros(7, dtype=torch.float16), torch.zeros(7, dtype=torch.float64))
        >>> a.dtype, b.dtype
        (torch.float64, torch.float64)
    """
    boxes1, boxes2 = geometry_float(boxes1), geometry_float(boxes2)
    if boxes1.dtype != boxes2.dtype:
        dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
        boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    return boxes1, boxes2


def detach_identical_pairs(value: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """``value`` (one per pair) with the pairs whose seven parameters are all equal cut from the graph.

    This is the zero subgradient at a perfect match. IoU and every loss built on it have a kink at
    ``boxes1 == boxes2`` (the overlap's min/max ties, the folded heading error's ``|.|``), where autograd returns
    one arbitrary one-sided slope that depends on the argument order. The match is the optimum, so 0 is a valid
    subgradient there. The values are unchanged; a no-op without autograd.

    Example:
        >>> pred = torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0.3]], requires_grad=True)
        >>> target = pred.detach().clone()
        >>> detach_identical_pairs((pred**2).sum(dim=-1), pred, target).sum().backward()
        >>> pred.grad
        tensor([[0., 0., 0., 0., 0., 0., 0.]])
    """
    if not torch.is_grad_enabled() or not value.requires_grad:
        return value
    identical = (boxes1.detach() == boxes2.detach()).all(dim=-1)
    return torch.where(identical, value.detach(), value)


def box_corners_bev(boxes: torch.Tensor) -> torch.Tensor:
    """BEV corners of boxes.

    Args:
        boxes: ``(..., 7)`` boxes ``[x, y, z, dx, dy, dz, heading]``.

    Returns:
        ``(..., 4, 2)`` corners 0..3 of the module docstring, counter-clockwise.

    Example:
        >>> box_corners_bev(torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]))
        tensor([[ 2., -1.],
                [ 2.,  1.],
                [-2.,  1.],
                [-2., -1.]])
    """
    check_boxes("boxes", boxes)
    half_x = boxes[..., 3:4].clamp_min(0) / 2
    half_y = boxes[..., 4:5].clamp_min(0) / 2
    sign_x = boxes.new_tensor([1.0, 1.0, -1.0, -1.0])
    sign_y = boxes.new_tensor([-1.0, 1.0, 1.0, -1.0])
    local_x = sign_x * half_x
    local_y = sign_y * half_y
    cos, sin = torch.cos(boxes[..., 6:7]), torch.sin(boxes[..., 6:7])
    x = boxes[..., 0:1] + local_x * cos - local_y * sin
    y = boxes[..., 1:2] + local_x * sin + local_y * cos
    return torch.stack([x, y], dim=-1)


def box_corners_3d(boxes: torch.Tensor) -> torch.Tensor:
    """3D corners of boxes.

    Args:
        boxes: ``(..., 7)`` boxes.

    Returns:
        ``(..., 8, 3)``: bottom face corners 0..3, then top face corners 4..7 (see the module docstring).

    Example:
        >>> box_corners_3d(torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]))[[0, 6]]
        tensor([[ 2.0000, -1.0000, -0.7500],
                [-2.0000,  1.0000,  0.7500]])
    """
    bev = box_corners_bev(boxes)
    half_z = boxes[..., 5:6].clamp_min(0) / 2
    z_bottom = (boxes[..., 2:3] - half_z).unsqueeze(-1).expand(*bev.shape[:-1], 1)
    z_top = (boxes[..., 2:3] + half_z).unsqueeze(-1).expand(*bev.shape[:-1], 1)
    return torch.cat([torch.cat([bev, z_bottom], dim=-1), torch.cat([bev, z_top], dim=-1)], dim=-2)


def heading_error(heading1: torch.Tensor, heading2: torch.Tensor) -> torch.Tensor:
    """Heading error folded modulo pi into ``[0, pi/2]`` (box IoU is blind to the direction).

    ``delta = atan2(|sin d|, |cos d|)`` with ``d = heading1 - heading2``, i.e. ``min(d mod pi, pi - d mod pi)``:
    the GCIoU paper's angle error theta (Sec. 3). ``sin d`` and ``cos d`` come from each heading's own cosine and
    sine, so headings far outside ``[-pi, pi]`` are reduced before they are differenced (float32 keeps 1e-4 at
    1e5 rad) and the result is symmetric in its arguments. At ``delta = 0`` the gradient is 0 (``|.|`` at 0).

    Args:
        heading1, heading2: broadcastable tensors of headings in radians.

    Returns:
        Tensor of the broadcast shape, values in ``[0, pi/2]``.

    Example:
        >>> heading_error(torch.tensor([0.1, 3.0]), torch.tensor([0.0, 0.0]))
        tensor([0.1000, 0.1416])
    """
    cos1, sin1, cos2, sin2 = torch.cos(heading1), torch.sin(heading1), torch.cos(heading2), torch.sin(heading2)
    sin_d = sin1 * cos2 - cos1 * sin2
    cos_d = cos1 * cos2 + sin1 * sin2
    return torch.atan2(sin_d.abs(), cos_d.abs())


def heading_cos_error(heading1: torch.Tensor, heading2: torch.Tensor) -> torch.Tensor:
    """``cos(heading1 - heading2)`` from each heading's own cosine and sine (no difference of large angles).

    Example:
        >>> heading_cos_error(torch.tensor([0.0, 1.0e5]), torch.tensor([3.141592653589793, 1.0e5]))
        tensor([-1.,  1.])
    """
    return torch.cos(heading1) * torch.cos(heading2) + torch.sin(heading1) * torch.sin(heading2)


def center_distance_sq(boxes1: torch.Tensor, boxes2: torch.Tensor, *, bev: bool = False) -> torch.Tensor:
    """Squared distance between box centres, ``(...)``; in (x, y) only when ``bev``.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> b = a + torch.tensor([3.0, 4.0, 12.0, 0, 0, 0, 0])
        >>> center_distance_sq(a, b), center_distance_sq(a, b, bev=True)
        (tensor(169.), tensor(25.))
    """
    check_box_pair(boxes1, boxes2)
    dims = 2 if bev else 3
    return ((boxes1[..., :dims] - boxes2[..., :dims]) ** 2).sum(dim=-1)


def enclosing_box_bev(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Smallest rectangle enclosing both boxes among those aligned with either box's heading.

    The exact minimum-area enclosing rectangle of two rotated boxes may take a third orientation (a hull
    edge bridging the two boxes); restricting to the two boxes' own orientations keeps the result smooth,
    symmetric and invariant to a shared rotation/translation, which is what GIoU/DIoU penalties need.

    Args:
        boxes1, boxes2: ``(..., 7)`` broadcastable boxes.

    Returns:
        ``(..., 3)`` = ``[extent_u, extent_v, heading]`` of the enclosing rectangle (area ``extent_u*extent_v``).

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> enclosing_box_bev(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))
        tensor([5., 2., 0.])
    """
    check_box_pair(boxes1, boxes2)
    corners = torch.cat(torch.broadcast_tensors(box_corners_bev(boxes1), box_corners_bev(boxes2)), dim=-2)
    headings = torch.stack(torch.broadcast_tensors(boxes1[..., 6], boxes2[..., 6]), dim=-1)  # (..., 2)
    cos, sin = torch.cos(headings).unsqueeze(-1), torch.sin(headings).unsqueeze(-1)  # (..., 2, 1)
    u = corners[..., None, :, 0] * cos + corners[..., None, :, 1] * sin  # (..., 2, 8)
    v = -corners[..., None, :, 0] * sin + corners[..., None, :, 1] * cos
    extent_u = u.amax(dim=-1) - u.amin(dim=-1)
    extent_v = v.amax(dim=-1) - v.amin(dim=-1)
    choose_second = (extent_u * extent_v).argmin(dim=-1, keepdim=True)
    return torch.stack(
        [
            extent_u.gather(-1, choose_second)[..., 0],
            extent_v.gather(-1, choose_second)[..., 0],
            headings.gather(-1, choose_second)[..., 0],
        ],
        dim=-1,
    )


def enclosing_z_extent(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Height of the smallest z-interval enclosing both boxes, ``(...)``.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> enclosing_z_extent(a, a + torch.tensor([0, 0, 1.0, 0, 0, 0, 0]))
        tensor(2.5000)
    """
    top = torch.maximum(
        boxes1[..., 2] + boxes1[..., 5].clamp_min(0) / 2, boxes2[..., 2] + boxes2[..., 5].clamp_min(0) / 2
    )
    bottom = torch.minimum(
        boxes1[..., 2] - boxes1[..., 5].clamp_min(0) / 2, boxes2[..., 2] - boxes2[..., 5].clamp_min(0) / 2
    )
    return top - bottom


def enclosing_box_3d(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Smallest enclosing box: :func:`enclosing_box_bev` in BEV times the enclosing z-interval.

    Returns:
        ``(..., 4)`` = ``[extent_u, extent_v, extent_z, heading]``.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
        >>> enclosing_box_3d(a, a + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))
        tensor([5.0000, 2.0000, 1.5000, 0.0000])
    """
    bev = enclosing_box_bev(boxes1, boxes2)
    return torch.stack([bev[..., 0], bev[..., 1], enclosing_z_extent(boxes1, boxes2), bev[..., 2]], dim=-1)


def points_in_boxes_mask(
    points: torch.Tensor, boxes: torch.Tensor, *, chunk_size: int = POINTS_PER_CHUNK
) -> torch.Tensor:
    """Which points lie inside which boxes (boundary included).

    Args:
        points: ``(N, 3+)`` points; only x, y, z are used.
        boxes: ``(M, 7)`` boxes.
        chunk_size: points processed at once, to bound memory at ``chunk_size * M``.

    Returns:
        ``(N, M)`` bool mask.

    Example:
        >>> box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> points_in_boxes_mask(torch.tensor([[0.0, 0.0, 0.0], [1.9, 0.9, 0.7], [2.1, 0.0, 0.0]]), box)
        tensor([[ True],
                [ True],
                [False]])
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[-1] < 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must be a tensor of shape (N, 3+), got {shape}")
    check_boxes("boxes", boxes)
    if boxes.dim() != 2:
        raise ValueError(f"boxes must have shape (M, 7), got {tuple(boxes.shape)}")
    boxes = boxes.to(points.dtype) if points.is_floating_point() else boxes
    cos, sin = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    half = boxes[:, 3:6].clamp_min(0) / 2
    masks = []
    for start in range(0, points.shape[0], chunk_size):
        rel = points[start : start + chunk_size, None, :3].to(boxes.dtype) - boxes[None, :, :3]
        local_x = rel[..., 0] * cos + rel[..., 1] * sin
        local_y = -rel[..., 0] * sin + rel[..., 1] * cos
        masks.append((local_x.abs() <= half[:, 0]) & (local_y.abs() <= half[:, 1]) & (rel[..., 2].abs() <= half[:, 2]))
    if not masks:
        return torch.zeros(0, boxes.shape[0], dtype=torch.bool, device=points.device)
    return torch.cat(masks, dim=0)

"""Reproducible box samples: random pairs and scenes, and named hard cases (the tests' and the benchmark's inputs).

Boxes are ``(..., 7)`` = ``[x, y, z, dx, dy, dz, heading]`` (OpenPCDet LiDAR convention, z = centre).
Imports only torch. All randomness goes through a CPU ``torch.Generator``, so every device gets the same boxes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["random_box_pairs", "random_boxes", "adversarial_box_pairs", "huge_and_degenerate_box_pairs"]

PI = math.pi


def random_box_pairs(
    n: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    centre_offset_std: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` paired boxes ``(n, 7)``, ``(n, 7)``: car/pedestrian-like sizes, most pairs overlapping partially.

    Headings cover several turns (to exercise wrapping); box 2 is box 1 jittered in centre, size and heading.

    Example:
        >>> boxes1, boxes2 = random_box_pairs(3, seed=0)
        >>> boxes1.shape, boxes2.dtype
        (torch.Size([3, 7]), torch.float64)
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    centre1 = torch.stack([uniform(-40.0, 40.0, n), uniform(-40.0, 40.0, n), uniform(-2.0, 1.0, n)], dim=-1)
    size1 = torch.stack([uniform(0.4, 6.0, n), uniform(0.4, 3.0, n), uniform(0.5, 3.0, n)], dim=-1)
    heading1 = uniform(-2 * PI, 2 * PI, n)
    offset_scale = torch.tensor([1.0, 1.0, 0.4], dtype=torch.float64) * centre_offset_std
    centre2 = centre1 + torch.randn(n, 3, generator=gen, dtype=torch.float64) * offset_scale
    size2 = size1 * uniform(0.6, 1.5, n, 3)
    heading2 = heading1 + torch.randn(n, generator=gen, dtype=torch.float64) * 0.8
    boxes1 = torch.cat([centre1, size1, heading1[:, None]], dim=-1)
    boxes2 = torch.cat([centre2, size2, heading2[:, None]], dim=-1)
    return boxes1.to(device=device, dtype=dtype), boxes2.to(device=device, dtype=dtype)


def random_boxes(
    n: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    extent: float = 20.0,
    elongated_fraction: float = 0.25,
) -> torch.Tensor:
    """``n`` unpaired boxes ``(n, 7)`` scattered over ``[-extent, extent]^2`` for the ``(N, M)`` matrix versions.

    A fraction are long and thin (up to 20 m x 0.2 m) so that a too-tight bounding-circle/AABB prefilter would
    miss their corner-tip overlaps.

    Example:
        >>> random_boxes(5, extent=40.0, dtype=torch.float32).shape
        torch.Size([5, 7])
    """
    gen = torch.Generator().manual_seed(seed)
    rand = torch.rand(n, 7, generator=gen, dtype=torch.float64)
    boxes = torch.empty(n, 7, dtype=torch.float64)
    boxes[:, 0:2] = (rand[:, 0:2] * 2 - 1) * extent
    boxes[:, 2] = rand[:, 2] * 2 - 1
    boxes[:, 3] = 0.5 + 5.0 * rand[:, 3]
    boxes[:, 4] = 0.5 + 2.5 * rand[:, 4]
    boxes[:, 5] = 0.5 + 2.0 * rand[:, 5]
    boxes[:, 6] = (rand[:, 6] * 2 - 1) * 2 * PI
    elongated = torch.rand(n, generator=gen) < elongated_fraction
    boxes[elongated, 3] = 8.0 + 12.0 * torch.rand(int(elongated.sum()), generator=gen, dtype=torch.float64)
    boxes[elongated, 4] = 0.2
    return boxes.to(device=device, dtype=dtype)


def _box(x, y, z, dx, dy, dz, heading) -> list[float]:
    return [float(x), float(y), float(z), float(dx), float(dy), float(dz), float(heading)]


def _shifted_along_heading(box: list[float], along: float, across: float, up: float = 0.0) -> list[float]:
    """``box`` moved by ``along`` its heading, ``across`` it (to its left) and ``up``."""
    c, s = math.cos(box[6]), math.sin(box[6])
    return _box(box[0] + along * c - across * s, box[1] + along * s + across * c, box[2] + up, *box[3:6], box[6])


def adversarial_box_pairs(
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Named hard cases: ``(names, boxes1 (K, 7), boxes2 (K, 7))``.

    Coincident and collinear edges, exact 90/180/360 degree turns, touching, nesting, zero sizes,
    coordinates around 1e4 m, near-parallel edges and tiny offsets. Expected values come from the reference.

    Example:
        >>> names, boxes1, boxes2 = adversarial_box_pairs()
        >>> names[0], boxes1.shape == boxes2.shape
        ('identical', True)
    """
    car = _box(1.0, 2.0, -0.5, 4.0, 2.0, 1.5, 0.3)
    car_axis = _box(0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0)
    square = _box(-3.0, 5.0, 0.2, 2.0, 2.0, 2.0, 0.7)
    far = _box(1.0e4 + 0.37, -1.0e4 + 0.81, 1.2, 4.2, 1.8, 1.6, 2.1)
    cases: list[tuple[str, list[float], list[float]]] = [
        ("identical", car, car),
        ("identical_axis_aligned", car_axis, car_axis),
        ("turned_90", car, _box(*car[:6], car[6] + PI / 2)),
        ("turned_minus_90", car, _box(*car[:6], car[6] - PI / 2)),
        ("turned_90_axis_aligned", car_axis, _box(*car_axis[:6], PI / 2)),
        ("square_turned_90", square, _box(*square[:6], square[6] + PI / 2)),
        ("turned_180", car, _box(*car[:6], car[6] + PI)),
        ("turned_180_axis_aligned", car_axis, _box(*car_axis[:6], PI)),
        ("heading_plus_2pi", car, _box(*car[:6], car[6] + 2 * PI)),
        ("heading_minus_2pi", car, _box(*car[:6], car[6] - 2 * PI)),
        ("heading_plus_4pi_axis_aligned", car_axis, _box(*car_axis[:6], 4 * PI)),
        ("square_turned_45", square, _box(*square[:6], square[6] + PI / 4)),
        ("touching_edge_to_edge", car, _shifted_along_heading(car, 4.0, 0.0)),
        ("touching_edge_to_edge_sideways", car, _shifted_along_heading(car, 0.0, 2.0)),
        ("touching_edge_half_slid", car, _shifted_along_heading(car, 4.0, 1.0)),
        ("touching_edge_axis_aligned", car_axis, _box(4.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0)),
        ("touching_corner_to_corner", car, _shifted_along_heading(car, 4.0, 2.0)),
        ("touching_corner_axis_aligned", car_axis, _box(4.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.0)),
        # a diamond whose right corner touches the left edge of an axis-aligned box
        ("touching_corner_on_edge", car_axis, _box(-2.0 - 1.0, 0.3, 0.0, math.sqrt(2), math.sqrt(2), 1.5, PI / 4)),
        ("touching_top_to_bottom", car, _shifted_along_heading(car, 0.5, 0.3, up=1.5)),
        ("collinear_long_edges", car, _shifted_along_heading(car, 1.3, 0.0)),
        ("collinear_short_edges", car, _shifted_along_heading(car, 0.0, 0.7)),
        ("collinear_axis_aligned", car_axis, _box(0.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.0)),
        ("nested_same_heading", car, _box(*car[:3], 2.0, 1.0, 0.5, car[6])),
        ("nested_rotated", car, _box(car[0] + 0.2, car[1] - 0.1, car[2], 1.5, 0.8, 1.0, car[6] + 0.9)),
        ("nested_reversed", _box(car[0], car[1], car[2], 1.5, 0.8, 1.0, car[6] - 1.1), car),
        ("nested_touching_inside_edge", car_axis, _box(1.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0)),
        ("disjoint_near", car, _shifted_along_heading(car, 4.5, 0.2)),
        ("disjoint_far", car, _box(car[0] + 1.0e3, car[1] - 2.0e3, car[2], *car[3:7])),
        ("disjoint_in_z", car, _shifted_along_heading(car, 0.3, 0.1, up=2.0)),
        ("zero_dx", _box(*car[:3], 0.0, *car[4:7]), car),
        ("zero_dy", car, _box(*car[:4], 0.0, *car[5:7])),
        ("zero_dz", car, _box(*car[:5], 0.0, car[6])),
        ("zero_size_both", _box(*car[:3], 0.0, 0.0, 0.0, car[6]), _box(*car[:3], 0.0, 0.0, 0.0, car[6])),
        ("zero_dz_identical", _box(*car[:5], 0.0, car[6]), _box(*car[:5], 0.0, car[6])),
        ("coords_1e4_partial", far, _box(far[0] + 0.9, far[1] - 0.4, far[2] + 0.3, 3.9, 1.7, 1.5, 2.4)),
        ("coords_1e4_identical", far, far),
        ("coords_1e4_turned_90", far, _box(*far[:6], far[6] + PI / 2)),
        ("coords_1e4_touching", far, _shifted_along_heading(far, 4.2, 0.0)),
    ]
    for exponent in (7, 6, 5, 4):
        delta = 10.0 ** (-exponent)
        cases.append(
            (f"near_parallel_1e-{exponent}", car, _box(*_shifted_along_heading(car, 1.1, 0.4)[:6], car[6] + delta))
        )
        cases.append((f"near_parallel_collinear_1e-{exponent}", car, _box(*car[:6], car[6] + delta)))
    for exponent in (7, 5, 3):
        delta = 10.0 ** (-exponent)
        cases.append((f"tiny_offset_along_1e-{exponent}", car, _shifted_along_heading(car, delta, 0.0)))
        cases.append((f"tiny_offset_diagonal_1e-{exponent}", car, _shifted_along_heading(car, delta, -delta, delta)))
    names = [name for name, _, _ in cases]
    boxes1 = torch.tensor([b1 for _, b1, _ in cases], dtype=torch.float64)
    boxes2 = torch.tensor([b2 for _, _, b2 in cases], dtype=torch.float64)
    return names, boxes1.to(device=device, dtype=dtype), boxes2.to(device=device, dtype=dtype)


def huge_and_degenerate_box_pairs(
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Boxes seen in real (diverging) training: ``dx = 0``, ``dy ~ 1e11``, 1e4 m coordinates, far apart.

    Example:
        >>> names, boxes1, boxes2 = huge_and_degenerate_box_pairs(dtype=torch.float32)
        >>> names[1], boxes1[1, 4].item()
        ('dy_1e11_pred', 99999997952.0)
    """
    car = _box(10.0, -3.0, -1.0, 3.9, 1.6, 1.5, 0.4)
    cases = [
        ("dx_zero_pred", _box(*car[:3], 0.0, *car[4:7]), car),
        ("dy_1e11_pred", _box(*car[:4], 1.0e11, *car[5:7]), car),
        ("dy_1e11_target", car, _box(*car[:4], 1.0e11, *car[5:7])),
        ("dy_1e11_both", _box(*car[:4], 1.0e11, *car[5:7]), _box(*car[:4], 1.0e11, car[5], car[6] + 0.2)),
        ("dy_1e11_dx_zero", _box(*car[:3], 0.0, 1.0e11, *car[5:7]), car),
        ("all_sizes_1e6", _box(*car[:3], 1.0e6, 1.0e6, 1.0e6, car[6]), car),
        (
            "coords_1e4",
            _box(1.0e4, 1.0e4, 3.0, *car[3:7]),
            _box(1.0e4 + 0.5, 1.0e4 - 0.2, 3.1, *car[3:6], car[6] + 0.3),
        ),
        ("far_apart_1e4", car, _box(car[0] + 1.0e4, car[1] + 1.0e4, *car[2:7])),
        ("far_apart_1e6", car, _box(car[0] - 1.0e6, car[1], *car[2:7])),
        ("tiny_box_1e-6", _box(*car[:3], 1e-6, 1e-6, 1e-6, car[6]), car),
    ]
    names = [name for name, _, _ in cases]
    boxes1 = torch.tensor([b1 for _, b1, _ in cases], dtype=torch.float64)
    boxes2 = torch.tensor([b2 for _, _, b2 in cases], dtype=torch.float64)
    return names, boxes1.to(device=device, dtype=dtype), boxes2.to(device=device, dtype=dtype)

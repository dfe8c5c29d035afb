"""Scenarios of the box-regression simulation: ground truths, anchors and initial predictions.

All scenarios draw GT boxes with KITTI-like sizes at KITTI-like positions, one anchor per box (on a 0.4 m grid,
heading 0 or pi/2, as an anchor head assigns them), and an initial prediction per box.

- ``large_angle`` (a): cars whose initial heading is off by 30-85 deg; small centre and size errors. Plain
  gradient descent by default: the paper's Prob. 2 is about the *size* of the angle gradient, which Adam's
  per-parameter normalisation would hide (run it with ``--optimizer adam`` to see that case).
- ``scale`` (b): pedestrian-, car- and truck-sized boxes with the **same relative** errors, reported per size
  class (paper Fig. 1b). One shared car anchor for every class, as a one-class head would have; by default
  parametrised ``direct`` and optimised with SGD, the only setting in which the 1/s size-gradient anomaly of
  Eq. 10/11 reaches the update (log-size residuals and Adam's per-parameter normalisation both cancel it).
- ``kitti`` (c), Adam as detectors are trained: a head's starting point: the prediction *is* the matched anchor
  (zero residuals); GT of Car, Pedestrian and Cyclist (70/20/10 %) offset from it by grid quantisation, size
  spread and heading spread.
- ``anchor_residual`` (d), Eq. 18 behind OpenPCDet's box coder: cars and trucks, each with its own class
  anchor, predicted through the ResidualCoder parametrisation (anchor-relative centre ``dx/d_a, dy/d_a,
  dz/h_a``, log sizes ``log(s/a)``, residual heading) by one linear head shared by every box (``shared_head``),
  trained with Adam from the anchors. The GT residuals are ``phi_n W*`` for fixed features ``phi_n``, so the
  head can fit every box exactly; what differs between losses is how they weight cars against trucks on the
  shared weights. ``--param residual`` gives every box its own residuals instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from pcdet_gciou.simulate.parametrisation import decode_residual

# Mean sizes (dx, dy, dz) and anchor bottom heights of OpenPCDet's KITTI anchors. KITTI has no truck anchor:
# the truck is a typical KITTI "Truck" box.
CLASS_SIZES: Dict[str, Tuple[float, float, float]] = {
    "Pedestrian": (0.8, 0.6, 1.73),
    "Cyclist": (1.76, 0.6, 1.73),
    "Car": (3.9, 1.6, 1.56),
    "Truck": (10.0, 2.6, 3.4),
}
BOTTOM_HEIGHT: Dict[str, float] = {"Pedestrian": -0.6, "Cyclist": -0.6, "Car": -1.78, "Truck": -1.78}
GRID_STEP = 0.4  # metres between anchor centres: voxel 0.05 m x feature stride 8


@dataclass
class Problem:
    """One scenario's population: ``(N, 7)`` GT, anchors and initial predictions; ``(N,)`` group index;
    optional ``(N, D)`` per-box features for the ``shared_head`` parametrisation."""

    gt: torch.Tensor
    anchors: torch.Tensor
    init_boxes: torch.Tensor
    group: torch.Tensor
    group_names: Tuple[str, ...]
    features: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    make: Callable[[int, torch.Generator], Problem]
    default_param: str
    default_optimizer: str
    default_lr: float


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def _normal(n: int, std: float, gen: torch.Generator) -> torch.Tensor:
    return std * torch.randn(n, generator=gen, dtype=torch.float64)


def _class_boxes(names, n_per_class: int, size_log_std: float, gen: torch.Generator):
    """GT boxes of several classes (n_per_class each), with their anchors at the nearest grid cell."""
    gts, anchors, groups = [], [], []
    for index, name in enumerate(names):
        mean = torch.tensor(CLASS_SIZES[name], dtype=torch.float64)
        size = mean * torch.exp(_normal(n_per_class * 3, size_log_std, gen).view(n_per_class, 3))
        x = _uniform(n_per_class, 5.0, 65.0, gen)
        y = _uniform(n_per_class, -30.0, 30.0, gen)
        z = BOTTOM_HEIGHT[name] + mean[2] / 2 + _normal(n_per_class, 0.1, gen)
        heading = _uniform(n_per_class, -math.pi, math.pi, gen)
        gt = torch.stack((x, y, z, size[:, 0], size[:, 1], size[:, 2], heading), dim=-1)
        anchor_heading = torch.where(torch.cos(2 * heading) >= 0, 0.0, math.pi / 2).to(torch.float64)
        anchor = torch.stack(
            (
                torch.round(x / GRID_STEP) * GRID_STEP,
                torch.round(y / GRID_STEP) * GRID_STEP,
                torch.full_like(x, BOTTOM_HEIGHT[name] + CLASS_SIZES[name][2] / 2),
                torch.full_like(x, mean[0]),
                torch.full_like(x, mean[1]),
                torch.full_like(x, mean[2]),
                anchor_heading,
            ),
            dim=-1,
        )
        gts.append(gt)
        anchors.append(anchor)
        groups.append(torch.full((n_per_class,), index, dtype=torch.long))
    return torch.cat(gts), torch.cat(anchors), torch.cat(groups)


def _perturb_relative(
    gt: torch.Tensor, centre_rel: float, size_log: float, angle: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Initial predictions: centre offset in the box frame in units of the box extents, log-normal size ratios."""
    n = gt.shape[0]
    along, across, up = (_normal(n, centre_rel, gen) * gt[:, k] for k in (3, 4, 5))
    cos, sin = torch.cos(gt[:, 6]), torch.sin(gt[:, 6])
    centre = gt[:, :3] + torch.stack((along * cos - across * sin, along * sin + across * cos, up), dim=-1)
    size = gt[:, 3:6] * torch.exp(_normal(n * 3, size_log, gen).view(n, 3))
    return torch.cat((centre, size, (gt[:, 6] + angle).unsqueeze(-1)), dim=-1)


def make_large_angle(n: int, gen: torch.Generator) -> Problem:
    gt, anchors, group = _class_boxes(("Car",), n, 0.05, gen)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    angle = sign * _uniform(n, math.radians(30.0), math.radians(85.0), gen)
    init = _perturb_relative(gt, 0.03, 0.05, angle, gen)
    return Problem(gt, anchors, init, group, ("all",))


def make_scale(n: int, gen: torch.Generator) -> Problem:
    names = ("Pedestrian", "Car", "Truck")
    gt, _, group = _class_boxes(names, n, 0.05, gen)
    car = CLASS_SIZES["Car"]
    anchors = gt.clone()
    anchors[:, 0:2] = torch.round(gt[:, 0:2] / GRID_STEP) * GRID_STEP
    anchors[:, 2] = BOTTOM_HEIGHT["Car"] + car[2] / 2
    anchors[:, 3:6] = torch.tensor(car, dtype=torch.float64)
    anchors[:, 6] = torch.where(torch.cos(2 * gt[:, 6]) >= 0, 0.0, math.pi / 2).to(torch.float64)
    init = _perturb_relative(gt, 0.1, 0.15, _normal(gt.shape[0], math.radians(15.0), gen), gen)
    return Problem(gt, anchors, init, group, names)


def make_kitti(n: int, gen: torch.Generator) -> Problem:
    counts = {"Car": max(1, round(0.7 * n)), "Pedestrian": max(1, round(0.2 * n)), "Cyclist": max(1, round(0.1 * n))}
    parts = [_class_boxes((name,), count, 0.08, gen) for name, count in counts.items()]
    gt = torch.cat([p[0] for p in parts])
    anchors = torch.cat([p[1] for p in parts])
    # The GT heading lies within a positive anchor's reach: normal spread of 0.25 rad, at most 45 deg.
    offset = _normal(gt.shape[0], 0.25, gen).clamp(-math.pi / 4, math.pi / 4)
    gt[:, 6] = anchors[:, 6] + offset
    return Problem(gt, anchors, anchors.clone(), torch.zeros(gt.shape[0], dtype=torch.long), ("all",))


# anchor_residual: spread of the GT residuals around the anchor, per code (x, y, z, log dx, log dy, log dz,
# heading). Centre: about the 0.4 m grid plus assignment slack; sizes: about 15 % (trucks vary more in reality);
# heading: within a positive anchor's reach. FEATURE_DIM: width of the shared head's input.
RESIDUAL_STD = (0.1, 0.1, 0.1, 0.15, 0.15, 0.15, 0.25)
FEATURE_DIM = 16
UNEXPLAINED_FRACTION = 0.05


def make_anchor_residual(n: int, gen: torch.Generator) -> Problem:
    names = ("Car", "Truck")
    _, anchors, group = _class_boxes(names, n, 0.0, gen)
    count = anchors.shape[0]
    features = _normal(count * FEATURE_DIM, 1.0 / math.sqrt(FEATURE_DIM), gen).view(count, FEATURE_DIM)
    directions = torch.randn(FEATURE_DIM, 7, generator=gen, dtype=torch.float64)
    directions = directions / torch.linalg.vector_norm(directions, dim=0)
    true_weights = directions * torch.tensor(RESIDUAL_STD, dtype=torch.float64) * math.sqrt(FEATURE_DIM)
    std = torch.tensor(RESIDUAL_STD, dtype=torch.float64)
    unexplained = UNEXPLAINED_FRACTION * std * torch.randn(count, 7, generator=gen, dtype=torch.float64)
    gt = decode_residual(features @ true_weights + unexplained, anchors)
    return Problem(gt, anchors, anchors.clone(), group, names, features)


SCENARIOS: Dict[str, Scenario] = {
    "large_angle": Scenario(
        "large_angle", "(a) large initial angle errors, 30-85 deg (cars)", make_large_angle, "residual", "sgd", 0.01
    ),
    "scale": Scenario(
        "scale", "(b) small vs large objects, same relative errors (Fig. 1b)", make_scale, "direct", "sgd", 0.02
    ),
    "kitti": Scenario(
        "kitti", "(c) KITTI-like start: prediction = matched anchor", make_kitti, "residual", "adam", 0.01
    ),
    "anchor_residual": Scenario(
        "anchor_residual",
        "(d) cars and trucks through the box coder, one shared head (Eq. 18 placement)",
        make_anchor_residual,
        "shared_head",
        "adam",
        0.01,
    ),
}
SCENARIO_ALIASES = {"a": "large_angle", "b": "scale", "c": "kitti", "d": "anchor_residual"}


def resolve_scenario(name: str) -> Scenario:
    key = SCENARIO_ALIASES.get(name, name)
    if key not in SCENARIOS:
        raise ValueError(
            f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)} "
            f"or their letters {sorted(SCENARIO_ALIASES)}"
        )
    return SCENARIOS[key]

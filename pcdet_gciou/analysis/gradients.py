"""Autograd gradients of the box losses against heading error and object scale (the paper's Fig. 1 and Sec. 3.2).

Everything goes through :mod:`pcdet_gciou.losses`, in float64, for centre-aligned boxes: the prediction is the
target turned by ``Delta`` (and/or scaled), and the derivative is taken with respect to the **prediction's**
heading or sizes. With ``pred heading = target heading + Delta``, ``dL/dDelta`` is positive where turning the
prediction further away increases the loss.

Closed forms (paper Eq. 8/9), valid in the parallelogram regime (centre-aligned, equal heights, Delta above the
boundary angle, which is ``2 atan(dy / dx)`` for two equal boxes):

.. math::

    \\frac{\\partial (1 - IoU)}{\\partial \\Delta} = IoU (1 + IoU) \\cot\\Delta, \\qquad
    \\frac{\\partial (-\\ln IoU)}{\\partial \\Delta} = (1 + IoU) \\cot\\Delta
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

import torch

from pcdet_gciou.losses import gciou_loss, iou_loss, log_iou_loss

CAR_SIZE: Tuple[float, float, float] = (3.9, 1.6, 1.56)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The curves of Fig. 1a and the poster: plain IoU losses and the correction steps of GCIoU.
ANGLE_LOSSES: Dict[str, LossFn] = {
    "1 - IoU": lambda p, t: iou_loss(p, t),
    "-ln IoU": lambda p, t: log_iou_loss(p, t),
    "GCIoU f": lambda p, t: gciou_loss(p, t, g=None),
    "GCIoU g=tan": lambda p, t: gciou_loss(p, t, alpha=None, g="tan"),
    "GCIoU g=e^D-1": lambda p, t: gciou_loss(p, t, alpha=None, g="exp"),
    "GCIoU f+g=tan": lambda p, t: gciou_loss(p, t, g="tan"),
    "GCIoU f+g=e^D-1": lambda p, t: gciou_loss(p, t, g="exp"),
}


def boundary_angle(size: Sequence[float] = CAR_SIZE) -> float:
    """Heading error above which two equal centre-aligned boxes intersect in a parallelogram: ``2 atan(dy/dx)``."""
    dx, dy = float(size[0]), float(size[1])
    return 2.0 * math.atan(min(dx, dy) / max(dx, dy))


def _aligned_pair(angles: torch.Tensor, size: Sequence[float], base_heading: float):
    n = angles.shape[0]
    target = torch.zeros(n, 7, dtype=angles.dtype)
    target[:, 0:3] = torch.tensor([10.0, -3.0, -1.0], dtype=angles.dtype)
    target[:, 3:6] = torch.tensor(size, dtype=angles.dtype)
    target[:, 6] = base_heading
    return target


def angle_gradient(
    loss: LossFn, angles: torch.Tensor, *, size: Sequence[float] = CAR_SIZE, base_heading: float = 0.3
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dDelta, loss)``, each ``(K,)``, for a centre-aligned pair whose prediction is turned by ``(K,)`` angles.

    Args:
        loss: ``(pred (K, 7), target (K, 7)) -> (K,)`` per-box loss.
        angles: ``(K,)`` heading errors Delta in radians (float64 recommended).
        size: ``(dx, dy, dz)`` of both boxes.
        base_heading: heading of the target; the result does not depend on it.
    """
    target = _aligned_pair(angles, size, base_heading)
    delta = angles.detach().clone().requires_grad_(True)
    pred = torch.cat((target[:, :6], (target[:, 6] + delta).unsqueeze(-1)), dim=-1)
    value = loss(pred, target)
    (grad,) = torch.autograd.grad(value.sum(), delta)
    return grad.detach(), value.detach()


def size_gradient(
    loss: LossFn,
    scales: torch.Tensor,
    *,
    size: Sequence[float] = CAR_SIZE,
    angle: float = 1.0,
    pred_size_ratio: Sequence[float] = (1.1, 0.9, 1.05),
) -> torch.Tensor:
    """``(K, 3)`` gradient of the loss w.r.t. the prediction's ``(dx, dy, dz)`` when both boxes are scaled by ``s``.

    The target has size ``s * size``; the prediction is centre-aligned, turned by ``angle`` and has size
    ``s * size * pred_size_ratio`` (so every pair is the same shape, only larger). This is the gradient that
    reaches the size parameters, after the rescaling of Eq. 18 when the loss applies it.
    """
    scales = scales.detach()
    target = _aligned_pair(scales, size, 0.0)
    target[:, 3:6] = target[:, 3:6] * scales.unsqueeze(-1)
    pred = target.clone()
    pred[:, 3:6] = pred[:, 3:6] * torch.tensor(pred_size_ratio, dtype=scales.dtype)
    pred[:, 6] = angle
    pred.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(pred, target).sum(), pred)
    return grad[:, 3:6].detach()


def closed_form_angle_gradient(iou: torch.Tensor, angles: torch.Tensor, kind: str) -> torch.Tensor:
    """Eq. 8 (``kind="iou"``: IoU (1 + IoU) cot Delta) or Eq. 9 (``kind="log_iou"``: (1 + IoU) cot Delta)."""
    cot = torch.cos(angles) / torch.sin(angles)
    if kind == "iou":
        return iou * (1 + iou) * cot
    if kind == "log_iou":
        return (1 + iou) * cot
    raise ValueError(f"kind must be 'iou' or 'log_iou', got {kind!r}")


def angle_gradient_table(
    angles: torch.Tensor, losses: Dict[str, LossFn] = ANGLE_LOSSES, size: Sequence[float] = CAR_SIZE
) -> Dict[str, torch.Tensor]:
    """``{loss name: (K,) dL/dDelta}`` for every loss in ``losses``."""
    return {name: angle_gradient(fn, angles, size=size)[0] for name, fn in losses.items()}


def size_gradient_table(scales: torch.Tensor, size: Sequence[float] = CAR_SIZE) -> Dict[str, torch.Tensor]:
    """``{name: (K,) |dL/d(size)|}`` of ``-ln IoU`` without and with the rescaling of Eq. 18 (f = 1, g = 0)."""
    plain = size_gradient(lambda p, t: gciou_loss(p, t, alpha=None, g=None), scales, size=size)
    rescaled = size_gradient(lambda p, t: gciou_loss(p, t, alpha=None, g=None, grad_rescale=True), scales, size=size)
    return {"-ln IoU": plain.norm(dim=-1), "-ln IoU + rescaling (Eq. 18)": rescaled.norm(dim=-1)}


def write_gradient_figures(
    out_dir, *, n_angles: int = 301, scales: Sequence[float] = (0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
):
    """Write ``angle_gradients.csv/.png`` (dL/dDelta vs Delta in [0, 1.5]) and ``size_gradients.csv/.png``.

    Returns the paths written.
    """
    import csv
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    angles = torch.linspace(0.0, 1.5, n_angles, dtype=torch.float64)[1:]
    table = angle_gradient_table(angles)
    scale_t = torch.tensor(list(scales), dtype=torch.float64)
    sizes = size_gradient_table(scale_t)

    with open(out / "angle_gradients.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["delta_rad"] + list(table))
        for i, a in enumerate(angles.tolist()):
            writer.writerow([f"{a:.6f}"] + [f"{v[i].item():.6g}" for v in table.values()])
    with open(out / "size_gradients.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scale"] + list(sizes))
        for i, s in enumerate(scale_t.tolist()):
            writer.writerow([f"{s:g}"] + [f"{v[i].item():.6g}" for v in sizes.values()])

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {
        "1 - IoU": ("tab:blue", "--"),
        "-ln IoU": ("tab:blue", "-"),
        "GCIoU f": ("tab:green", "-"),
        "GCIoU g=tan": ("tab:orange", ":"),
        "GCIoU g=e^D-1": ("tab:brown", ":"),
        "GCIoU f+g=tan": ("tab:red", "-"),
        "GCIoU f+g=e^D-1": ("black", "-."),
    }
    for name, values in table.items():
        colour, style = styles.get(name, (None, "-"))
        for ax in (left, right):
            ax.plot(angles, values, color=colour, linestyle=style, label=name, linewidth=1.3)
    bound = boundary_angle()
    for ax, top, title in ((left, 3.0, "plain losses and correction steps (zoom)"), (right, None, "full range (log)")):
        ax.axvline(bound, color="gray", linewidth=0.8, linestyle=":")
        ax.set_xlabel("heading error Δ (rad), centre-aligned car 3.9×1.6×1.56")
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=9)
    left.set_ylim(0, 3.0)
    left.set_ylabel("dL/dΔ")
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "angle_gradients.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, values in sizes.items():
        ax.loglog(scale_t, values, marker="o", label=name)
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(scale_t.tolist()))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{s:g}" for s in scale_t.tolist()])
    ax.set_xlabel("object scale s (car = 1)")
    ax.set_ylabel("|dL/d(dx, dy, dz)|")
    ax.set_title("size gradient vs scale (pair turned by 1 rad)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "size_gradients.png", dpi=80)
    plt.close(fig)
    return [
        out / name
        for name in ("angle_gradients.csv", "angle_gradients.png", "size_gradients.csv", "size_gradients.png")
    ]

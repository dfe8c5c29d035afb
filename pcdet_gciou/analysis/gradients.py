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

**Erratum, Eq. 10.** In the same regime the paper gives the size partials of ``1 - IoU`` (``w`` = long BEV side
``dx``, ``h`` = short BEV side ``dy``, ``l`` = height ``dz``; ``l = min(l_t, l_p)``). Its ``dL/dw_p`` and
``dL/dh_p`` rows are right; **both cases of its dL/dl_p row have the wrong sign**. Derivation: with
``I = h_t h_p l / sin(Delta)``, if ``l = l_p`` then ``I`` and ``V_p`` both grow as ``l_p``, and
``d(-ln IoU)/dl_p = -1/l_p + (V_p - I)/(U l_p) = -V_t / (U l_p)`` (negative; the paper prints ``+``); if
``l = l_t`` then ``I`` does not depend on ``l_p`` and ``d(-ln IoU)/dl_p = w_p h_p / U`` (positive; the paper
prints ``-``). Multiply by IoU for ``1 - IoU``. :func:`eq10_size_gradients` returns autograd beside the rows as
printed; the test pins the two flipped signs.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from pcdet_gciou.analysis.figures import line_styles, plain_log_ticks, save_figure
from pcdet_gciou.geometry import rotated_overlap_3d
from pcdet_gciou.losses import build_loss, gciou_loss, iou_loss

CAR_SIZE: Tuple[float, float, float] = (3.9, 1.6, 1.56)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _angle_losses() -> Dict[str, LossFn]:
    """The curves of Fig. 1a and the poster: every loss the simulation compares, by its key, except Smooth-L1
    (no decoded-box loss) and the rescaled variants (Eq. 18 leaves the angle gradient unchanged)."""
    from pcdet_gciou.simulate.objectives import LOSS_SPECS, SMOOTH_L1

    out = {}
    for key, spec in LOSS_SPECS.items():
        if spec.build_name != SMOOTH_L1 and not spec.kwargs.get("grad_rescale"):
            module = build_loss(spec.build_name, **spec.kwargs)
            out[key] = lambda p, t, module=module: module(p, t)
    return out


ANGLE_LOSSES: Dict[str, LossFn] = _angle_losses()


PRED_SIZE_RATIO: Tuple[float, float, float] = (1.1, 0.9, 1.05)


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
    pred_size_ratio: Sequence[float] = PRED_SIZE_RATIO,
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
    """``{name: (K,) gradient norm}`` of ``-ln IoU`` (gciou with f = 1, g = 0) without and with Eq. 18's rescaling,
    w.r.t. the sizes ``s`` and w.r.t. the log sizes ``t = log(s / a)`` of OpenPCDet's box coder.

    ``dL/dt = s * dL/ds`` (chain rule through ``s = a e^t``), so the 1/s law of Eq. 10/11 on ``s`` becomes a
    constant on ``t``; Eq. 18 (``x U^(2/3)``, which grows as ``s^2``) turns that into ``s^2``.
    """
    plain = size_gradient(lambda p, t: gciou_loss(p, t, alpha=None, g=None), scales, size=size)
    rescaled = size_gradient(lambda p, t: gciou_loss(p, t, alpha=None, g=None, grad_rescale=True), scales, size=size)
    pred_sizes = (
        scales.unsqueeze(-1)
        * torch.tensor(size, dtype=scales.dtype)
        * torch.tensor(PRED_SIZE_RATIO, dtype=scales.dtype)
    )
    return {
        "-ln IoU, dL/ds": plain.norm(dim=-1),
        "-ln IoU + Eq. 18, dL/ds": rescaled.norm(dim=-1),
        "-ln IoU, dL/dt (t = log s/a)": (plain * pred_sizes).norm(dim=-1),
        "-ln IoU + Eq. 18, dL/dt (t = log s/a)": (rescaled * pred_sizes).norm(dim=-1),
    }


def eq10_size_gradients(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "iou"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(autograd, paper)``, each ``(K, 3)``: the size partials ``d/d(dx, dy, dz)`` of the prediction, by autograd
    and by the paper's Eq. 10 as printed, for ``kind`` ``"iou"`` (``1 - IoU``) or ``"log_iou"`` (Eq. 10 / IoU).

    Eq. 10 holds for centre-aligned pairs whose BEV overlap is a parallelogram (the caller's responsibility):
    ``dL/dw_p = IoU h_p l_p / U``, ``dL/dh_p = -IoU V_t / (U h_p)``, and as printed ``dL/dl_p = +IoU V_t / (U l_p)``
    if ``l_p < l_t``, ``-IoU w_p h_p / U`` otherwise. Autograd gives the opposite signs in the ``dz`` column (see
    the module docstring).
    """
    if kind not in ("iou", "log_iou"):
        raise ValueError(f"kind must be 'iou' or 'log_iou', got {kind!r}")
    pred = pred.detach().clone().requires_grad_(True)
    loss = iou_loss(pred, target) if kind == "iou" else build_loss("log_iou")(pred, target)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    with torch.no_grad():
        inter, union = rotated_overlap_3d(pred, target)
        iou = inter / union
        w_p, h_p, l_p = pred[..., 3], pred[..., 4], pred[..., 5]
        v_t = target[..., 3] * target[..., 4] * target[..., 5]
        height_row = torch.where(l_p < target[..., 5], iou * v_t / (union * l_p), -iou * w_p * h_p / union)
        paper = torch.stack((iou * h_p * l_p / union, -iou * v_t / (union * h_p), height_row), dim=-1)
        if kind == "log_iou":
            paper = paper / iou.unsqueeze(-1)
    return grad[..., 3:6].detach(), paper


def _angle_figure(angles: torch.Tensor, table: Dict[str, torch.Tensor]):
    """2 x 2 panels: rows = baselines / GCIoU variants (with log_iou for reference), columns = zoom / log."""
    import matplotlib.pyplot as plt

    from pcdet_gciou.simulate.objectives import LOSS_SPECS

    builds = {name: LOSS_SPECS[name].build_name for name in table}
    styles = dict(zip(table, line_styles(list(builds.values()))))
    gciou = [name for name in table if builds[name] == "gciou"]
    rows = [[name for name in table if name not in gciou], (["log_iou"] if "log_iou" in table else []) + gciou]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), squeeze=False)
    bound = boundary_angle()
    for r, names in enumerate(rows):
        for c, (title, log) in enumerate((("zoom", False), ("full range, log scale (values > 0)", True))):
            ax = axes[r][c]
            for same in _identical_curves(names, table):
                colour, style = styles[same[0]]
                label = " = ".join(same)
                ax.plot(angles, table[same[0]], color=colour, linestyle=style, label=label, linewidth=1.5)
            ax.axvline(bound, color="gray", linewidth=0.8, linestyle=":", label="_parallelogram boundary")
            ax.set_xlabel("heading error Δ (rad); centre-aligned car 3.9 × 1.6 × 1.56 m", fontsize=9)
            ax.set_ylabel("dL/dΔ (1/rad)", fontsize=9)
            family = "IoU-type baselines" if r == 0 else "GCIoU variants (log_iou for reference)"
            ax.set_title(f"{family}: {title}", fontsize=10)
            ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
                plain_log_ticks(ax)
            else:
                ax.set_ylim(0, 3.0)
        axes[r][0].legend(fontsize=8)
    fig.suptitle("Angle gradient vs heading error (paper Fig. 1a); dotted: parallelogram boundary 2·atan(w/l)")
    fig.tight_layout()
    return fig


def _identical_curves(names: Sequence[str], table: Dict[str, torch.Tensor]) -> List[List[str]]:
    """``names`` grouped by identical curves (e.g. DIoU = 1 - IoU for centre-aligned pairs): one line each."""
    groups: List[List[str]] = []
    for name in names:
        match = next((g for g in groups if torch.allclose(table[g[0]], table[name], rtol=1e-9, atol=1e-12)), None)
        if match is None:
            groups.append([name])
        else:
            match.append(name)
    return groups


def _size_figure(scales: torch.Tensor, sizes: Dict[str, torch.Tensor]):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for (name, values), marker, style in zip(sizes.items(), "osD^", ("-", "--", "-", "--")):
        colour = "tab:blue" if "Eq. 18" not in name else "tab:red"
        ax.loglog(scales, values, marker=marker, linestyle=style, color=colour, label=name)
    ax.xaxis.set_major_locator(FixedLocator(scales.tolist()))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{s:g}" for s in scales.tolist()])
    plain_log_ticks(ax)
    ax.set_xlabel("object scale s (car 3.9 × 1.6 × 1.56 m = 1)")
    ax.set_ylabel("gradient norm (1/m for s; unitless for t)")
    ax.set_title("size gradient vs scale (pair turned by 1 rad)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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

    save_figure(_angle_figure(angles, table), out / "angle_gradients.png")
    save_figure(_size_figure(scale_t, sizes), out / "size_gradients.png")
    return [
        out / name
        for name in ("angle_gradients.csv", "angle_gradients.png", "size_gradients.csv", "size_gradients.png")
    ]

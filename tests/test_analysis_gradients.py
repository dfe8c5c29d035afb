"""Autograd gradients through the library against the paper's closed forms (Eq. 8-11, Eq. 18)."""

import math

import pytest
import torch

from pcdet_gciou.analysis.gradients import (
    ANGLE_LOSSES,
    angle_gradient,
    boundary_angle,
    closed_form_angle_gradient,
    eq10_size_gradients,
    size_gradient,
    size_gradient_table,
    write_gradient_figures,
)
from pcdet_gciou.geometry import rotated_iou_3d
from pcdet_gciou.losses import gciou_loss, log_iou_loss

EPS = 1e-6  # the loss's default eps inside log(IoU + eps)


@pytest.fixture
def parallelogram_angles():
    return torch.linspace(boundary_angle() + 0.01, 1.5, 40, dtype=torch.float64)


def test_boundary_angle_is_where_the_intersection_becomes_a_parallelogram():
    # Below the boundary the BEV overlap exceeds the strip-intersection area w^2 / sin(Delta); above it, equals it.
    dx, dy, dz = 3.9, 1.6, 1.56
    bound = boundary_angle((dx, dy, dz))
    assert bound == pytest.approx(2 * math.atan(dy / dx))
    angles = torch.tensor([bound - 0.05, bound + 0.05], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 0.0, dx, dy, dz, 0.0]] * 2, dtype=torch.float64)
    pred = target.clone()
    pred[:, 6] = angles
    iou = rotated_iou_3d(pred, target)
    inter = dy * dy * dz / torch.sin(angles)
    parallelogram_iou = inter / (2 * dx * dy * dz - inter)
    assert iou[0] < parallelogram_iou[0] - 1e-3
    assert iou[1] == pytest.approx(parallelogram_iou[1].item(), abs=1e-12)


def test_eq8_angle_gradient_of_one_minus_iou(parallelogram_angles):
    grad, value = angle_gradient(ANGLE_LOSSES["iou"], parallelogram_angles)
    expected = closed_form_angle_gradient(1 - value, parallelogram_angles, "iou")
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)
    assert (grad > 0).all()  # turning the prediction further away increases the loss


def test_eq9_angle_gradient_of_minus_log_iou(parallelogram_angles):
    grad, value = angle_gradient(ANGLE_LOSSES["log_iou"], parallelogram_angles)
    iou = rotated_iou_3d(*_pair(parallelogram_angles))
    expected = closed_form_angle_gradient(iou, parallelogram_angles, "log_iou")
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)
    # exactly, once the eps inside log(IoU + eps) is accounted for
    torch.testing.assert_close(grad, expected * iou / (iou + EPS), atol=1e-12, rtol=0)


def _pair(angles):
    target = torch.zeros(angles.shape[0], 7, dtype=torch.float64)
    target[:, 3:6] = torch.tensor([3.9, 1.6, 1.56], dtype=torch.float64)
    pred = target.clone()
    pred[:, 6] = angles
    return pred, target


def test_angle_gradient_does_not_depend_on_target_heading_and_flips_with_direction():
    angles = torch.tensor([0.3, 0.9, 1.2], dtype=torch.float64)
    g0, _ = angle_gradient(ANGLE_LOSSES["gciou_fg"], angles, base_heading=0.0)
    g1, _ = angle_gradient(ANGLE_LOSSES["gciou_fg"], angles, base_heading=2.1)
    gneg, _ = angle_gradient(ANGLE_LOSSES["gciou_fg"], -angles, base_heading=2.1)
    torch.testing.assert_close(g0, g1)
    torch.testing.assert_close(gneg, -g0)


def test_angle_gradient_matches_finite_differences():
    angles = torch.tensor([0.2, 0.6, 1.0, 1.3], dtype=torch.float64)
    h = 1e-6
    for name in ("log_iou", "gciou_fg", "gciou_fg_exp"):
        grad, _ = angle_gradient(ANGLE_LOSSES[name], angles)
        _, plus = angle_gradient(ANGLE_LOSSES[name], angles + h)
        _, minus = angle_gradient(ANGLE_LOSSES[name], angles - h)
        torch.testing.assert_close(grad, (plus - minus) / (2 * h), atol=1e-5, rtol=1e-6)


def test_size_gradient_of_log_iou_scales_as_inverse_scale():
    scales = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    grad = size_gradient(lambda p, t: log_iou_loss(p, t), scales)
    scaled = grad * scales.unsqueeze(-1)  # Eq. 10/11: every partial is proportional to 1/s
    torch.testing.assert_close(scaled, scaled[2].expand_as(scaled), atol=1e-9, rtol=1e-9)
    assert (grad.norm(dim=-1)[1:] < grad.norm(dim=-1)[:-1]).all()


def test_rescaled_size_gradient_scales_with_scale_instead():
    scales = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    table = size_gradient_table(scales)
    plain, rescaled = table["-ln IoU, dL/ds"], table["-ln IoU + Eq. 18, dL/ds"]
    # U^(2/3) grows as s^2, so the rescaled gradient grows as s: it no longer scales as 1/s
    torch.testing.assert_close(rescaled / scales, (rescaled / scales)[2].expand(5), atol=1e-9, rtol=1e-9)
    assert (rescaled[1:] > rescaled[:-1]).all()
    # and at the same pair the factor is exactly U^(2/3)
    grad_plain = size_gradient(lambda p, t: gciou_loss(p, t, alpha=None, g=None), scales[2:3])
    grad_res = size_gradient(lambda p, t: gciou_loss(p, t, alpha=None, g=None, grad_rescale=True), scales[2:3])
    ratio = grad_res / grad_plain
    torch.testing.assert_close(ratio, ratio[0, 0].expand_as(ratio))
    assert plain[2] * ratio[0, 0] == pytest.approx(rescaled[2].item())


def test_gciou_angle_gradient_increases_beyond_a_small_angle_dip():
    """Measured: the GCIoU angle gradient rises monotonically from ~0.14 rad to 1.4 rad, but it is NOT monotone
    over all of [0.05, 1.4]: the -ln IoU part falls from 1.42 (Delta -> 0) to 1.0, so f+g (tan) dips by ~2 %
    between 0.05 and 0.135 rad before rising (and stays far from zero at Delta = 0, a cusp)."""
    angles = torch.linspace(0.05, 1.4, 1351, dtype=torch.float64)
    for name, dip_end in (("gciou_fg", 0.14), ("gciou_fg_exp", 0.07)):
        grad, _ = angle_gradient(ANGLE_LOSSES[name], angles)
        rising = angles >= dip_end
        assert (grad[rising][1:] > grad[rising][:-1]).all(), name
        assert grad[~rising].min() > 0.97 * grad[0], name  # the dip is shallow
        assert grad[-1] > 10 * grad[0], name
    grad, _ = angle_gradient(ANGLE_LOSSES["gciou_fg"], angles)
    assert grad[angles < 0.14].min() < grad[0]  # the dip is real: not monotone on [0.05, 1.4]


def test_plain_iou_losses_have_small_gradient_at_large_errors():
    """Prob. 2 of the paper: the -ln IoU angle gradient at 1.4-1.5 rad is several times below its small-angle value."""
    angles = torch.tensor([0.05, 1.4, 1.5], dtype=torch.float64)
    grad, _ = angle_gradient(ANGLE_LOSSES["log_iou"], angles)
    assert grad[1] < grad[0] / 4 and grad[2] < grad[1]


def test_write_gradient_figures(tmp_path):
    paths = write_gradient_figures(tmp_path, n_angles=31, scales=(0.5, 1.0, 2.0))
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    header = (tmp_path / "angle_gradients.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "delta_rad" and "gciou_fg" in header
    rows = (tmp_path / "size_gradients.csv").read_text().splitlines()
    assert len(rows) == 4


@pytest.mark.parametrize("kind", ["iou", "log_iou"])
def test_eq10_height_row_has_both_signs_flipped(kind):
    """Paper Eq. 10, centre-aligned parallelogram regime: the dx and dy rows match autograd, the dz (l_p) row is
    off by a sign in both of its cases (l = l_p and l = l_t)."""
    target = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]] * 2, dtype=torch.float64)
    pred = torch.tensor(
        [[0.0, 0.0, 0.0, 4.2, 1.5, 1.40, 1.2], [0.0, 0.0, 0.0, 4.2, 1.5, 1.70, 1.2]], dtype=torch.float64
    )  # l_p < l_t, then l_p > l_t
    inter = 1.6 * 1.5 * torch.minimum(pred[:, 5], target[:, 5]) / math.sin(1.2)  # parallelogram: Eq. 4 holds
    iou = rotated_iou_3d(pred, target)
    union = 3.9 * 1.6 * 1.56 + pred[:, 3] * pred[:, 4] * pred[:, 5] - inter
    torch.testing.assert_close(iou, inter / union, rtol=1e-12, atol=0)
    autograd, paper = eq10_size_gradients(pred, target, kind)
    scale = iou / (iou + EPS) if kind == "log_iou" else torch.ones_like(iou)  # log(IoU + eps) in the loss
    torch.testing.assert_close(autograd[:, :2], paper[:, :2] * scale.unsqueeze(-1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(autograd[:, 2], -paper[:, 2] * scale, rtol=1e-9, atol=1e-12)
    assert autograd[0, 2] < 0 < autograd[1, 2]  # shrinking an over-tall box / growing a short one lowers the loss


def test_log_size_gradient_is_scale_neutral_in_the_table():
    scales = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
    table = size_gradient_table(scales)
    plain_t = table["-ln IoU, dL/dt (t = log s/a)"]
    torch.testing.assert_close(plain_t, plain_t[1].expand(3), rtol=1e-9, atol=0)
    rescaled_t = table["-ln IoU + Eq. 18, dL/dt (t = log s/a)"]
    torch.testing.assert_close(rescaled_t / scales**2, (rescaled_t / scales**2)[1].expand(3), rtol=1e-9, atol=0)

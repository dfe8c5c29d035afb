"""One test per class of hostile input found by the adversarial probe (issue 11, "Core"), plus GCIoU's ``p_form``.

Each test failed on the code before the fix. References are independent: shapely in float64, float64 evaluations of
the same float32 values, hand-derived values and autograd of separately built terms.
"""

from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch

from pcdet_gciou import geometry
from pcdet_gciou.geometry import samples
from pcdet_gciou.losses import LOSS_NAMES, LOSSES, build_loss, gciou_loss, log_iou_loss

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

CAR = [1.0, 2.0, -0.5, 3.9, 1.6, 1.56, 0.3]


def loss_fn(name):
    return LOSSES[name].function if name != "gciou" else gciou_loss


# ----------------------------------------------------------------------------- 1. alpha < 1
@pytest.mark.parametrize("alpha", [0.5, 0.999, 0.0, -1.0])
def test_gciou_rejects_alpha_below_one_at_build_and_call(alpha):
    with pytest.raises(ValueError, match=f"alpha must be >= 1.*got {alpha!r}"):
        build_loss("gciou", alpha=alpha)
    box = torch.tensor([CAR])
    with pytest.raises(ValueError, match=f"got {alpha!r}"):
        gciou_loss(box, box, alpha=alpha)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("turn", [0.0, math.pi, -math.pi, 2 * math.pi])
def test_gciou_heading_gradient_is_finite_at_zero_and_folded_pi(alpha, turn):
    target = torch.tensor([CAR], dtype=torch.float64)
    pred = target.clone()
    pred[0, 0] += 0.4  # not identical: the angle term's own gradient at delta = 0 is under test
    pred[0, 6] += turn
    pred.requires_grad_(True)
    gciou_loss(pred, target, alpha=alpha, g="tan").sum().backward()
    assert torch.isfinite(pred.grad).all()
    if turn == 0.0:  # delta exactly 0: f(0) = 1 and the angle terms take the zero subgradient of |delta|
        log_pred = pred.detach().clone().requires_grad_(True)
        log_iou_loss(log_pred, target).sum().backward()
        assert pred.grad[0, 6].item() == pytest.approx(log_pred.grad[0, 6].item(), rel=1e-12, abs=1e-15)


# ----------------------------------------------------------------------------- 2. zero-weight non-finite boxes
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_zero_weight_boxes_add_exactly_zero_whatever_their_values(name, bad):
    pred, target = samples.random_box_pairs(6, seed=3, dtype=torch.float32)
    weights = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.5, 0.0])
    pred[1, 3], target[3, 6], pred[5] = bad, bad, bad
    keep = weights != 0
    for reduction in ("sum", "mean", "none"):
        leaf = pred.clone().requires_grad_(True)
        loss = loss_fn(name)(leaf, target, weights, reduction=reduction)
        clean = loss_fn(name)(pred[keep], target[keep], weights[keep], reduction=reduction)
        if reduction == "none":
            assert torch.equal(loss[keep], clean) and torch.equal(loss[~keep], torch.zeros(3))
        else:  # equal up to the summation order of float32
            torch.testing.assert_close(loss, clean, rtol=1e-6, atol=0)
            assert torch.isfinite(loss)
        loss.sum().backward()
        assert torch.equal(leaf.grad[~keep], torch.zeros(3, 7))  # exactly 0, not NaN
        assert torch.isfinite(leaf.grad).all()


# ----------------------------------------------------------------------------- 3. non-finite -> NaN
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_box_gives_nan_for_its_pair_never_a_silent_number(bad):
    boxes1, boxes2 = samples.random_box_pairs(14, seed=4, dtype=torch.float32)
    boxes1[torch.arange(7), torch.arange(7)] = bad  # one bad parameter per box, every parameter once
    boxes2[7 + torch.arange(7), torch.arange(7)] = bad
    for function in (geometry.rotated_iou_3d, geometry.rotated_iou_bev):
        assert torch.isnan(function(boxes1, boxes2)).all()
    for function in (geometry.rotated_overlap_3d, geometry.rotated_overlap_bev):
        assert all(torch.isnan(value).all() for value in function(boxes1, boxes2))
    assert torch.isnan(gciou_loss(boxes1, boxes2)).all()

    scene = samples.random_boxes(30, seed=5, dtype=torch.float32, extent=6.0)
    clean = geometry.rotated_iou_3d_matrix(scene, scene)
    scene[[3, 17], [0, 6]] = bad
    for function in (geometry.rotated_iou_3d_matrix, geometry.rotated_iou_bev_matrix):
        matrix = function(scene, scene)
        bad_rows = torch.zeros(30, dtype=torch.bool)
        bad_rows[[3, 17]] = True
        assert torch.isnan(matrix[bad_rows]).all() and torch.isnan(matrix[:, bad_rows]).all()
        assert not torch.isnan(matrix[~bad_rows][:, ~bad_rows]).any()
    assert torch.equal(
        geometry.rotated_iou_3d_matrix(scene, scene)[~bad_rows][:, ~bad_rows], clean[~bad_rows][:, ~bad_rows]
    )


# ----------------------------------------------------------------------------- 4. millimetre boxes
@pytest.mark.parametrize("size", [1e-3, 4.9e-3, 1e-4])
def test_millimetre_boxes_get_their_exact_iou_in_float32(size):
    ref = pytest.importorskip("shapely_reference")
    unit = torch.tensor(
        [
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
            [0.3, 0.1, 0.2, 1.0, 0.8, 1.2, 0.0],
            [0.1, -0.2, 0.0, 1.3, 0.7, 0.9, 0.6],
            [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.1],
        ],
        dtype=torch.float64,
    )
    boxes1 = unit[[0, 0, 0, 2]].clone()
    boxes2 = unit[[0, 1, 2, 3]].clone()
    boxes1[:, :6] *= size
    boxes2[:, :6] *= size
    expected = ref.iou_3d(boxes1, boxes2)
    assert expected.min() > 0.05
    got = geometry.rotated_iou_3d(boxes1.float(), boxes2.float()).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    got_bev = geometry.rotated_iou_bev(boxes1.float(), boxes2.float()).double()
    torch.testing.assert_close(got_bev, ref.iou_bev(boxes1, boxes2), rtol=1e-4, atol=1e-5)
    assert (
        geometry.rotated_iou_3d_matrix(boxes1.float(), boxes2.float()).diagonal().double().sub(expected).abs().max()
        < 1e-4
    )


# ----------------------------------------------------------------------------- 5. large headings
def test_large_headings_are_reduced_before_differencing_float32_within_1e_4():
    boxes1, boxes2 = samples.random_box_pairs(4000, seed=6, dtype=torch.float64, centre_offset_std=0.6)
    gen = torch.Generator().manual_seed(0)
    boxes1[:, 6] = (torch.rand(4000, generator=gen, dtype=torch.float64) * 2 - 1) * 1e5
    boxes1, boxes2 = boxes1.float(), boxes2.float()  # the float64 answer is for these float32 values
    for function in (geometry.rotated_iou_3d, geometry.rotated_iou_bev):
        expected = function(boxes1.double(), boxes2.double())
        forward, backward = function(boxes1, boxes2).double(), function(boxes2, boxes1).double()
        assert (forward - expected).abs().max() < 1e-4
        assert (backward - expected).abs().max() < 1e-4
    expected = geometry.heading_error(boxes1[:, 6].double(), boxes2[:, 6].double())
    assert (geometry.heading_error(boxes1[:, 6], boxes2[:, 6]).double() - expected).abs().max() < 1e-4
    assert torch.equal(
        geometry.heading_error(boxes1[:, 6], boxes2[:, 6]), geometry.heading_error(boxes2[:, 6], boxes1[:, 6])
    )


# ----------------------------------------------------------------------------- 6. zero gradient at pred == target
IDENTICAL_CASES = [
    CAR,
    [0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],
    [-3.0, 5.0, 0.2, 2.0, 2.0, 2.0, math.pi / 4],
    [1.0e4, -1.0e4, 1.2, 4.2, 1.8, 1.6, 2.1],
    [5.0, 1.0, -1.0, 0.6, 0.8, 1.7, -7.0],
    [0.0, 0.0, 0.0, 20.0, 0.2, 3.0, math.pi / 2],
]


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_loss_has_exactly_zero_gradient_at_pred_equal_target(name, dtype):
    target = torch.tensor(IDENTICAL_CASES, dtype=dtype)
    options = [{}] if name != "gciou" else [{}, {"g": "exp", "grad_rescale": True}, {"p_form": "linear", "alpha": 3}]
    for kwargs in options:
        pred = target.clone().requires_grad_(True)
        build_loss(name, reduction="sum", **kwargs)(pred, target, torch.ones(len(target), dtype=dtype)).backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred)), (name, kwargs, pred.grad)
    for function in (geometry.rotated_iou_3d, geometry.rotated_iou_bev):
        pred = target.clone().requires_grad_(True)
        other = target.clone().requires_grad_(True)
        function(pred, other).sum().backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred)) and torch.equal(other.grad, torch.zeros_like(other))


# ----------------------------------------------------------------------------- 7. options validated at build
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_option_is_validated_when_the_loss_is_built(name):
    with pytest.raises(ValueError, match="reduction must be one of .* got 'avg'"):
        build_loss(name, reduction="avg")
    for eps in (0, -1e-6, float("nan"), float("inf"), "1e-6", True):
        with pytest.raises(ValueError, match="eps must be a positive finite number"):
            build_loss(name, eps=eps)
    if name == "gciou":
        with pytest.raises(ValueError, match="p_form must be one of .* got 'quadratic'"):
            build_loss(name, p_form="quadratic")
        with pytest.raises(ValueError, match="grad_rescale must be True or False, got 'yes'"):
            build_loss(name, grad_rescale="yes")
        with pytest.raises(ValueError, match="alpha must be > 0 with p_form='linear', got 0"):
            build_loss(name, p_form="linear", alpha=0)
    if name == "odiou":
        with pytest.raises(ValueError, match="orientation_weight must be a finite number >= 0, got -1"):
            build_loss(name, orientation_weight=-1)


# ----------------------------------------------------------------------------- 8. dtype promotion
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize(
    "pred_dtype, target_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float16, torch.float32)],
)
def test_losses_promote_like_the_geometry(name, pred_dtype, target_dtype):
    pred64, target64 = samples.random_box_pairs(8, seed=7)
    pred, target = pred64.to(pred_dtype), target64.to(target_dtype)
    loss = loss_fn(name)(pred, target)
    assert (
        loss.dtype
        == geometry.rotated_iou_3d(pred, target).dtype
        == torch.promote_types(geometry.geometry_float(pred).dtype, target_dtype)
    )
    expected = loss_fn(name)(pred.to(loss.dtype), target.to(loss.dtype))  # no precision is thrown away first
    assert torch.equal(loss, expected)


# ----------------------------------------------------------------------------- GCIoU's p_form (issue 9, item 3)
@pytest.mark.parametrize(
    "p_form, alpha, weight, weight_slope",
    [
        ("power", 3.0, lambda d: math.exp(d**3), lambda d: 3 * d**2 * math.exp(d**3)),
        ("linear", 2.0, lambda d: math.exp(2 * d), lambda d: 2 * math.exp(2 * d)),
        ("linear", 0.5, lambda d: math.exp(0.5 * d), lambda d: 0.5 * math.exp(0.5 * d)),
    ],
)
def test_gciou_p_form_values_and_heading_gradient_by_hand(p_form, alpha, weight, weight_slope):
    """L = -ln(IoU + eps) e^{P(delta)} (g off); dL/dheading = d(-ln IoU)/dheading e^P + (-ln IoU) P'(delta) e^P."""
    target = torch.tensor([CAR], dtype=torch.float64)
    pred = target.clone()
    pred[0, 0] += 0.3
    delta = 0.35
    pred[0, 6] += delta
    pred.requires_grad_(True)
    loss = gciou_loss(pred, target, alpha=alpha, g=None, p_form=p_form)
    log_term = log_iou_loss(pred.detach(), target).item()
    assert loss.item() == pytest.approx(log_term * weight(delta), rel=1e-12)
    loss.sum().backward()
    log_pred = pred.detach().clone().requires_grad_(True)
    log_iou_loss(log_pred, target).sum().backward()  # the IoU part of the slope, by autograd of -ln(IoU + eps) alone
    expected = log_pred.grad[0, 6].item() * weight(delta) + log_term * weight_slope(delta)
    assert pred.grad[0, 6].item() == pytest.approx(expected, rel=1e-10)


def test_gciou_p_form_default_is_power_and_linear_alpha_one_differs_beyond_delta_one():
    target = torch.tensor([CAR], dtype=torch.float64)
    pred = target.clone()
    pred[0, 6] += 1.2
    power = gciou_loss(pred, target, alpha=1.0, g=None)
    assert power.item() == gciou_loss(pred, target, alpha=1.0, g=None, p_form="linear").item()  # theta^1 = 1 theta
    squared = gciou_loss(pred, target, alpha=2.0, g=None)
    assert squared.item() == pytest.approx(log_iou_loss(pred, target).item() * math.exp(1.2**2), rel=1e-12)
    assert squared.item() != gciou_loss(pred, target, alpha=2.0, g=None, p_form="linear").item()
    assert "p_form='linear'" in repr(build_loss("gciou", p_form="linear"))


# ----------------------------------------------------------------------------- registry and prefilter
def test_loss_names_come_from_the_registry():
    assert LOSS_NAMES == tuple(LOSSES) and "gciou" in LOSS_NAMES and "riou" not in LOSS_NAMES
    for name in LOSS_NAMES:
        assert type(build_loss(name)) is LOSSES[name]


@pytest.mark.parametrize("use_height", [False, True])
def test_candidate_pairs_hold_every_overlapping_pair_and_drop_most_circle_false_positives(use_height):
    boxes1 = samples.random_boxes(300, seed=8, extent=15.0)
    boxes2 = samples.random_boxes(250, seed=9, extent=15.0)
    i, j = geometry.candidate_pairs(boxes1, boxes2, use_height=use_height)
    function = geometry.rotated_overlap_3d if use_height else geometry.rotated_overlap_bev
    intersection, _ = function(boxes1[:, None], boxes2[None, :])  # brute force over all pairs
    overlapping = set(zip(*(intersection > 1e-12).nonzero(as_tuple=True)))
    found = set(zip(i.tolist(), j.tolist()))
    assert {(int(a), int(b)) for a, b in overlapping} <= found
    assert torch.equal(i * 250 + j, (i * 250 + j).sort().values)  # sorted by (i, j)
    radius1 = torch.hypot(boxes1[:, 3], boxes1[:, 4]) / 2
    radius2 = torch.hypot(boxes2[:, 3], boxes2[:, 4]) / 2
    circles = torch.cdist(boxes1[:, :2], boxes2[:, :2]) <= radius1[:, None] + radius2[None, :]
    assert len(found) < 0.8 * int(circles.sum())  # the separating-axis stage does work
    assert len(found) <= 1.5 * len(overlapping)

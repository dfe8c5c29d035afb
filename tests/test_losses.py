"""Tests of the loss family: golden values, gradient rescaling, options, validation, degenerate boxes."""

import functools
import math

import pytest
import torch

from pcdet_gciou.geometry import rotated_iou_3d, rotated_overlap_3d
from pcdet_gciou.losses import (
    LOSSES,
    GCIoULoss,
    build_loss,
    diou_loss,
    gciou_loss,
    giou_loss,
    iou_loss,
    log_iou_loss,
    odiou_loss,
    rdiou_loss,
    rescale_size_grad,
)

CAR = (3.9, 1.6, 1.56)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def car(x=0.0, y=0.0, z=0.0, heading=0.0, scale=1.0, dtype=torch.float64):
    return torch.tensor([x, y, z, CAR[0] * scale, CAR[1] * scale, CAR[2] * scale, heading], dtype=dtype)


def random_pairs(n=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.cat(
        [
            torch.randn(n, 3, generator=g),
            torch.rand(n, 3, generator=g) * 3 + 0.5,
            (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi,
        ],
        dim=1,
    ).to(dtype)
    pred = target + torch.randn(n, 7, generator=g).to(dtype) * torch.tensor(
        [0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.5], dtype=dtype
    )
    pred[:, 3:6] = pred[:, 3:6].clamp_min(0.1)
    return pred, target


# ---------------------------------------------------------------- golden values (hand-derived)


def test_axis_aligned_shift_values_match_hand_computation():
    # Two 4 x 2 x 1 boxes shifted by 1 m along x: I = 3*2*1 = 6, U = 8 + 8 - 6 = 10, IoU = 0.6.
    target = torch.tensor([[0.0, 0, 0, 4, 2, 1, 0]], dtype=torch.float64)
    pred = torch.tensor([[1.0, 0, 0, 4, 2, 1, 0]], dtype=torch.float64)
    assert iou_loss(pred, target).item() == pytest.approx(0.4, abs=1e-12)
    assert log_iou_loss(pred, target).item() == pytest.approx(-math.log(0.6 + 1e-6), abs=1e-12)
    # Enclosing box 5 x 2 x 1 = 10 = U: GIoU penalty 0. Centre distance 1, diagonal^2 = 25 + 4 + 1 = 30.
    assert giou_loss(pred, target).item() == pytest.approx(0.4, abs=1e-6)
    assert diou_loss(pred, target).item() == pytest.approx(0.4 + 1 / 30, abs=1e-6)
    # Same heading: orientation term 1 - |cos 0| = 0.
    assert odiou_loss(pred, target).item() == pytest.approx(0.4 + 1 / 30, abs=1e-6)
    # RDIoU with equal headings: 4D IoU = 6*1 / (8 + 8 - 6) = 0.6; 4D enclosing diagonal^2 = 25+4+1+1 = 31.
    assert rdiou_loss(pred, target).item() == pytest.approx(1 - (0.6 - 1 / 31), abs=1e-6)


def test_giou_penalty_for_disjoint_boxes():
    # 2 x 2 x 2 cubes 4 m apart in x: IoU 0, enclosing 6 x 2 x 2 = 24, U = 16 -> GIoU loss = 1 + 8/24.
    target = torch.tensor([[0.0, 0, 0, 2, 2, 2, 0]], dtype=torch.float64)
    pred = torch.tensor([[4.0, 0, 0, 2, 2, 2, 0]], dtype=torch.float64, requires_grad=True)
    loss = giou_loss(pred, target)
    assert loss.item() == pytest.approx(1 + 8 / 24, abs=1e-6)
    loss.backward()
    assert pred.grad[0, 0] > 0  # moving pred towards the target lowers the loss


@pytest.mark.parametrize(
    "g, g_value", [("tan", math.tan), ("exp", math.expm1), ("linear", lambda d: d), (None, lambda d: 0.0)]
)
@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0, None])
def test_gciou_matches_eq17_by_hand(g, g_value, alpha):
    pred = car(0.3, -0.1, 0.05, heading=0.4 + math.pi)  # heading + pi: same box, delta folds to 0.4
    target = car(heading=0.0)
    delta = 0.4
    iou = rotated_iou_3d(pred, target).item()
    f = 1.0 if alpha is None else math.exp(delta**alpha)
    expected = -math.log(iou + 1e-6) * f + g_value(delta)
    assert gciou_loss(pred[None], target[None], alpha=alpha, g=g).item() == pytest.approx(expected, rel=1e-12)


def test_gciou_clamps_delta_at_max_angle_and_stops_its_angle_gradient():
    target = car()
    pred = car(heading=1.56).requires_grad_()
    loss = gciou_loss(pred[None], target[None], max_angle=1.2, alpha=None, g="tan")
    iou = rotated_iou_3d(pred.detach(), target).item()
    assert loss.item() == pytest.approx(-math.log(iou + 1e-6) + math.tan(1.2), rel=1e-12)
    loss.backward()
    # Only the IoU term still depends on the heading.
    pred2 = car(heading=1.56).requires_grad_()
    (-torch.log(rotated_iou_3d(pred2, target) + 1e-6)).backward()
    assert pred.grad[6].item() == pytest.approx(pred2.grad[6].item(), rel=1e-9)


@pytest.mark.parametrize("g, rising_from", [("tan", 0.14), ("exp", 0.08)])
def test_gciou_angle_gradient_increases_with_angle_error(g, rising_from):
    # Paper Fig. 1a corrected: with f and g the angle gradient grows with the error (car-sized, centre-aligned
    # boxes), unlike -ln IoU whose gradient collapses at large errors. Measured, not assumed: below ~0.1 rad the
    # -ln IoU gradient itself falls (1.40 at 0.01 rad -> 1.21 at 0.13 rad) faster than f and g rise, so GCIoU's
    # curve is flat within 3% there and strictly increasing only beyond `rising_from`.
    angles = torch.linspace(0.05, 1.4, 136, dtype=torch.float64)
    target = car().expand(len(angles), 7)
    pred = car().repeat(len(angles), 1)
    pred[:, 6] = angles
    pred.requires_grad_()
    gciou_loss(pred, target, g=g).sum().backward()
    grad = pred.grad[:, 6]
    rising = angles >= rising_from
    assert torch.all(grad[rising][1:] > grad[rising][:-1]), grad
    flat = grad[~rising]
    assert (flat.max() - flat.min()) / flat.max() < 0.03
    assert torch.all(grad[rising] >= flat.min())
    pred.grad = None
    log_iou_loss(pred, target).sum().backward()
    assert pred.grad[-1, 6] < 0.25 * pred.grad[:, 6].max()  # the defect GCIoU corrects


# ---------------------------------------------------------------- gradient rescaling (Eq. 18)


@pytest.mark.parametrize("device", DEVICES)
def test_grad_rescale_scales_exactly_the_size_gradients_by_union_two_thirds(device):
    pred, target = random_pairs(32, seed=1)
    pred, target = pred.to(device), target.to(device)
    plain = pred.clone().requires_grad_()
    gciou_loss(plain, target).sum().backward()
    scaled = pred.clone().requires_grad_()
    value = gciou_loss(scaled, target, grad_rescale=True)
    assert torch.allclose(value, gciou_loss(pred, target))  # forward unchanged
    value.sum().backward()
    union = rotated_overlap_3d(pred, target)[1]
    factor = union ** (2.0 / 3.0)
    torch.testing.assert_close(scaled.grad[:, 3:6], plain.grad[:, 3:6] * factor[:, None], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scaled.grad[:, :3], plain.grad[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(scaled.grad[:, 6], plain.grad[:, 6], rtol=0, atol=0)


def test_grad_rescale_normalize_divides_by_the_weighted_batch_mean():
    pred, target = random_pairs(16, seed=2)
    weights = torch.zeros(16, dtype=torch.float64)
    weights[:10] = 1.0
    plain = pred.clone().requires_grad_()
    gciou_loss(plain, target, weights).sum().backward()
    scaled = pred.clone().requires_grad_()
    gciou_loss(scaled, target, weights, grad_rescale=True, rescale_normalize=True).sum().backward()
    factor = rotated_overlap_3d(pred, target)[1] ** (2.0 / 3.0)
    factor = factor / factor[:10].mean()
    torch.testing.assert_close(scaled.grad[:, 3:6], plain.grad[:, 3:6] * factor[:, None])


def test_rescale_size_grad_is_identity_forward_and_rejects_bad_factor():
    boxes = torch.randn(3, 7, requires_grad=True)
    out = rescale_size_grad(boxes, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(out, boxes)
    (out * torch.arange(7.0)).sum().backward()
    expected = torch.arange(7.0).repeat(3, 1)
    expected[:, 3:6] *= torch.tensor([1.0, 2.0, 3.0])[:, None]
    torch.testing.assert_close(boxes.grad, expected)
    with pytest.raises(ValueError, match="factor must be a tensor of shape"):
        rescale_size_grad(boxes, torch.ones(2))


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_module_agrees_with_function_and_reductions(name):
    pred, target = random_pairs(20, seed=3)
    weights = torch.rand(20, dtype=torch.float64)
    per_box = build_loss(name)(pred, target, weights)
    assert per_box.shape == (20,)
    unweighted = build_loss(name)(pred, target)
    torch.testing.assert_close(per_box, unweighted * weights)
    torch.testing.assert_close(build_loss(name, reduction="sum")(pred, target, weights), per_box.sum())
    torch.testing.assert_close(build_loss(name, reduction="mean")(pred, target, weights), per_box.sum() / weights.sum())
    torch.testing.assert_close(build_loss(name, reduction="mean")(pred, target), unweighted.mean())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_input_and_zero_weights_give_a_differentiable_zero(name):
    pred = torch.zeros(0, 7, requires_grad=True)
    loss = build_loss(name, reduction="mean")(pred, torch.zeros(0, 7))
    loss.backward()
    assert loss.item() == 0 and pred.grad is not None and pred.grad.shape == (0, 7)
    pred2, target2 = random_pairs(4, seed=4)
    pred2.requires_grad_()
    zero = build_loss(name, reduction="mean")(pred2, target2, torch.zeros(4, dtype=torch.float64))
    zero.backward()
    assert zero.item() == 0 and torch.all(pred2.grad == 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_minimal_at_the_target_and_decrease_towards_it(name):
    target = car(1.0, 2.0, -1.0, heading=0.3)[None]
    at_target = build_loss(name)(target.clone(), target)
    near = build_loss(name)(car(1.1, 2.0, -1.0, heading=0.35)[None], target)
    far = build_loss(name)(car(1.6, 2.4, -0.8, heading=0.9)[None], target)
    assert at_target.item() < near.item() < far.item()


def test_build_loss_and_options_validation():
    with pytest.raises(ValueError, match="unknown loss 'smooth_l1'; expected one of"):
        build_loss("smooth_l1")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['g'\]"):
        build_loss("iou", g="tan")
    with pytest.raises(ValueError, match="g must be one of"):
        GCIoULoss(g="sin")
    with pytest.raises(ValueError, match="alpha must be >= 1 with p_form=.power.*got -1"):
        build_loss("gciou", alpha=-1)
    with pytest.raises(ValueError, match=r"max_angle must be in \(0, pi/2\)"):
        build_loss("gciou", max_angle=math.pi / 2)
    assert isinstance(build_loss("GCIoU"), GCIoULoss)


@pytest.mark.parametrize("loss", [gciou_loss, iou_loss, rdiou_loss])
def test_input_validation_names_what_was_got(loss):
    good = torch.zeros(3, 7)
    with pytest.raises(ValueError, match=r"got \(3, 6\)"):
        loss(torch.zeros(3, 6), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="same shape"):
        loss(good, torch.zeros(4, 7))
    with pytest.raises(TypeError, match="floating-point dtype, got torch.int64"):
        loss(good.long(), good.long())
    with pytest.raises(TypeError, match="torch.Tensor"):
        loss(good.tolist(), good)
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss(good, good, reduction="avg")
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        loss(good, good, torch.ones(3, 1))
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        loss(good, good, eps=0)


# ---------------------------------------------------------------- numerics

DEGENERATE = {
    "identical": (car(heading=0.3), car(heading=0.3)),
    "turned_90": (car(heading=math.pi / 2), car()),
    "turned_180": (car(heading=math.pi), car()),
    "touching": (car(x=CAR[0]), car()),
    "nested": (car(scale=0.3, x=0.2), car()),
    "zero_size": (torch.tensor([0, 0, 0, 0, 0, 0, 0.0], dtype=torch.float64), car()),
    "far_apart": (car(x=500.0), car()),
    "huge_coordinates": (car(x=1e4 + 0.3, y=-1e4, heading=0.2), car(x=1e4, y=-1e4)),
    "dx0_dy1e11": (torch.tensor([0, 0, 0, 0, 1e11, 1.5, 0.1], dtype=torch.float64), car()),
    "dy1e11": (torch.tensor([0, 0, 0, 4.0, 1e11, 1.5, 0.1], dtype=torch.float64), car()),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_no_nan_or_inf_for_degenerate_boxes_in_float32(name, case):
    pred, target = (b.float()[None] for b in DEGENERATE[case])
    pred.requires_grad_()
    options = {"grad_rescale": True} if name == "gciou" else {}
    loss = build_loss(name, **options)(pred, target)
    loss.sum().backward()
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(pred.grad).all(), pred.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_autocast_computes_in_float32_without_nan(name):
    pred, target = random_pairs(8, seed=5, dtype=torch.float32)
    pred.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build_loss(name, reduction="mean")(pred.bfloat16(), target.bfloat16())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_gciou_gradcheck_float64():
    pred, target = random_pairs(6, seed=6)
    pred[:, 6] = target[:, 6] + torch.tensor([0.2, -0.4, 0.7, 1.0, -1.2, 0.3], dtype=torch.float64)
    pred.requires_grad_()
    for options in ({}, {"g": "exp"}, {"alpha": None, "g": None}, {"p_form": "linear", "alpha": 3.0}):
        assert torch.autograd.gradcheck(functools.partial(gciou_loss, target=target, **options), (pred,))

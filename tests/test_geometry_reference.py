"""Rotated BEV/3D IoU against an independent shapely reference, plus invariances, gradients and input checks.

Written against the public contract of ``pcdet_gciou.geometry`` only (see ``tests/shapely_reference.py`` for the
reference and ``pcdet_gciou.geometry.samples`` for the inputs, which the benchmark reuses).
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

pytest.importorskip("shapely", reason="the float64 reference needs shapely (pip install -e '.[test]')")

import shapely_reference as ref  # noqa: E402

from pcdet_gciou import geometry  # noqa: E402
from pcdet_gciou.geometry import samples  # noqa: E402

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
KINDS = ["bev", "3d"]
# Absolute IoU tolerances of the issue.
IOU_TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
# Invariances hold up to round-off only: tighter than the reference tolerance in float64.
INVARIANCE_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def iou_fn(kind: str):
    return {"bev": geometry.rotated_iou_bev, "3d": geometry.rotated_iou_3d}[kind]


def iou_matrix_fn(kind: str):
    return {"bev": geometry.rotated_iou_bev_matrix, "3d": geometry.rotated_iou_3d_matrix}[kind]


def reference_iou(kind: str, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    return {"bev": ref.iou_bev, "3d": ref.iou_3d}[kind](boxes1, boxes2)


def reference_pair_fn(kind: str):
    return {"bev": ref.iou_bev_pair, "3d": ref.iou_3d_pair}[kind]


def assert_matches_reference(names, got: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    """Fail listing every case (name, expected, got) outside ``atol``; NaN always fails."""
    got64 = got.detach().cpu().double().reshape(-1)
    expected = expected.reshape(-1)
    error = (got64 - expected).abs()
    bad = ~(error <= atol)
    if bad.any():
        lines = [
            f"  {names[i]}: expected {expected[i].item():.12g}, got {got64[i].item():.12g}, "
            f"|error| {error[i].item():.3g}"
            for i in torch.nonzero(bad).flatten().tolist()
        ]
        pytest.fail(f"{what}: {int(bad.sum())}/{bad.numel()} cases outside atol={atol}:\n" + "\n".join(lines))


def case_names(n: int, prefix: str = "random") -> list[str]:
    return [f"{prefix}[{i}]" for i in range(n)]


def generic_pairs(n: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 pairs with clearly partial overlap in BEV and in z (smooth points of the IoU)."""
    boxes1, boxes2 = samples.random_box_pairs(400, seed=seed)
    iou = ref.iou_3d(boxes1, boxes2)
    keep = torch.nonzero((iou > 0.05) & (iou < 0.9)).flatten()[:n]
    assert keep.numel() == n, "the seeded sample has too few partially overlapping pairs"
    return boxes1[keep].clone(), boxes2[keep].clone()


# --------------------------------------------------------------------------------------------- the reference itself


def test_reference_matches_hand_derived_values():
    """The shapely reference reproduces closed forms, so failures below point at the library."""
    car = [0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3]
    turned = car[:6] + [0.3 + math.pi / 2]
    assert ref.iou_bev_pair(car, turned) == pytest.approx(4.0 / 12.0, abs=1e-12)  # 2x2 overlap / (8+8-4)
    square = [1.0, -2.0, 0.0, 2.0, 2.0, 1.0, 0.2]
    octagon = 8.0 * (math.sqrt(2.0) - 1.0)  # a unit-half-width square and its 45 degree turn
    assert ref.overlap_bev(square, square[:6] + [0.2 + math.pi / 4])[0] == pytest.approx(octagon, abs=1e-12)
    assert ref.iou_bev_pair(square, square[:6] + [0.2 + math.pi / 4]) == pytest.approx(math.sqrt(0.5), abs=1e-12)
    nested = [0.0, 0.0, 0.0, 2.0, 1.0, 0.5, 0.3]
    assert ref.iou_3d_pair(car, nested) == pytest.approx(1.0 / 12.0, abs=1e-12)
    shifted_z = car[:2] + [0.75] + car[3:]  # half the height overlaps
    assert ref.iou_3d_pair(car, shifted_z) == pytest.approx(0.5 * 12 / (24 - 0.5 * 12), abs=1e-12)
    assert ref.iou_bev_pair(car, [4.0 * math.cos(0.3), 4.0 * math.sin(0.3)] + car[2:]) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ values vs the reference


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_iou_matches_reference_on_random_pairs(device, dtype, kind):
    boxes1, boxes2 = samples.random_box_pairs(300, seed=0, dtype=dtype, device=device)
    iou = iou_fn(kind)(boxes1, boxes2)
    assert iou.shape == (300,)
    assert iou.dtype == dtype and iou.device.type == device
    expected = reference_iou(kind, boxes1, boxes2)
    assert (expected > 0.05).sum() > 100, "the sample should overlap partially most of the time"
    assert_matches_reference(case_names(300), iou, expected, IOU_TOL[dtype], f"rotated_iou_{kind} random")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_iou_matches_reference_on_adversarial_pairs(device, dtype, kind):
    names, boxes1, boxes2 = samples.adversarial_box_pairs(dtype=dtype, device=device)
    iou = iou_fn(kind)(boxes1, boxes2)
    assert_matches_reference(names, iou, reference_iou(kind, boxes1, boxes2), IOU_TOL[dtype], f"rotated_iou_{kind}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_iou_on_huge_and_degenerate_boxes_is_finite_bounded_and_correct(device, dtype, kind):
    names, boxes1, boxes2 = samples.huge_and_degenerate_box_pairs(dtype=dtype, device=device)
    iou = iou_fn(kind)(boxes1, boxes2)
    assert torch.isfinite(iou).all(), dict(zip(names, iou.tolist()))
    assert ((iou >= 0) & (iou <= 1)).all(), dict(zip(names, iou.tolist()))
    assert_matches_reference(names, iou, reference_iou(kind, boxes1, boxes2), IOU_TOL[dtype], f"rotated_iou_{kind}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_overlap_matches_reference(device, dtype, kind):
    """``rotated_overlap_*`` returns (intersection, union) areas/volumes; checked relative to their size."""
    overlap = {"bev": geometry.rotated_overlap_bev, "3d": geometry.rotated_overlap_3d}[kind]
    reference = {"bev": ref.overlap_bev_paired, "3d": ref.overlap_3d_paired}[kind]
    random1, random2 = samples.random_box_pairs(100, seed=3, dtype=dtype, device=device)
    names, adversarial1, adversarial2 = samples.adversarial_box_pairs(dtype=dtype, device=device)
    boxes1, boxes2 = torch.cat([random1, adversarial1]), torch.cat([random2, adversarial2])
    names = case_names(100) + names
    intersection, union = overlap(boxes1, boxes2)
    expected_intersection, expected_union = reference(boxes1, boxes2)
    scale = expected_union.clamp(min=1.0)
    tol = IOU_TOL[dtype]
    assert_matches_reference(
        names,
        intersection.cpu().double() / scale,
        expected_intersection / scale,
        tol,
        f"rotated_overlap_{kind} intersection / max(union, 1)",
    )
    assert_matches_reference(
        names,
        union.cpu().double() / scale,
        expected_union / scale,
        tol,
        f"rotated_overlap_{kind} union / max(union, 1)",
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_iou_broadcasts_leading_dimensions(device, kind):
    boxes1 = samples.random_boxes(5, seed=11, device=device, extent=3.0)
    boxes2 = samples.random_boxes(6, seed=12, device=device, extent=3.0)
    grid = iou_fn(kind)(boxes1[:, None, :], boxes2[None, :, :])
    assert grid.shape == (5, 6)
    expected = ref.iou_matrix(reference_pair_fn(kind), boxes1, boxes2)
    assert_matches_reference(case_names(30, "grid"), grid, expected, 1e-6, f"rotated_iou_{kind} (5,1,7)x(1,6,7)")
    one_to_many = iou_fn(kind)(boxes1[0], boxes2)
    assert one_to_many.shape == (6,)
    assert_matches_reference(case_names(6, "row"), one_to_many, expected[0], 1e-6, f"rotated_iou_{kind} (7,)x(6,7)")
    batched = iou_fn(kind)(boxes1[:3].reshape(1, 3, 7).expand(2, 3, 7), boxes2[:3])
    assert batched.shape == (2, 3)
    assert_matches_reference(
        case_names(6, "batch"),
        batched,
        expected[[0, 1, 2], [0, 1, 2]].repeat(2),
        1e-6,
        f"rotated_iou_{kind} (2,3,7)x(3,7)",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_iou_leaves_inputs_untouched(kind):
    boxes1, boxes2 = samples.random_box_pairs(50, seed=4)
    copy1, copy2 = boxes1.clone(), boxes2.clone()
    iou_fn(kind)(boxes1, boxes2)
    assert torch.equal(boxes1, copy1) and torch.equal(boxes2, copy2)


# -------------------------------------------------------------------------------------------------- matrix versions


def chunk_keywords(fn) -> list[str]:
    """The keywords that bound a matrix function's working set (blocks of rows, chunks of pairs)."""
    return [name for name in inspect.signature(fn).parameters if "chunk" in name.lower() or "block" in name.lower()]


def matrix_inputs(dtype, device, offset: float = 0.0):
    boxes1 = samples.random_boxes(23, seed=1, extent=8.0)
    boxes2 = samples.random_boxes(19, seed=2, extent=8.0)
    _, adversarial1, adversarial2 = samples.adversarial_box_pairs()
    boxes1 = torch.cat([boxes1, adversarial1[:12]])
    boxes2 = torch.cat([boxes2, adversarial2[:12]])
    boxes1[:, :2] += offset
    boxes2[:, :2] += offset
    return boxes1.to(device=device, dtype=dtype), boxes2.to(device=device, dtype=dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_matrix_matches_pairwise_reference(device, dtype, kind):
    boxes1, boxes2 = matrix_inputs(dtype, device)
    matrix = iou_matrix_fn(kind)(boxes1, boxes2)
    assert matrix.shape == (boxes1.shape[0], boxes2.shape[0])
    assert matrix.dtype == dtype and matrix.device.type == device
    expected = ref.iou_matrix(reference_pair_fn(kind), boxes1, boxes2)
    assert (expected > 0).sum() > 40, "the sample should contain overlapping pairs"
    names = [f"({i},{j})" for i in range(matrix.shape[0]) for j in range(matrix.shape[1])]
    assert_matches_reference(names, matrix, expected, IOU_TOL[dtype], f"rotated_iou_{kind}_matrix")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_matrix_at_1e4_metres_matches_reference(device, dtype, kind):
    boxes1, boxes2 = matrix_inputs(dtype, device, offset=1.0e4)
    matrix = iou_matrix_fn(kind)(boxes1, boxes2)
    expected = ref.iou_matrix(reference_pair_fn(kind), boxes1, boxes2)
    names = [f"({i},{j})" for i in range(matrix.shape[0]) for j in range(matrix.shape[1])]
    assert_matches_reference(names, matrix, expected, IOU_TOL[dtype], f"rotated_iou_{kind}_matrix at 1e4 m")


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_matrix_small_chunks_give_the_same_result(device, kind, chunk):
    """Force tiny blocks/chunks (one keyword at a time, then all) so every chunk boundary is crossed."""
    fn = iou_matrix_fn(kind)
    keywords = chunk_keywords(fn)
    if not keywords:
        pytest.skip(f"{fn.__name__}{inspect.signature(fn)} has no chunk-size keyword to force small chunks")
    boxes1, boxes2 = matrix_inputs(torch.float64, device)
    expected = ref.iou_matrix(reference_pair_fn(kind), boxes1, boxes2)
    names = [f"({i},{j})" for i in range(expected.shape[0]) for j in range(expected.shape[1])]
    settings = [{keyword: chunk} for keyword in keywords] + [{keyword: chunk for keyword in keywords}]
    for setting in settings:
        chunked = fn(boxes1, boxes2, **setting)
        assert_matches_reference(names, chunked, expected, 1e-6, f"rotated_iou_{kind}_matrix({setting})")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_matrix_agrees_with_broadcast_paired_version(device, kind):
    boxes1, boxes2 = matrix_inputs(torch.float32, device)
    matrix = iou_matrix_fn(kind)(boxes1, boxes2)
    paired = iou_fn(kind)(boxes1[:, None, :], boxes2[None, :, :])
    torch.testing.assert_close(matrix, paired, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_matrix_of_empty_inputs(device, kind):
    fn = iou_matrix_fn(kind)
    some = samples.random_boxes(4, seed=5, dtype=torch.float32, device=device)
    none = some[:0]
    for boxes1, boxes2, shape in ((none, some, (0, 4)), (some, none, (4, 0)), (none, none, (0, 0))):
        result = fn(boxes1, boxes2)
        assert result.shape == shape
        assert result.dtype == torch.float32 and result.device.type == device


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_needs_no_gradient(kind):
    boxes1, boxes2 = matrix_inputs(torch.float64, "cpu")
    boxes1.requires_grad_(True)
    matrix = iou_matrix_fn(kind)(boxes1, boxes2)
    assert not matrix.requires_grad


# ----------------------------------------------------------------------------------------------------- invariances


def rotate_about(boxes: torch.Tensor, angle: float, pivot=(3.0, -7.0)) -> torch.Tensor:
    """Rotate box centres about ``pivot`` by ``angle`` and add ``angle`` to the headings."""
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    out = boxes.clone()
    x, y = boxes[:, 0] - pivot[0], boxes[:, 1] - pivot[1]
    out[:, 0] = pivot[0] + cos_a * x - sin_a * y
    out[:, 1] = pivot[1] + sin_a * x + cos_a * y
    out[:, 6] = boxes[:, 6] + angle
    return out


def with_heading_shift(boxes: torch.Tensor, shift: float) -> torch.Tensor:
    out = boxes.clone()
    out[:, 6] = out[:, 6] + shift
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_iou_invariances(device, dtype, kind):
    fn = iou_fn(kind)
    boxes1, boxes2 = samples.random_box_pairs(200, seed=9, dtype=dtype, device=device)
    names, adversarial1, adversarial2 = samples.adversarial_box_pairs(dtype=dtype, device=device)
    keep = [i for i, name in enumerate(names) if "1e4" not in name]  # 1e4 m boxes can't be moved exactly in float32
    boxes1, boxes2 = torch.cat([boxes1, adversarial1[keep]]), torch.cat([boxes2, adversarial2[keep]])
    names = case_names(200) + [names[i] for i in keep]
    base = fn(boxes1, boxes2)
    tol = INVARIANCE_TOL[dtype]
    shift = torch.tensor([12.5, -33.25, 4.75, 0, 0, 0, 0], dtype=dtype, device=device)
    transforms = {
        "shared translation": (boxes1 + shift, boxes2 + shift),
        "shared rotation by 0.7 rad": (rotate_about(boxes1, 0.7), rotate_about(boxes2, 0.7)),
        "shared rotation by -2.9 rad": (rotate_about(boxes1, -2.9), rotate_about(boxes2, -2.9)),
        "swapped arguments": (boxes2, boxes1),
        "box 1 heading + pi": (with_heading_shift(boxes1, math.pi), boxes2),
        "box 2 heading + pi": (boxes1, with_heading_shift(boxes2, math.pi)),
        "box 2 heading - 2 pi": (boxes1, with_heading_shift(boxes2, -2 * math.pi)),
    }
    for what, (moved1, moved2) in transforms.items():
        assert_matches_reference(names, fn(moved1, moved2), base.cpu().double(), tol, f"rotated_iou_{kind}: {what}")


# ------------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_at_generic_configurations(device, kind):
    boxes1, boxes2 = generic_pairs(6)
    boxes1 = boxes1.to(device).requires_grad_(True)
    boxes2 = boxes2.to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(iou_fn(kind), (boxes1, boxes2), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_finite_differences_of_the_reference(device, kind):
    """Autograd gradients of all 7 parameters of both boxes vs central differences of the shapely IoU."""
    boxes1, boxes2 = generic_pairs(8, seed=13)
    leaf1 = boxes1.to(device).requires_grad_(True)
    leaf2 = boxes2.to(device).requires_grad_(True)
    iou_fn(kind)(leaf1, leaf2).sum().backward()  # pairs are independent: the sum's gradient is per pair
    pair_fn = reference_pair_fn(kind)
    step = 1e-6
    failures = []
    for i in range(boxes1.shape[0]):
        for which, boxes, grad in ((1, boxes1, leaf1.grad), (2, boxes2, leaf2.grad)):
            for param, name in enumerate(("x", "y", "z", "dx", "dy", "dz", "heading")):
                plus, minus = boxes[i].tolist(), boxes[i].tolist()
                plus[param] += step
                minus[param] -= step
                if which == 1:
                    numeric = (pair_fn(plus, boxes2[i].tolist()) - pair_fn(minus, boxes2[i].tolist())) / (2 * step)
                else:
                    numeric = (pair_fn(boxes1[i].tolist(), plus) - pair_fn(boxes1[i].tolist(), minus)) / (2 * step)
                analytic = grad[i, param].item()
                if not abs(analytic - numeric) <= 1e-6 + 1e-5 * abs(numeric):
                    failures.append(
                        f"pair {i} box {which} d/d{name}: finite difference {numeric:.10g}, autograd {analytic:.10g}"
                    )
    assert not failures, "\n".join(failures)


def all_hard_pairs(dtype, device):
    names, boxes1, boxes2 = samples.adversarial_box_pairs(dtype=dtype, device=device)
    huge_names, huge1, huge2 = samples.huge_and_degenerate_box_pairs(dtype=dtype, device=device)
    return names + huge_names, torch.cat([boxes1, huge1]), torch.cat([boxes2, huge2])


def assert_finite_values_and_gradients(fn, names, boxes1, boxes2, context):
    leaf1 = boxes1.detach().clone().requires_grad_(True)
    leaf2 = boxes2.detach().clone().requires_grad_(True)
    with context():
        iou = fn(leaf1, leaf2)
    assert iou.dtype == boxes1.dtype, f"IoU computed in {iou.dtype}, inputs are {boxes1.dtype}"
    bad_values = [names[i] for i in torch.nonzero(~torch.isfinite(iou)).flatten().tolist()]
    out_of_range = [names[i] for i in torch.nonzero((iou < 0) | (iou > 1)).flatten().tolist()]
    assert not bad_values, f"non-finite IoU for {bad_values}"
    assert not out_of_range, f"IoU outside [0, 1] for {out_of_range}"
    iou.sum().backward()
    bad_rows = ~(torch.isfinite(leaf1.grad).all(-1) & torch.isfinite(leaf2.grad).all(-1))
    bad_grads = [names[i] for i in torch.nonzero(bad_rows).flatten().tolist()]
    assert not bad_grads, f"non-finite gradient for {bad_grads}"
    return iou


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_no_nan_or_inf_in_values_or_gradients_on_hard_cases(device, dtype, kind):
    names, boxes1, boxes2 = all_hard_pairs(dtype, device)
    assert_finite_values_and_gradients(iou_fn(kind), names, boxes1, boxes2, _NoContext)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_autocast_bfloat16_computes_in_float32(device, kind):
    names, boxes1, boxes2 = all_hard_pairs(torch.float32, device)
    random1, random2 = samples.random_box_pairs(100, seed=21, dtype=torch.float32, device=device)
    names = names + case_names(100)
    boxes1, boxes2 = torch.cat([boxes1, random1]), torch.cat([boxes2, random2])
    context = lambda: torch.autocast(device, dtype=torch.bfloat16)  # noqa: E731
    iou = assert_finite_values_and_gradients(iou_fn(kind), names, boxes1, boxes2, context)
    assert_matches_reference(
        names,
        iou,
        reference_iou(kind, boxes1, boxes2),
        IOU_TOL[torch.float32],
        f"rotated_iou_{kind} under bfloat16 autocast",
    )


@pytest.mark.parametrize("grad_rescale", [False, True], ids=["plain", "grad_rescale"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_gciou_loss_is_finite_on_hard_cases(device, dtype, grad_rescale):
    """The loss that trains on these boxes keeps values and gradients finite too."""
    from pcdet_gciou.losses import gciou_loss

    names, boxes1, boxes2 = all_hard_pairs(dtype, device)
    pred = boxes1.detach().clone().requires_grad_(True)
    loss = gciou_loss(pred, boxes2, grad_rescale=grad_rescale)
    assert loss.shape == (len(names),)
    bad_values = [names[i] for i in torch.nonzero(~torch.isfinite(loss)).flatten().tolist()]
    assert not bad_values, f"non-finite GCIoU loss for {bad_values}"
    loss.sum().backward()
    bad_grads = [names[i] for i in torch.nonzero(~torch.isfinite(pred.grad).all(-1)).flatten().tolist()]
    assert not bad_grads, f"non-finite GCIoU gradient for {bad_grads}"


# ------------------------------------------------------------------------------------------------------- helpers


def assert_same_point_sets(got: torch.Tensor, expected: list, atol: float, what: str) -> None:
    """Every expected point has a got point within ``atol`` and vice versa (corner order is not in the contract)."""
    expected_tensor = torch.tensor(expected, dtype=torch.float64)
    distances = torch.cdist(got.detach().cpu().double(), expected_tensor)
    assert distances.min(dim=0).values.max() <= atol, f"{what}: got {got.tolist()}, expected {expected}"
    assert distances.min(dim=1).values.max() <= atol, f"{what}: got {got.tolist()}, expected {expected}"


@pytest.mark.parametrize("device", DEVICES)
def test_box_corners_are_the_reference_corners(device):
    boxes, _ = samples.random_box_pairs(20, seed=17, device=device)
    corners = geometry.box_corners_bev(boxes)
    corners_3d = geometry.box_corners_3d(boxes)
    assert corners.shape == (20, 4, 2) and corners_3d.shape == (20, 8, 3)
    for i, box in enumerate(boxes.cpu().tolist()):
        bev = ref.corners_bev(box)
        assert_same_point_sets(corners[i], bev, 1e-9, f"box_corners_bev of {box}")
        z, dz = box[2], box[5]
        corners_up_down = [(cx, cy, cz) for cx, cy in bev for cz in (z - dz / 2, z + dz / 2)]
        assert_same_point_sets(corners_3d[i], corners_up_down, 1e-9, f"box_corners_3d of {box}")


@pytest.mark.parametrize("device", DEVICES)
def test_heading_error_folds_into_zero_to_half_pi(device):
    delta = torch.tensor(
        [0.0, 0.3, math.pi / 2, 2.0, math.pi, 3 * math.pi / 4, -0.3, 2 * math.pi + 0.2, -5.0],
        dtype=torch.float64,
        device=device,
    )
    expected = [0.0, 0.3, math.pi / 2, math.pi - 2.0, 0.0, math.pi / 4, 0.3, 0.2, abs(-5.0 + 2 * math.pi)]
    base = torch.full_like(delta, 0.4)
    got = geometry.heading_error(base + delta, base)
    assert got.cpu().tolist() == pytest.approx(expected, abs=1e-9)
    assert geometry.heading_error(base, base + delta).cpu().tolist() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_points_in_boxes_mask_matches_polygon_containment(device):
    from shapely.geometry import Point, Polygon

    boxes = samples.random_boxes(6, seed=19, extent=4.0, device=device)
    gen = torch.Generator().manual_seed(23)
    points = (torch.rand(400, 4, generator=gen, dtype=torch.float64) * 2 - 1) * torch.tensor([6.0, 6.0, 1.5, 1.0])
    mask = geometry.points_in_boxes_mask(points.to(device), boxes)
    assert mask.shape == (400, 6) and mask.dtype == torch.bool
    for j, box in enumerate(boxes.cpu().tolist()):
        polygon = Polygon(ref.corners_bev(box))
        for i, (px, py, pz, _) in enumerate(points.tolist()):
            inside = polygon.contains(Point(px, py)) and abs(pz - box[2]) < box[5] / 2
            assert bool(mask[i, j]) == inside, f"point {i} {points[i].tolist()} box {j} {box}"
    assert mask.any(), "the sample should put some points inside boxes"


# ------------------------------------------------------------------------------------------------ input validation


def _normalised(message: str) -> str:
    return re.sub(r"\s+", "", message)


PAIRED_FUNCTIONS = ["rotated_iou_bev", "rotated_iou_3d", "rotated_overlap_bev", "rotated_overlap_3d"]
MATRIX_FUNCTIONS = ["rotated_iou_bev_matrix", "rotated_iou_3d_matrix"]


@pytest.mark.parametrize("name", PAIRED_FUNCTIONS + MATRIX_FUNCTIONS)
def test_last_dimension_other_than_7_is_rejected(name):
    fn = getattr(geometry, name)
    with pytest.raises(ValueError) as info:
        fn(torch.zeros(3, 6), torch.zeros(3, 7))
    assert "(3,6)" in _normalised(str(info.value)) or "[3,6]" in _normalised(str(info.value)), str(info.value)
    with pytest.raises(ValueError) as info:
        fn(torch.zeros(3, 7), torch.zeros(3, 8))
    assert "(3,8)" in _normalised(str(info.value)) or "[3,8]" in _normalised(str(info.value)), str(info.value)


@pytest.mark.parametrize("name", PAIRED_FUNCTIONS + MATRIX_FUNCTIONS)
def test_non_floating_dtype_is_rejected(name):
    fn = getattr(geometry, name)
    with pytest.raises((TypeError, ValueError)) as info:
        fn(torch.zeros(3, 7, dtype=torch.int64), torch.zeros(3, 7))
    assert "int64" in str(info.value), str(info.value)
    with pytest.raises((TypeError, ValueError)) as info:
        fn(torch.zeros(3, 7), torch.zeros(3, 7, dtype=torch.bool))
    assert "bool" in str(info.value), str(info.value)


@pytest.mark.parametrize("name", PAIRED_FUNCTIONS)
def test_unbroadcastable_shapes_are_rejected(name):
    fn = getattr(geometry, name)
    with pytest.raises(ValueError) as info:
        fn(torch.zeros(3, 7), torch.zeros(4, 7))
    message = _normalised(str(info.value))
    assert ("(3,7)" in message or "[3,7]" in message) and ("(4,7)" in message or "[4,7]" in message), str(info.value)


@pytest.mark.parametrize("name", MATRIX_FUNCTIONS)
def test_matrix_rejects_batched_inputs(name):
    fn = getattr(geometry, name)
    with pytest.raises(ValueError) as info:
        fn(torch.zeros(2, 3, 7), torch.zeros(4, 7))
    assert "(2,3,7)" in _normalised(str(info.value)) or "[2,3,7]" in _normalised(str(info.value)), str(info.value)

"""The portable op layer runs on any device: outputs stay on the inputs' device and no tensor lands on a fixed one.

Three checks, none needing pcdet:

- every op on every available device (``cuda`` runs only where CUDA exists, marker ``gpu``): outputs are on the
  input device and equal the CPU results;
- ops without data-dependent control flow also run on ``meta`` tensors (shape/dtype/device propagation);
- with the *default* device set to ``meta``, CPU inputs give exactly the CPU results: a tensor created without
  ``device=`` (``torch.zeros(n)``, ``torch.tensor(x)``) would land on ``meta`` and fail or change the result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcdet_gciou.openpcdet.cpu import box_ops, pointnet2_stack
from pcdet_gciou.openpcdet.cpu.kitti_rotate_iou import rotate_iou_gpu_eval

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _inputs() -> dict[str, torch.Tensor]:
    """Crowded boxes and points on CPU (float32, as OpenPCDet feeds them)."""
    gen = torch.Generator().manual_seed(7)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=gen)

    def boxes(n):
        centre = torch.stack([uniform(0, 8, n), uniform(0, 8, n), uniform(-1, 1, n)], dim=1)
        size = torch.stack([uniform(1.5, 4.5, n), uniform(0.6, 2.0, n), uniform(1.0, 2.0, n)], dim=1)
        return torch.cat([centre, size, uniform(-3.2, 3.2, n)[:, None]], dim=1)

    points = uniform(0, 8, 40, 3)
    points[:, 2] = uniform(-1, 1, 40)
    centres = uniform(0, 8, 9, 3)
    centres[:, 2] = uniform(-1, 1, 9)
    boxes_a = boxes(24)
    jittered = boxes_a + torch.cat([uniform(-0.5, 0.5, 24, 3), torch.zeros(24, 3), uniform(-0.3, 0.3, 24, 1)], dim=1)
    return {
        "boxes_a": boxes_a,
        "boxes_a_jittered": jittered,
        "boxes_b": boxes(17),
        "scores": uniform(0, 1, 24),
        "points": points,
        "points_cnt": torch.tensor([25, 15], dtype=torch.int32),
        "centres": centres,
        "centres_cnt": torch.tensor([5, 4], dtype=torch.int32),
        "features": uniform(-1, 1, 40, 6),
        "nn_idx": torch.randint(0, 40, (9, 3), generator=gen, dtype=torch.int32),
        "nn_weight": uniform(0, 1, 9, 3),
    }


def _ball_then_group(x):
    idx, empty = pointnet2_stack.ball_query(1.5, 5, x["points"], x["points_cnt"], x["centres"], x["centres_cnt"])
    grouped = pointnet2_stack.grouping_operation(x["features"], x["points_cnt"], idx, x["centres_cnt"])
    return idx, empty, grouped


OPS = {
    "boxes_iou_bev": lambda x: box_ops.boxes_iou_bev(x["boxes_a"], x["boxes_b"]),
    "boxes_bev_iou_cpu": lambda x: box_ops.boxes_bev_iou_cpu(x["boxes_a"], x["boxes_b"]),
    "boxes_iou3d_gpu": lambda x: box_ops.boxes_iou3d_gpu(x["boxes_a"], x["boxes_b"]),
    "paired_boxes_iou3d_gpu": lambda x: box_ops.paired_boxes_iou3d_gpu(x["boxes_a"], x["boxes_a_jittered"]),
    "boxes_aligned_iou3d_gpu": lambda x: box_ops.boxes_aligned_iou3d_gpu(x["boxes_a"], x["boxes_a_jittered"]),
    "nms_gpu": lambda x: box_ops.nms_gpu(x["boxes_a"], x["scores"], 0.2)[0],
    "nms_normal_gpu": lambda x: box_ops.nms_normal_gpu(x["boxes_a"], x["scores"], 0.2)[0],
    "points_in_boxes_cpu": lambda x: box_ops.points_in_boxes_cpu(x["points"], x["boxes_a"]),
    "points_in_boxes_gpu": lambda x: box_ops.points_in_boxes_gpu(
        x["points"].view(2, 20, 3), x["boxes_a"].view(2, 12, 7)
    ),
    "ball_query+grouping_operation": _ball_then_group,
    "farthest_point_sample": lambda x: pointnet2_stack.farthest_point_sample(x["points"].view(2, 20, 3), 6),
    "stack_farthest_point_sample": lambda x: pointnet2_stack.stack_farthest_point_sample(
        x["points"], x["points_cnt"], [6, 4]
    ),
    "three_nn": lambda x: pointnet2_stack.three_nn(x["centres"], x["centres_cnt"], x["points"], x["points_cnt"]),
    "three_interpolate": lambda x: pointnet2_stack.three_interpolate(x["features"], x["nn_idx"], x["nn_weight"]),
}
# Ops whose work does not depend on the values (no nonzero/sort/.tolist()), so meta tensors can flow through.
META_OPS = ("points_in_boxes_cpu", "points_in_boxes_gpu", "three_interpolate")


def _as_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def _assert_same(expected, actual) -> None:
    for want, got in zip(_as_tuple(expected), _as_tuple(actual), strict=True):
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        else:
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
def test_ops_run_on_the_input_device_and_agree_with_cpu(op, device):
    inputs = _inputs()
    expected = OPS[op](inputs)
    outputs = _as_tuple(OPS[op]({name: value.to(device) for name, value in inputs.items()}))
    assert all(out.device.type == device for out in outputs)
    for want, got in zip(_as_tuple(expected), outputs, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.is_floating_point():
            torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("op", META_OPS)
def test_value_independent_ops_propagate_meta_tensors(op):
    inputs = _inputs()
    expected = _as_tuple(OPS[op](inputs))
    outputs = _as_tuple(OPS[op]({name: value.to("meta") for name, value in inputs.items()}))
    for want, got in zip(expected, outputs, strict=True):
        assert got.device.type == "meta" and got.shape == want.shape and got.dtype == want.dtype


@pytest.mark.parametrize("op", list(OPS))
def test_no_tensor_is_created_on_the_default_device(op):
    inputs = _inputs()
    expected = OPS[op](inputs)
    with torch.device("meta"):
        actual = OPS[op](inputs)
    _assert_same(expected, actual)


def test_numpy_paths_and_kitti_overlaps_ignore_the_default_device():
    inputs = _inputs()
    boxes_a, boxes_b, points = inputs["boxes_a"].numpy(), inputs["boxes_b"].numpy(), inputs["points"].numpy()
    planar_a, planar_b = boxes_a[:, [0, 1, 3, 4, 6]], boxes_b[:, [0, 1, 3, 4, 6]]

    def run():
        return (
            box_ops.boxes_bev_iou_cpu(boxes_a, boxes_b),
            box_ops.points_in_boxes_cpu(points, boxes_a),
            *(rotate_iou_gpu_eval(planar_a, planar_b, criterion) for criterion in (-1, 0, 1, 2)),
        )

    expected = run()
    assert expected[0].max() > 0 and expected[1].sum() > 0  # the inputs do overlap
    with torch.device("meta"):
        actual = run()
    _assert_same(expected, actual)

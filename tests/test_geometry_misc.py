"""Chunking of large inputs (values and gradients must not change) and the opt-in value check."""

import torch

from pcdet_gciou.geometry import iou as iou_module
from pcdet_gciou.geometry import rotated_iou_3d, rotated_overlap_bev


def test_chunked_values_and_gradients_equal_unchunked(monkeypatch):
    g = torch.Generator().manual_seed(0)
    boxes1 = torch.cat(
        [
            torch.rand(300, 3, generator=g) * 2,
            torch.rand(300, 3, generator=g) * 3 + 0.1,
            torch.rand(300, 1, generator=g) * 6.3,
        ],
        dim=1,
    ).double()
    boxes2 = boxes1[:40] + torch.randn(40, 7, generator=g).double() * 0.3

    def run():
        pred = boxes1.clone().requires_grad_()
        iou = rotated_iou_3d(pred[:, None], boxes2[None])  # broadcast (300, 40): 12000 pairs
        iou.sum().backward()
        return iou.detach(), pred.grad, rotated_overlap_bev(boxes1[:, None], boxes2[None])

    whole_iou, whole_grad, whole_bev = run()
    monkeypatch.setattr(iou_module, "PAIRS_PER_CHUNK", 1000)  # 12 full chunks
    chunk_iou, chunk_grad, chunk_bev = run()
    assert chunk_iou.shape == (300, 40)
    torch.testing.assert_close(chunk_iou, whole_iou, rtol=0, atol=0)
    torch.testing.assert_close(chunk_grad, whole_grad, rtol=0, atol=1e-12)  # summation order differs
    for chunked, whole in zip(chunk_bev, whole_bev):
        torch.testing.assert_close(chunked, whole, rtol=0, atol=0)
    assert (whole_iou > 0).float().mean() > 0.1  # the pairs really overlap


def test_check_boxes_finite_names_the_bad_box():
    import math

    import pytest

    from pcdet_gciou.geometry import check_boxes_finite

    good = torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0.3], [1.0, 2, 0, 0, 0, 0, 0]])
    check_boxes_finite("pred", good)  # zero size is allowed: it is a box, just an empty one
    with pytest.raises(ValueError, match=r"pred\[1\] = \[1.0, 2.0, 0.0, -1.0.*non-negative extents"):
        check_boxes_finite("pred", torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0.3], [1.0, 2, 0, -1, 2, 1, 0]]))
    with pytest.raises(ValueError, match=r"target\[0, 1\] = \[nan"):
        check_boxes_finite("target", torch.tensor([[[0.0, 0, 0, 1, 1, 1, 0], [math.nan, 0, 0, 1, 1, 1, 0]]]))

"""Eq. 18 behind OpenPCDet's log-size encoding: the facts the shipped rescaling decision rests on.

With ``t = log(s / a)``, ``dL/dt = s dL/ds``: the 1/s law of Eq. 10/11 becomes scale-neutral, which is the law
``delta s ~ s`` that Eq. 18 builds on ``s``. Eq. 18 applied on top makes ``dL/dt`` grow as ``s^2``.
"""

import torch

from pcdet_gciou.losses import gciou_loss
from pcdet_gciou.simulate.parametrisation import decode_residual, encode_residual

SCALES = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


def _log_size_gradient(scales=SCALES, **options):
    """``|dL/dt|`` of -ln IoU (f = 1, g = 0) w.r.t. the log-size codes, for a car shape scaled by each s."""
    car = torch.tensor([3.9, 1.6, 1.56], dtype=torch.float64)
    anchors = torch.zeros(scales.shape[0], 7, dtype=torch.float64)
    anchors[:, 3:6] = scales.unsqueeze(-1) * car
    pred = anchors.clone()
    pred[:, 3:6] = pred[:, 3:6] * torch.tensor([1.1, 0.9, 1.05], dtype=torch.float64)
    pred[:, 6] = 1.0
    codes = encode_residual(pred, anchors).requires_grad_(True)
    loss = gciou_loss(decode_residual(codes, anchors), anchors, alpha=None, g=None, **options)
    (grad,) = torch.autograd.grad(loss.sum(), codes)
    return grad[:, 3:6].norm(dim=-1)


def test_log_size_gradient_is_scale_neutral_without_rescaling():
    grad = _log_size_gradient()
    torch.testing.assert_close(grad, grad[2].expand_as(grad), rtol=1e-9, atol=0)


def test_eq18_as_written_makes_the_log_size_gradient_grow_as_s_squared():
    ratio = _log_size_gradient(grad_rescale=True) / _log_size_gradient()
    torch.testing.assert_close(ratio / SCALES**2, (ratio / SCALES**2)[2].expand_as(ratio), rtol=1e-9, atol=0)
    assert ratio[-1] > 100 * ratio[0]


def test_batch_normalised_rescaling_is_the_identity_for_one_positive():
    single = torch.cat([_log_size_gradient(s.view(1), grad_rescale=True, rescale_normalize=True) for s in SCALES])
    torch.testing.assert_close(single, _log_size_gradient(), rtol=1e-9, atol=0)

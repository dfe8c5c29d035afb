"""Swin blocks (pcdet_gciou.nn.swin) against a naive reference written per window, with loops.

The reference never rolls the map, never calls the partition helpers and never builds the additive mask: it
walks the windows of the shifted grid, maps each window slot back to its position in the padded map, decides by
hand which pairs may attend (same contiguous piece of the map, read off the original coordinates), and takes the
softmax over the allowed keys only.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from pcdet_gciou.nn.swin import DropPath, SwinBlock, SwinStage, WindowAttention, shifted_window_mask


def _piece(coord: int, padded: int, window: int, shift: int) -> int:
    """Which contiguous piece of the padded axis a coordinate of the *unrolled* map belongs to.

    Rolling by -shift brings rows [0, shift) to the end of the map, so they must not meet rows from the other
    side; likewise the last (window - shift) rows end up in a window with the wrapped-around ones.
    """
    if shift == 0:
        return 0
    if coord < shift:
        return 2
    if coord >= padded - window + shift:
        return 1
    return 0


def naive_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward of ``block`` on ``(B, H, W, C)``, window by window."""
    batch, height, width, channels = x.shape
    w, s = block.window_size, block.shift
    heads = block.attn.num_heads
    head_dim = channels // heads
    padded_h, padded_w = math.ceil(height / w) * w, math.ceil(width / w) * w
    normed = torch.zeros(batch, padded_h, padded_w, channels, dtype=x.dtype)
    normed[:, :height, :width] = F.layer_norm(x, (channels,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    weight, bias = block.attn.qkv.weight, block.attn.qkv.bias
    table = block.attn.relative_position_bias_table
    attended = torch.zeros_like(normed)
    for b in range(batch):
        for top in range(0, padded_h, w):
            for left in range(0, padded_w, w):
                slots = [(a, c) for a in range(w) for c in range(w)]
                coords = [((top + a + s) % padded_h, (left + c + s) % padded_w) for a, c in slots]
                tokens = torch.stack([normed[b, r, col] for r, col in coords])  # (N, C)
                pieces = [(_piece(r, padded_h, w, s), _piece(col, padded_w, w, s)) for r, col in coords]
                out = torch.zeros_like(tokens)
                for h in range(heads):
                    rows = slice(h * head_dim, (h + 1) * head_dim)
                    q = tokens @ weight[rows].T + bias[rows]
                    k = tokens @ weight[channels:][rows].T + bias[channels:][rows]
                    v = tokens @ weight[2 * channels :][rows].T + bias[2 * channels :][rows]
                    for i, (ai, ci) in enumerate(slots):
                        allowed = [j for j in range(len(slots)) if pieces[j] == pieces[i]]
                        logits = torch.stack(
                            [
                                q[i] @ k[j] / math.sqrt(head_dim)
                                + table[(ai - slots[j][0] + w - 1) * (2 * w - 1) + (ci - slots[j][1] + w - 1), h]
                                for j in allowed
                            ]
                        )
                        out[i, rows] = logits.softmax(0) @ v[allowed]
                out = block.attn.proj(out)
                for (r, col), value in zip(coords, out):
                    attended[b, r, col] = value
    x = x + attended[:, :height, :width]
    return x + block.mlp(block.norm2(x))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial LayerNorm affines and biases, so the reference cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.5))


@pytest.mark.parametrize(
    "height, width, window, shift",
    [(7, 14, 7, 0), (10, 9, 7, 0), (10, 9, 7, 3), (5, 7, 3, 1), (6, 6, 3, 1), (4, 5, 7, 3)],
    ids=["exact", "padded", "shifted-padded", "small-window", "shifted-exact", "map-smaller-than-window"],
)
def test_block_matches_naive_window_reference(height, width, window, shift):
    torch.manual_seed(0)
    block = SwinBlock(dim=8, num_heads=2, window_size=window, shift=shift, drop_path=0.3).double().eval()
    _randomise(block, 1)
    x = torch.randn(2, height, width, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), naive_block(block, x), rtol=1e-10, atol=1e-10)


def test_stage_is_blocks_then_norm_with_alternating_shifts():
    torch.manual_seed(0)
    stage = SwinStage(dim=8, depth=4, num_heads=2, window_size=3, drop_path_rate=0.2).double().eval()
    _randomise(stage, 2)
    assert [block.shift for block in stage.blocks] == [0, 1, 0, 1]
    assert [block.drop_path.p for block in stage.blocks] == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])
    x = torch.randn(1, 8, 5, 7, dtype=torch.float64)
    y = x.permute(0, 2, 3, 1)
    with torch.no_grad():
        for block in stage.blocks:
            y = naive_block(block, y)
        expected = stage.norm(y).permute(0, 3, 1, 2)
        torch.testing.assert_close(stage(x), expected, rtol=1e-10, atol=1e-10)


def test_shifted_mask_separates_wrapped_regions_only():
    mask = shifted_window_mask(6, 6, 3, 1)
    assert mask.shape == (4, 9, 9)
    assert (mask[0] == 0).all()  # the top-left window holds no wrapped token
    # bottom-right window of the rolled map: slots (row, col) in {0,1} x {0,1} are one piece, the wrapped
    # last row / last column others
    piece = torch.tensor([[0, 0, 1], [0, 0, 1], [2, 2, 3]]).flatten()
    expected = torch.where(piece[:, None] == piece[None, :], 0.0, -100.0)
    torch.testing.assert_close(mask[3], expected)
    with pytest.raises(ValueError, match="multiple of window_size"):
        shifted_window_mask(7, 6, 3, 1)
    with pytest.raises(ValueError, match="shift"):
        shifted_window_mask(6, 6, 3, 3)


def test_relative_bias_depends_on_offset_only():
    attn = WindowAttention(dim=4, num_heads=2, window_size=3)
    bias = attn.position_bias()  # (heads, 9, 9)
    assert attn.relative_position_bias_table.shape == (25, 2)
    # token (0,0)->(1,1) and (1,1)->(2,2) share the offset (-1,-1); (0,0)->(0,0) and (2,1)->(2,1) the offset (0,0)
    torch.testing.assert_close(bias[:, 0, 4], bias[:, 4, 8])
    torch.testing.assert_close(bias[:, 0, 0], bias[:, 7, 7])
    assert not torch.equal(bias[:, 0, 4], bias[:, 4, 0])


def test_drop_path_is_identity_in_eval_and_per_sample_in_training():
    layer = DropPath(0.5)
    x = torch.randn(64, 3, 4)
    assert layer.eval()(x) is x
    torch.manual_seed(0)
    out = layer.train()(x)
    dropped = (out == 0).flatten(1).all(1)
    kept = torch.isclose(out, 2 * x).flatten(1).all(1)
    assert bool((dropped | kept).all()) and 10 < int(dropped.sum()) < 54
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(1.0)


def test_stage_eval_is_deterministic_and_training_uses_stochastic_depth():
    torch.manual_seed(0)
    stage = SwinStage(dim=8, depth=2, num_heads=2, window_size=3, drop_path_rate=0.9)
    x = torch.randn(8, 8, 4, 4)
    with torch.no_grad():
        stage.eval()
        assert torch.equal(stage(x), stage(x))
        stage.train()
        torch.manual_seed(1)
        first = stage(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, stage(x))


def test_gradients_reach_every_parameter_and_are_finite():
    torch.manual_seed(0)
    stage = SwinStage(dim=8, depth=2, num_heads=2, window_size=3)
    stage(torch.randn(1, 8, 5, 4)).square().sum().backward()
    for name, p in stage.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_options_raise_naming_the_value():
    with pytest.raises(ValueError, match="not divisible"):
        WindowAttention(dim=6, num_heads=4, window_size=3)
    with pytest.raises(ValueError, match="window_size must be a positive int, got 0"):
        WindowAttention(dim=4, num_heads=2, window_size=0)
    with pytest.raises(ValueError, match="shift"):
        SwinBlock(dim=4, num_heads=2, window_size=3, shift=3)

r"""Swin Transformer blocks (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021) for a dense feature map, in pure PyTorch.

One block, pre-norm, on a ``(B, H, W, C)`` map:

.. math::
    x \leftarrow x + \mathrm{DropPath}(\mathrm{W\text{-}MSA}(\mathrm{LN}(x))), \qquad
    x \leftarrow x + \mathrm{DropPath}(\mathrm{MLP}(\mathrm{LN}(x)))

W-MSA is multi-head self-attention inside non-overlapping ``w x w`` windows,
``softmax(q k^T / sqrt(d) + B + M) v`` with a learned relative-position bias ``B`` (a ``(2w-1)^2 x heads`` table
indexed by the offset of two tokens) and, for shifted blocks, the mask ``M``. A shifted block rolls the map by
``-shift`` before partitioning, so windows straddle the previous block's window borders; tokens that the roll
brought together from opposite edges must not attend to each other, which ``M`` (``-100`` between tokens of
different regions, else 0) enforces. Maps whose sides are not multiples of ``w`` are zero-padded at the bottom
and right after the first LayerNorm and cropped afterwards (padded tokens take part in the attention, as in the
reference implementation of Swin).

Example:
    >>> stage = SwinStage(dim=32, depth=2, num_heads=4, window_size=7, drop_path_rate=0.1).eval()
    >>> stage(torch.randn(1, 32, 10, 9)).shape
    torch.Size([1, 32, 10, 9])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DropPath",
    "SwinBlock",
    "SwinStage",
    "WindowAttention",
    "shifted_window_mask",
    "window_merge",
    "window_partition",
]

MASK_VALUE = -100.0  # the reference implementation's additive mask: exp(-100) vanishes, no -inf/NaN risk


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``window_size`` -> ``(B * nW, window_size**2, C)``.

    Windows are ordered row-major over the map, batch-major over the samples.
    """
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window_size**2, C)`` -> ``(B, H, W, C)``."""
    rows, cols = height // window_size, width // window_size
    channels = windows.shape[-1]
    x = windows.view(-1, rows, cols, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window_size: int) -> torch.Tensor:
    """``(N, N)`` index into the ``(2w-1)^2`` bias table for every token pair of a window (``N = w^2``)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(
        1
    )  # (2, N): row, col of each token
    offset = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N), each in [0, 2w-2]
    return offset[0] * (2 * window_size - 1) + offset[1]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int, device=None) -> torch.Tensor:
    """Additive attention mask ``(nW, N, N)`` of a padded ``height x width`` map rolled by ``-shift``.

    After the roll, each axis splits into three regions, ``[0, H - w)``, ``[H - w, H - shift)`` and
    ``[H - shift, H)``; two tokens may attend to each other only when they lie in the same region on both axes.
    """
    _positive_int("window_size", window_size)
    if not 0 < shift < window_size:
        raise ValueError(f"shift must be in (0, window_size={window_size}), got {shift!r}")
    if height % window_size or width % window_size:
        raise ValueError(f"padded map {height}x{width} is not a multiple of window_size {window_size}")

    def regions(size: int) -> torch.Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window_size).long() + (index >= size - shift).long()

    label = regions(height)[:, None] * 3 + regions(width)[None, :]  # (H, W) region id
    windows = window_partition(label[None, :, :, None], window_size)[..., 0]  # (nW, N)
    different = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016): zero a residual branch per sample with probability ``p``
    during training and scale the survivors by ``1 / (1 - p)``; the identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    Args:
        dim: token width ``C`` (divisible by ``num_heads``).
        num_heads: attention heads.
        window_size: window side ``w``; windows hold ``N = w^2`` tokens.
        qkv_bias: learn biases for the query/key/value projection.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        _positive_int("dim", dim)
        _positive_int("num_heads", num_heads)
        _positive_int("window_size", window_size)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.window_size = num_heads, window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` bias of every token pair."""
        n = self.window_size**2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B * nW, N, C)`` windows (and an optional ``(nW, N, N)`` additive mask) -> ``(B * nW, N, C)``."""
        count, n, channels = windows.shape
        q, k, v = self.qkv(windows).view(count, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias()  # (B * nW, heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.view(-1, num_windows, self.num_heads, n, n) + mask[None, :, None]
            logits = logits.view(count, self.num_heads, n, n)
        out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(count, n, channels))


class SwinBlock(nn.Module):
    """One pre-norm Swin block on a ``(B, H, W, C)`` map (see the module docstring).

    Args:
        dim, num_heads, window_size: as :class:`WindowAttention`.
        shift: cyclic shift of the windows, 0 (regular) or in ``(0, window_size)`` (shifted).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int = 7, shift: int = 0, mlp_ratio: float = 4.0, drop_path=0.0
    ) -> None:
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size={window_size}), got {shift!r}")
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, C)`` -> same; ``mask`` is :func:`shifted_window_mask` of the padded map (shifted blocks)."""
        _, height, width, channels = x.shape
        w = self.window_size
        y = F.pad(self.norm1(x), (0, 0, 0, (-width) % w, 0, (-height) % w))
        padded_h, padded_w = y.shape[1:3]
        if self.shift:
            if mask is None:
                mask = shifted_window_mask(padded_h, padded_w, w, self.shift, device=x.device)
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, w), mask.to(y.dtype) if self.shift else None)
        y = window_merge(y, w, padded_h, padded_w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating regular and shifted windows, then a LayerNorm, on a ``(B, C, H, W)`` map.

    No patch embedding and no patch merging: the stage keeps the resolution and width. The stochastic-depth
    probability rises linearly from 0 (first block) to ``drop_path_rate`` (last block).

    Args:
        dim: channels ``C``.
        depth: number of blocks; odd-numbered blocks (1, 3, ...) are shifted by ``window_size // 2``.
        num_heads, window_size, mlp_ratio: as :class:`SwinBlock`.
        drop_path_rate: stochastic-depth probability of the last block.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _positive_int("depth", depth)
        rates = torch.linspace(0.0, float(drop_path_rate), depth).tolist()
        self.window_size, self.shift = window_size, window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=self.shift if i % 2 else 0, mlp_ratio=mlp_ratio, drop_path=p)
            for i, p in enumerate(rates)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        w = self.window_size
        height, width = x.shape[2:]
        mask = None
        if self.shift and len(self.blocks) > 1:  # one mask for every shifted block of this map size
            mask = shifted_window_mask(height + (-height) % w, width + (-width) % w, w, self.shift, device=x.device)
        y = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            y = block(y, mask if block.shift else None)
        return self.norm(y).permute(0, 3, 1, 2).contiguous()

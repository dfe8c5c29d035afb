"""Network building blocks in pure PyTorch (no pcdet, timm or torchvision), used by the OpenPCDet layer."""

from .swin import DropPath, SwinBlock, SwinStage, WindowAttention, shifted_window_mask, window_merge, window_partition

__all__ = [
    "DropPath",
    "SwinBlock",
    "SwinStage",
    "WindowAttention",
    "shifted_window_mask",
    "window_merge",
    "window_partition",
]

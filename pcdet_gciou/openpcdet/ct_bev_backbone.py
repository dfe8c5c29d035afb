"""CT-Stack's BEV backbone (``CTBEVBackbone``): convolutions, one Swin stage, one transposed convolution.

The 2D backbone of the detector on which the GCIoU paper (Ming et al., CVPR 2023) runs its ablations, after
RDIoU (Sheng et al., ECCV 2022). It takes HeightCompression's BEV map ``(B, 256, H, W)`` and returns
``(B, 256, H, W)`` in ``data_dict['spatial_features_2d']``, in this order:

1. stride-1 stage: ZeroPad(1) + 3x3 conv ``input_channels -> 128`` (no bias), BN, ReLU, then ``CONV_LAYERS``
   (4) x [3x3 conv 128 -> 128, BN, ReLU];
2. ZeroPad(1) + 3x3 conv ``128 -> 256``, stride 2, BN, ReLU;
3. a Swin stage (:class:`pcdet_gciou.nn.SwinStage`) at ``H/2 x W/2``: 4 blocks alternating regular and shifted
   7x7 windows, 4 heads, width 256, MLP ratio 4, stochastic depth 0 -> 0.2, final LayerNorm;
4. 2x2 transposed conv ``256 -> 256``, stride 2 (no bias), BN, ReLU.

All BatchNorms use eps 1e-3 and momentum 0.01. With the defaults below the module has 4,606,352 parameters
(the Swin stage 3,162,256), the count of the official module without its unused stride-1 deblock.

Config keys of ``MODEL.BACKBONE_2D`` (all optional; the defaults are the paper's model)::

    NAME: CTBEVBackbone
    CONV_FILTERS: 128          # width of the stride-1 stage
    CONV_LAYERS: 4             # 3x3 convs after the first one in the stride-1 stage
    SWIN_DIM: 256              # output of the stride-2 conv = width of the Swin stage
    SWIN_DEPTH: 4
    SWIN_HEADS: 4
    WINDOW_SIZE: 7
    MLP_RATIO: 4.0
    DROP_PATH_RATE: 0.2
    NUM_UPSAMPLE_FILTERS: 256  # output channels (num_bev_features)

Pure PyTorch: nothing here imports pcdet; :func:`pcdet_gciou.openpcdet.register` adds the class to
``pcdet.models.backbones_2d.__all__``.

Example:
    >>> backbone = CTBEVBackbone({"NAME": "CTBEVBackbone"}, input_channels=256)
    >>> sum(p.numel() for p in backbone.parameters())
    4606352
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..nn.swin import SwinStage

__all__ = ["CTBEVBackbone", "DEFAULTS"]

DEFAULTS = {
    "CONV_FILTERS": 128,
    "CONV_LAYERS": 4,
    "SWIN_DIM": 256,
    "SWIN_DEPTH": 4,
    "SWIN_HEADS": 4,
    "WINDOW_SIZE": 7,
    "MLP_RATIO": 4.0,
    "DROP_PATH_RATE": 0.2,
    "NUM_UPSAMPLE_FILTERS": 256,
}
_INT_KEYS = ("CONV_FILTERS", "SWIN_DIM", "SWIN_DEPTH", "SWIN_HEADS", "WINDOW_SIZE", "NUM_UPSAMPLE_FILTERS")


def _options(model_cfg: Mapping) -> dict[str, Any]:
    """``model_cfg`` merged onto :data:`DEFAULTS`, checked; unknown keys raise naming the allowed ones."""
    if not isinstance(model_cfg, Mapping):
        raise TypeError(f"BACKBONE_2D config must be a mapping, got {type(model_cfg).__name__}")
    unknown = sorted(set(model_cfg) - set(DEFAULTS) - {"NAME"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in BACKBONE_2D for CTBEVBackbone; allowed: {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **{k: v for k, v in model_cfg.items() if k != "NAME"}}
    for key in _INT_KEYS:
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"BACKBONE_2D.{key} must be a positive int, got {value!r}")
    if isinstance(options["CONV_LAYERS"], bool) or not isinstance(options["CONV_LAYERS"], int):
        raise ValueError(f"BACKBONE_2D.CONV_LAYERS must be an int >= 0, got {options['CONV_LAYERS']!r}")
    if options["CONV_LAYERS"] < 0:
        raise ValueError(f"BACKBONE_2D.CONV_LAYERS must be an int >= 0, got {options['CONV_LAYERS']!r}")
    if not isinstance(options["MLP_RATIO"], (int, float)) or not options["MLP_RATIO"] > 0:
        raise ValueError(f"BACKBONE_2D.MLP_RATIO must be a positive number, got {options['MLP_RATIO']!r}")
    return options


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01), nn.ReLU()]


class CTBEVBackbone(nn.Module):
    """CT-Stack BEV backbone; OpenPCDet's 2D-backbone interface (see the module docstring).

    Args:
        model_cfg: the ``MODEL.BACKBONE_2D`` mapping.
        input_channels: channels of ``data_dict['spatial_features']`` (HeightCompression's 256).

    Attributes:
        num_bev_features: channels of ``spatial_features_2d`` (``NUM_UPSAMPLE_FILTERS``).
    """

    def __init__(self, model_cfg: Mapping, input_channels: int) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        opts = _options(model_cfg)
        conv, dim = opts["CONV_FILTERS"], opts["SWIN_DIM"]
        layers = [nn.ZeroPad2d(1), nn.Conv2d(input_channels, conv, 3, bias=False), *_bn_relu(conv)]
        for _ in range(opts["CONV_LAYERS"]):
            layers += [nn.Conv2d(conv, conv, 3, padding=1, bias=False), *_bn_relu(conv)]
        self.conv_stage = nn.Sequential(*layers)
        self.downsample = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(conv, dim, 3, stride=2, bias=False), *_bn_relu(dim))
        self.transformer = SwinStage(
            dim,
            depth=opts["SWIN_DEPTH"],
            num_heads=opts["SWIN_HEADS"],
            window_size=opts["WINDOW_SIZE"],
            mlp_ratio=float(opts["MLP_RATIO"]),
            drop_path_rate=opts["DROP_PATH_RATE"],
        )
        out = opts["NUM_UPSAMPLE_FILTERS"]
        self.deblock = nn.Sequential(nn.ConvTranspose2d(dim, out, 2, stride=2, bias=False), *_bn_relu(out))
        self.num_bev_features = out

    def forward(self, data_dict: dict) -> dict:
        """``data_dict['spatial_features']`` ``(B, C, H, W)`` -> ``data_dict['spatial_features_2d']``
        ``(B, NUM_UPSAMPLE_FILTERS, 2 * ceil(H / 2), 2 * ceil(W / 2))`` (``H x W`` for even sides)."""
        x = self.downsample(self.conv_stage(data_dict["spatial_features"]))
        data_dict["spatial_features_2d"] = self.deblock(self.transformer(x))
        return data_dict

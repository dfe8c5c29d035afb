"""The ``LOSS_CONFIG`` blocks of our OpenPCDet heads, parsed once into dataclasses (no pcdet import).

Each option is a dataclass field: its default is the field's default, its config key is in the field's
metadata. Parsing walks the block once: an unknown key raises ValueError naming it and listing the allowed
ones, a bad value raises ValueError/TypeError naming the key. Keys that only the host head reads (``code_weights``,
``REG_LOSS_TYPE``, the RoI head's stock keys) are accepted and left to the host. Nothing downstream reads the
raw config again.

Anchor heads (``AnchorHeadSingleGCIoU``, ``AnchorHeadMultiGCIoU``): :class:`DenseLossOptions`::

    REG_LOSS: {NAME: gciou, alpha: 2.0, g: exp}   # any loss of pcdet_gciou.losses.LOSSES + its options
    SPACE: decoded             # decoded (paper: IoU of the real boxes) | residual (official code)
    KEEP_SMOOTH_L1: False      # also keep OpenPCDet's Smooth-L1 on the residuals
    IOU_QUALITY_FOCAL: False   # quality focal classification loss, detached IoU as soft target
    ENLARGE_POSITIVES: False   # copy positives to the +-1 cells across the anchor heading
    LOSS_WEIGHTS: {cls_weight, loc_weight, dir_weight, code_weights, [smooth_l1_weight]}

Centre heads (``CenterHeadGCIoU``, ``VoxelNeXtHeadGCIoU``): :class:`CenterLossOptions`::

    REG_LOSS: {NAME: gciou, ...}
    KEEP_L1: False             # keep the host's L1 on the terms the IoU loss covers (centre, z, size, heading)
    LOSS_WEIGHTS: {cls_weight, loc_weight, code_weights, [iou_weight]}

Query head (``TransFusionHeadGCIoU``): the same :class:`CenterLossOptions` on the host's own keys::

    LOSS_WEIGHTS: {cls_weight, bbox_weight, hm_weight, code_weights, [iou_weight]}
    LOSS_CLS: {use_sigmoid, gamma, alpha}

RoI head (``PVRCNNHeadGCIoU``), the stock keys plus :class:`RoIIoULossOptions`::

    IOU_REG_LOSS: {ENABLED: False, MODE: add | replace, LOSS: {NAME: gciou}}
    LOSS_WEIGHTS: {..., rcnn_iou_reg_weight: 1.0}

Example:
    >>> opts = parse_center_loss_config({"REG_LOSS": {"NAME": "gciou", "g": "exp"},
    ...                                  "LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 0.25, "code_weights": []}})
    >>> opts.reg_loss, opts.keep_l1, opts.iou_weight
    (LossSpec(name='gciou', kwargs={'g': 'exp'}), False, 1.0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from pcdet_gciou.losses import LOSSES, build_loss

__all__ = [
    "LossSpec",
    "DenseLossOptions",
    "CenterLossOptions",
    "RoIIoULossOptions",
    "parse_dense_loss_config",
    "parse_center_loss_config",
    "parse_transfusion_loss_config",
    "parse_roi_loss_config",
]


@dataclass(frozen=True)
class LossSpec:
    """A loss of :data:`pcdet_gciou.losses.LOSSES` and its options, as ``{NAME: name, **kwargs}`` in a config."""

    name: str = "gciou"
    kwargs: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_loss(self.name, **self.kwargs)


def _option(key: tuple[str, ...], kind: str, *, choices: tuple = (), required: bool = False) -> dict:
    """Field metadata: config key path, value kind (bool | number | choice | loss), and whether it must be set."""
    return {"key": key, "kind": kind, "choices": choices, "required": required}


@dataclass(frozen=True)
class DenseLossOptions:
    """``DENSE_HEAD.LOSS_CONFIG`` of the GCIoU anchor heads (keys in the module docstring)."""

    reg_loss: LossSpec = field(default_factory=LossSpec, metadata=_option(("REG_LOSS",), "loss"))
    space: str = field(default="decoded", metadata=_option(("SPACE",), "choice", choices=("decoded", "residual")))
    keep_smooth_l1: bool = field(default=False, metadata=_option(("KEEP_SMOOTH_L1",), "bool"))
    iou_quality_focal: bool = field(default=False, metadata=_option(("IOU_QUALITY_FOCAL",), "bool"))
    enlarge_positives: bool = field(default=False, metadata=_option(("ENLARGE_POSITIVES",), "bool"))
    cls_weight: float = field(default=1.0, metadata=_option(("LOSS_WEIGHTS", "cls_weight"), "number", required=True))
    loc_weight: float = field(default=2.0, metadata=_option(("LOSS_WEIGHTS", "loc_weight"), "number", required=True))
    dir_weight: float = field(default=0.2, metadata=_option(("LOSS_WEIGHTS", "dir_weight"), "number", required=True))
    #: weight of the kept Smooth-L1 (``KEEP_SMOOTH_L1``); None means ``loc_weight``
    smooth_l1_weight: float | None = field(
        default=None, metadata=_option(("LOSS_WEIGHTS", "smooth_l1_weight"), "number")
    )

    @property
    def smooth_l1_scale(self) -> float:
        return self.loc_weight if self.smooth_l1_weight is None else self.smooth_l1_weight


@dataclass(frozen=True)
class CenterLossOptions:
    """``DENSE_HEAD.LOSS_CONFIG`` of the GCIoU centre heads (keys in the module docstring)."""

    reg_loss: LossSpec = field(default_factory=LossSpec, metadata=_option(("REG_LOSS",), "loss"))
    keep_l1: bool = field(default=False, metadata=_option(("KEEP_L1",), "bool"))
    iou_weight: float = field(default=1.0, metadata=_option(("LOSS_WEIGHTS", "iou_weight"), "number"))


@dataclass(frozen=True)
class RoIIoULossOptions:
    """``ROI_HEAD.LOSS_CONFIG.IOU_REG_LOSS`` and its weight."""

    enabled: bool = field(default=False, metadata=_option(("IOU_REG_LOSS", "ENABLED"), "bool"))
    mode: str = field(default="add", metadata=_option(("IOU_REG_LOSS", "MODE"), "choice", choices=("add", "replace")))
    loss: LossSpec = field(default_factory=LossSpec, metadata=_option(("IOU_REG_LOSS", "LOSS"), "loss"))
    weight: float = field(default=1.0, metadata=_option(("LOSS_WEIGHTS", "rcnn_iou_reg_weight"), "number"))


#: keys the host heads read themselves; accepted, not parsed here
_ANCHOR_HOST_KEYS = (
    ("REG_LOSS_TYPE",),
    ("LOSS_WEIGHTS", "code_weights"),
    ("LOSS_WEIGHTS", "pos_cls_weight"),  # AnchorHeadMulti's classification weights
    ("LOSS_WEIGHTS", "neg_cls_weight"),
)
_CENTER_HOST_KEYS = (("LOSS_WEIGHTS", "cls_weight"), ("LOSS_WEIGHTS", "loc_weight"), ("LOSS_WEIGHTS", "code_weights"))
_TRANSFUSION_HOST_KEYS = (
    ("LOSS_WEIGHTS", "cls_weight"),
    ("LOSS_WEIGHTS", "bbox_weight"),
    ("LOSS_WEIGHTS", "hm_weight"),
    ("LOSS_WEIGHTS", "code_weights"),
    ("LOSS_CLS", "use_sigmoid"),
    ("LOSS_CLS", "gamma"),
    ("LOSS_CLS", "alpha"),
)
_ROI_HOST_KEYS = (
    ("CLS_LOSS",),
    ("REG_LOSS",),
    ("CORNER_LOSS_REGULARIZATION",),
    ("LOSS_WEIGHTS", "rcnn_cls_weight"),
    ("LOSS_WEIGHTS", "rcnn_reg_weight"),
    ("LOSS_WEIGHTS", "rcnn_corner_weight"),
    ("LOSS_WEIGHTS", "code_weights"),
)


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _check_tree(where: str, mapping: Any, paths: list[tuple[str, ...]], prefix: tuple[str, ...] = ()) -> None:
    """Every key of ``mapping`` must be a known leaf path or a section leading to one."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{_name((where, *prefix))} must be a mapping, got {type(mapping).__name__}: {mapping!r}")
    depth = len(prefix)
    here = [p for p in paths if p[:depth] == prefix and len(p) > depth]
    allowed = sorted({p[depth] for p in here})
    for key, value in mapping.items():
        below = [p for p in here if p[depth] == key]
        if not below:
            raise ValueError(f"unknown key {key!r} in {_name((where, *prefix))}; allowed keys: {allowed}")
        if all(len(p) > depth + 1 for p in below):
            _check_tree(where, value, paths, (*prefix, key))


def _lookup(mapping: Mapping, path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = mapping
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _loss_spec(where: str, spec: Any) -> LossSpec:
    """``{NAME: ..., **kwargs}`` -> LossSpec; the options are checked by building the loss once."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where} must be a mapping like {{NAME: gciou}}, got {spec!r}")
    if "NAME" not in spec:
        raise ValueError(f"{where} needs a NAME, one of {list(LOSSES)}; got keys {list(spec)}")
    if spec["NAME"] not in LOSSES:
        raise ValueError(f"{where}.NAME must be one of {list(LOSSES)}, got {spec['NAME']!r}")
    loss = LossSpec(name=spec["NAME"], kwargs={key: value for key, value in spec.items() if key != "NAME"})
    try:
        loss.build()
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return loss


def _convert(where: str, meta: Mapping, value: Any) -> Any:
    kind = meta["kind"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be True or False, got {value!r}")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind == "choice":
        if value not in meta["choices"]:
            raise ValueError(f"{where} must be one of {list(meta['choices'])}, got {value!r}")
        return value
    return _loss_spec(where, value)


def _parse(cls, where: str, loss_cfg: Mapping, host_keys: tuple[tuple[str, ...], ...]):
    """One pass over ``loss_cfg``: unknown keys, required keys, then each field's value (or its default)."""
    fields = dataclasses.fields(cls)
    _check_tree(where, loss_cfg, [f.metadata["key"] for f in fields] + list(host_keys))
    values = {}
    for option in fields:
        path = option.metadata["key"]
        found, value = _lookup(loss_cfg, path)
        if found:
            values[option.name] = _convert(_name((where, *path)), option.metadata, value)
        elif option.metadata["required"]:
            raise ValueError(f"{_name((where, *path))} is required")
    return cls(**values)


def parse_dense_loss_config(loss_cfg: Mapping) -> DenseLossOptions:
    """Validate an anchor head's ``DENSE_HEAD.LOSS_CONFIG`` and return its options.

    Raises:
        ValueError: unknown key (named, with the allowed list), bad choice or loss option, missing weight.
        TypeError: a flag that is not a bool or a weight that is not a number.
    """
    return _parse(DenseLossOptions, "DENSE_HEAD.LOSS_CONFIG", loss_cfg, _ANCHOR_HOST_KEYS)


def parse_center_loss_config(loss_cfg: Mapping) -> CenterLossOptions:
    """Validate a centre head's ``DENSE_HEAD.LOSS_CONFIG``; the host's own weights are required as by the host.

    Raises:
        ValueError / TypeError: as :func:`parse_dense_loss_config`.
    """
    options = _parse(CenterLossOptions, "DENSE_HEAD.LOSS_CONFIG", loss_cfg, _CENTER_HOST_KEYS)
    for path in _CENTER_HOST_KEYS:
        if not _lookup(loss_cfg, path)[0]:
            raise ValueError(f"DENSE_HEAD.LOSS_CONFIG.{_name(path)} is required (the host head reads it)")
    return options


def parse_transfusion_loss_config(loss_cfg: Mapping) -> CenterLossOptions:
    """Validate ``TransFusionHeadGCIoU``'s ``DENSE_HEAD.LOSS_CONFIG``: the centre heads' keys on the host's own.

    Raises:
        ValueError / TypeError: as :func:`parse_dense_loss_config`; a host key the host reads is missing.
    """
    options = _parse(CenterLossOptions, "DENSE_HEAD.LOSS_CONFIG", loss_cfg, _TRANSFUSION_HOST_KEYS)
    for path in _TRANSFUSION_HOST_KEYS:
        if path[0] == "LOSS_WEIGHTS" and not _lookup(loss_cfg, path)[0]:
            raise ValueError(f"DENSE_HEAD.LOSS_CONFIG.{_name(path)} is required (the host head reads it)")
    return options


def parse_roi_loss_config(loss_cfg: Mapping) -> RoIIoULossOptions:
    """Validate ``ROI_HEAD.LOSS_CONFIG`` (stock keys plus ``IOU_REG_LOSS``) and return the IoU options.

    Raises:
        ValueError / TypeError: as :func:`parse_dense_loss_config`.
    """
    return _parse(RoIIoULossOptions, "ROI_HEAD.LOSS_CONFIG", loss_cfg, _ROI_HOST_KEYS)

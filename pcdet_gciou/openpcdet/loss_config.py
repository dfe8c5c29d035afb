"""Validation of the ``LOSS_CONFIG`` blocks of our OpenPCDet heads (pure Python, no pcdet import).

Dense head (``AnchorHeadSingleGCIoU``), ``MODEL.DENSE_HEAD.LOSS_CONFIG``::

    REG_LOSS: {NAME: gciou, alpha: 2.0, g: tan}   # any loss of pcdet_gciou.losses + its keyword args
    SPACE: decoded             # decoded (paper: IoU of the real boxes) | residual (official code)
    KEEP_SMOOTH_L1: False      # also keep OpenPCDet's Smooth-L1 on the residuals
    IOU_QUALITY_FOCAL: False   # quality focal classification loss, detached IoU as soft target
    ENLARGE_POSITIVES: False   # copy positives to the +-1 cells across the anchor heading
    LOSS_WEIGHTS: {cls_weight, loc_weight, dir_weight, code_weights, [smooth_l1_weight]}

RoI head (``PVRCNNHeadGCIoU``), ``MODEL.ROI_HEAD.LOSS_CONFIG`` = the stock keys plus::

    IOU_REG_LOSS:
        ENABLED: False          # off in the paper-faithful config (the paper has no RoI-head result)
        MODE: add               # add: next to Smooth-L1 | replace: instead of Smooth-L1
        LOSS: {NAME: gciou}     # as REG_LOSS above
    LOSS_WEIGHTS: {..., rcnn_iou_reg_weight: 1.0}

Unknown keys raise ValueError naming the key and listing the allowed ones: a misspelt option must
never silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "LOSS_NAMES",
    "DenseLossOptions",
    "RoIIoULossOptions",
    "parse_dense_loss_config",
    "parse_roi_loss_config",
]

LOSS_NAMES = ("gciou", "iou", "log_iou", "giou", "diou", "odiou", "rdiou")
SPACES = ("decoded", "residual")
ROI_IOU_MODES = ("add", "replace")

DENSE_KEYS = (
    "LOSS_WEIGHTS",
    "REG_LOSS",
    "SPACE",
    "KEEP_SMOOTH_L1",
    "IOU_QUALITY_FOCAL",
    "ENLARGE_POSITIVES",
    "REG_LOSS_TYPE",
)
DENSE_WEIGHT_KEYS = ("cls_weight", "loc_weight", "dir_weight", "code_weights", "smooth_l1_weight")
ROI_KEYS = ("CLS_LOSS", "REG_LOSS", "CORNER_LOSS_REGULARIZATION", "LOSS_WEIGHTS", "IOU_REG_LOSS")
ROI_IOU_KEYS = ("ENABLED", "MODE", "LOSS")
ROI_WEIGHT_KEYS = ("rcnn_cls_weight", "rcnn_reg_weight", "rcnn_corner_weight", "code_weights", "rcnn_iou_reg_weight")


@dataclass(frozen=True)
class DenseLossOptions:
    """Parsed dense-head ``LOSS_CONFIG``; see the module docstring for the meaning of each field."""

    reg_loss_name: str = "gciou"
    reg_loss_kwargs: dict = field(default_factory=dict)
    space: str = "decoded"
    keep_smooth_l1: bool = False
    iou_quality_focal: bool = False
    enlarge_positives: bool = False
    cls_weight: float = 1.0
    loc_weight: float = 2.0
    dir_weight: float = 0.2
    smooth_l1_weight: float = 2.0


@dataclass(frozen=True)
class RoIIoULossOptions:
    """Parsed ``ROI_HEAD.LOSS_CONFIG.IOU_REG_LOSS``."""

    enabled: bool = False
    mode: str = "add"
    loss_name: str = "gciou"
    loss_kwargs: dict = field(default_factory=dict)
    weight: float = 1.0


def _check_keys(where: str, mapping: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(mapping).__name__}: {mapping!r}")
    for key in mapping:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in {where}; allowed keys: {list(allowed)}")


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where} must be True or False, got {value!r}")
    return value


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number, got {value!r}")
    return float(value)


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}")
    return value


def _loss_spec(where: str, spec: Any) -> tuple[str, dict]:
    """``{NAME: ..., **kwargs}`` -> (name, kwargs); the kwargs are checked by ``build_loss`` itself."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where} must be a mapping like {{NAME: gciou}}, got {spec!r}")
    if "NAME" not in spec:
        raise ValueError(f"{where} needs a NAME, one of {list(LOSS_NAMES)}; got keys {list(spec)}")
    name = _choice(f"{where}.NAME", spec["NAME"], LOSS_NAMES)
    kwargs = {key: value for key, value in spec.items() if key != "NAME"}
    return name, kwargs


def parse_dense_loss_config(loss_cfg: Mapping) -> DenseLossOptions:
    """Validate ``DENSE_HEAD.LOSS_CONFIG`` and return its options.

    Raises:
        ValueError: unknown key (named, with the allowed list), bad choice, missing weight.
        TypeError: a flag that is not a bool or a weight that is not a number.
    """
    where = "DENSE_HEAD.LOSS_CONFIG"
    _check_keys(where, loss_cfg, DENSE_KEYS)
    weights = loss_cfg.get("LOSS_WEIGHTS")
    if weights is None:
        raise ValueError(f"{where}.LOSS_WEIGHTS is required (cls_weight, loc_weight, dir_weight, code_weights)")
    _check_keys(f"{where}.LOSS_WEIGHTS", weights, DENSE_WEIGHT_KEYS)
    for key in ("cls_weight", "loc_weight", "dir_weight", "code_weights"):
        if key not in weights:
            raise ValueError(f"{where}.LOSS_WEIGHTS.{key} is required; got keys {list(weights)}")
    name, kwargs = _loss_spec(f"{where}.REG_LOSS", loss_cfg.get("REG_LOSS", {"NAME": "gciou"}))
    loc_weight = _number(f"{where}.LOSS_WEIGHTS.loc_weight", weights["loc_weight"])
    return DenseLossOptions(
        reg_loss_name=name,
        reg_loss_kwargs=kwargs,
        space=_choice(f"{where}.SPACE", loss_cfg.get("SPACE", "decoded"), SPACES),
        keep_smooth_l1=_bool(f"{where}.KEEP_SMOOTH_L1", loss_cfg.get("KEEP_SMOOTH_L1", False)),
        iou_quality_focal=_bool(f"{where}.IOU_QUALITY_FOCAL", loss_cfg.get("IOU_QUALITY_FOCAL", False)),
        enlarge_positives=_bool(f"{where}.ENLARGE_POSITIVES", loss_cfg.get("ENLARGE_POSITIVES", False)),
        cls_weight=_number(f"{where}.LOSS_WEIGHTS.cls_weight", weights["cls_weight"]),
        loc_weight=loc_weight,
        dir_weight=_number(f"{where}.LOSS_WEIGHTS.dir_weight", weights["dir_weight"]),
        smooth_l1_weight=_number(f"{where}.LOSS_WEIGHTS.smooth_l1_weight", weights.get("smooth_l1_weight", loc_weight)),
    )


def parse_roi_loss_config(loss_cfg: Mapping) -> RoIIoULossOptions:
    """Validate ``ROI_HEAD.LOSS_CONFIG`` (stock keys plus ``IOU_REG_LOSS``) and return the IoU options.

    Raises:
        ValueError: unknown key (named, with the allowed list) or bad choice.
        TypeError: a flag that is not a bool or a weight that is not a number.
    """
    where = "ROI_HEAD.LOSS_CONFIG"
    _check_keys(where, loss_cfg, ROI_KEYS)
    weights = loss_cfg.get("LOSS_WEIGHTS", {})
    _check_keys(f"{where}.LOSS_WEIGHTS", weights, ROI_WEIGHT_KEYS)
    block = loss_cfg.get("IOU_REG_LOSS")
    if block is None:
        return RoIIoULossOptions()
    _check_keys(f"{where}.IOU_REG_LOSS", block, ROI_IOU_KEYS)
    name, kwargs = _loss_spec(f"{where}.IOU_REG_LOSS.LOSS", block.get("LOSS", {"NAME": "gciou"}))
    return RoIIoULossOptions(
        enabled=_bool(f"{where}.IOU_REG_LOSS.ENABLED", block.get("ENABLED", False)),
        mode=_choice(f"{where}.IOU_REG_LOSS.MODE", block.get("MODE", "add"), ROI_IOU_MODES),
        loss_name=name,
        loss_kwargs=kwargs,
        weight=_number(f"{where}.LOSS_WEIGHTS.rcnn_iou_reg_weight", weights.get("rcnn_iou_reg_weight", 1.0)),
    )

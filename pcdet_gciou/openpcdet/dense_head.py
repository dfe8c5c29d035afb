"""GCIoU anchor heads: OpenPCDet's ``AnchorHeadSingle`` and ``AnchorHeadMulti`` with an IoU-family box loss.

Imports ``pcdet``: only :func:`pcdet_gciou.openpcdet.register` imports this module (on a CPU-only
machine call ``pcdet_gciou.openpcdet.cpu.install()`` first).
"""

from __future__ import annotations

import torch
from pcdet.models.dense_heads.anchor_head_multi import AnchorHeadMulti
from pcdet.models.dense_heads.anchor_head_single import AnchorHeadSingle
from pcdet.utils.box_coder_utils import ResidualCoder

from .anchor_ops import enlarge_positives, flat_anchors, quality_focal_loss
from .loss_config import parse_dense_loss_config
from .positives import Positives, ScaledHostLoss, decode_anchor_positives, weighted_box_loss

__all__ = ["AnchorHeadSingleGCIoU", "AnchorHeadMultiGCIoU", "QFL_SCALE"]

#: Constant factor on the quality focal loss, as in the official code (the focal-loss alpha 0.25 used
#: as a plain scale, not as a class balance).
QFL_SCALE = 0.25


class _AnchorGCIoU:
    """What both GCIoU anchor heads add to their host (mixed in before the host class).

    - :meth:`get_box_reg_layer_loss`: the host's own method runs with its Smooth-L1 on the box values (centre,
      size, heading) scaled to 0 (or, with ``KEEP_SMOOTH_L1``, to ``smooth_l1_weight``) and on any further code
      values (velocity) left as it is (logged as ``rpn_loss_loc_smooth_l1``), so its direction loss and velocity
      regression are unchanged; the IoU-family loss of ``LOSS_CONFIG.REG_LOSS`` on the decoded positives is added with
      OpenPCDet's normalisation::

          rpn_loss_loc = loc_weight / B * sum_b sum_{i in pos(b)} L(pred_i, gt_i) / max(|pos(b)|, 1)

      ``SPACE: residual`` feeds the official code's residual-space boxes instead. Predicted log sizes are
      straight-through clamped before ``exp``.
    - :meth:`positives`: the step's positives, decoded once and shared by the loss, the quality focal loss and
      the logged ``rpn_iou_pos`` (mean 3D IoU of the decoded positives; 0.0 without positives).
    """

    def _init_gciou(self, options) -> None:
        if not isinstance(self.box_coder, ResidualCoder):
            raise ValueError(
                f"{type(self).__name__} needs BOX_CODER ResidualCoder, got {type(self.box_coder).__name__}"
            )
        if options.space == "residual" and self.box_coder.code_size != 7:
            raise ValueError(
                "SPACE: residual needs a 7-value ResidualCoder (no sin/cos angle, no velocity), "
                f"got code size {self.box_coder.code_size}"
            )
        if options.keep_smooth_l1 and options.loc_weight == 0 and options.smooth_l1_scale != 0:
            raise ValueError("KEEP_SMOOTH_L1 with loc_weight 0 needs smooth_l1_weight 0 too (the host scales by it)")
        covered_scale = options.smooth_l1_scale / options.loc_weight if options.keep_smooth_l1 else 0.0
        covered = 8 if self.box_coder.encode_angle_by_sincos else 7  # the box values; the rest is velocity
        scale = [covered_scale] * covered + [1.0] * (self.box_coder.code_size - covered)
        self.reg_loss_func = ScaledHostLoss(self.reg_loss_func, scale)
        self._host_l1_logged = options.keep_smooth_l1 or self.box_coder.code_size > covered
        self.loss_options = options
        self.iou_loss_func = options.reg_loss.build()
        self._positives_cache = None

    def positives(self) -> Positives:
        """The positives of the last training forward, decoded once (cached on that forward's ``box_preds``)."""
        outputs = self.forward_ret_dict
        key = outputs["box_preds"]
        if self._positives_cache is None or self._positives_cache[0] is not key:
            decoded = decode_anchor_positives(
                key,
                outputs["box_cls_labels"],
                outputs["box_reg_targets"],
                flat_anchors(self.anchors, self.use_multihead),
                self.box_coder.decode_torch,
                residual_space=self.loss_options.space == "residual",
            )
            self._positives_cache = (key, decoded)
        return self._positives_cache[1]

    def get_box_reg_layer_loss(self):
        box_loss, tb_dict = super().get_box_reg_layer_loss()
        host_smooth_l1 = tb_dict.pop("rpn_loss_loc", 0.0)
        if self._host_l1_logged:
            tb_dict["rpn_loss_loc_smooth_l1"] = host_smooth_l1
        positives = self.positives()
        loc_loss = weighted_box_loss(positives, self.iou_loss_func, self.loss_options.loc_weight)
        tb_dict.update(rpn_loss_loc=loc_loss.item(), rpn_iou_pos=positives.mean_iou)
        return box_loss + loc_loss, tb_dict

    def get_cls_layer_loss(self):
        if not self.loss_options.iou_quality_focal:
            return super().get_cls_layer_loss()
        cls_preds = self.forward_ret_dict["cls_preds"]
        labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(labels.shape[0])
        logits = cls_preds.reshape(batch_size, -1, self.num_class).float()
        positives = labels > 0
        iou = self.positives().loss_space_iou
        per_sample = positives.sum(dim=1, keepdim=True).clamp(min=1).float()
        weights = (positives | (labels == 0)).float() / per_sample
        column = (labels[positives] - 1).long() if self.num_class > 1 else torch.zeros_like(iou, dtype=torch.long)
        soft_targets = torch.zeros_like(logits)
        soft_targets[positives] = torch.zeros_like(logits[positives]).scatter(-1, column[:, None], iou[:, None])
        loss = (quality_focal_loss(logits, soft_targets).sum(dim=-1) * weights).sum() / batch_size
        cls_loss = loss * QFL_SCALE * self.loss_options.cls_weight
        return cls_loss, {"rpn_loss_cls": cls_loss.item()}


class AnchorHeadSingleGCIoU(_AnchorGCIoU, AnchorHeadSingle):
    """``AnchorHeadSingle`` whose box regression loss is GCIoU (or another IoU-family loss).

    See :class:`_AnchorGCIoU` for the loss. Single-head extras:

    - ``IOU_QUALITY_FOCAL``: quality focal classification loss, soft target = the detached IoU of each positive in
      the loss's space, x ``QFL_SCALE`` x ``cls_weight``.
    - ``ENLARGE_POSITIVES``: positives copied to their +-1 neighbour cells across the anchor heading, with real
      regression targets (:func:`~pcdet_gciou.openpcdet.anchor_ops.enlarge_positives`).

    Logs ``rpn_loss_cls``, ``rpn_loss_loc``, ``rpn_loss_dir``, ``rpn_loss`` like the host, plus ``rpn_iou_pos``.
    """

    def __init__(self, model_cfg, *args, **kwargs):
        options = parse_dense_loss_config(model_cfg.LOSS_CONFIG)
        super().__init__(model_cfg, *args, **kwargs)
        if options.enlarge_positives and self.use_multihead:
            raise ValueError("ENLARGE_POSITIVES needs a single shared anchor map; USE_MULTIHEAD is True")
        self._init_gciou(options)

    def _anchor_grid(self) -> torch.Tensor:
        """(ny, nx, A, 7) anchors, in the order of the flattened head outputs and targets."""
        anchors = torch.cat(self.anchors, dim=-3)  # (1, ny, nx, classes*sizes, rotations, 7)
        return anchors.view(anchors.shape[1], anchors.shape[2], -1, anchors.shape[-1])

    def assign_targets(self, gt_boxes):
        targets = super().assign_targets(gt_boxes)
        if not self.loss_options.enlarge_positives:
            return targets
        anchors = self._anchor_grid()
        batch_size = gt_boxes.shape[0]
        ny, nx, num_slots = anchors.shape[:3]
        labels, reg_targets, added = enlarge_positives(
            targets["box_cls_labels"].view(batch_size, ny, nx, num_slots),
            targets["box_reg_targets"].view(batch_size, ny, nx, num_slots, -1),
            anchors,
            encode=self.box_coder.encode_torch,
            decode=self.box_coder.decode_torch,
        )
        targets["box_cls_labels"] = labels.view(batch_size, -1)
        targets["box_reg_targets"] = reg_targets.view(batch_size, -1, reg_targets.shape[-1])
        targets["reg_weights"] = torch.where(
            added.view(batch_size, -1), torch.ones_like(targets["reg_weights"]), targets["reg_weights"]
        )
        return targets


class AnchorHeadMultiGCIoU(_AnchorGCIoU, AnchorHeadMulti):
    """``AnchorHeadMulti`` (nuScenes/Lyft multi-head, KITTI ``second_multihead``) with the GCIoU box loss.

    Each head's predictions are decoded against that head's own anchors (the host's flattened multi-head order)
    with the head's box coder; ``SEPARATE_REG_CONFIG`` (separate convs per box component) and ``SEPARATE_MULTIHEAD``
    (per-head outputs kept as a list) only change how the predictions are produced, not this decoding. The host
    normalises every head's positives by the sample's positives over *all* heads, then sums the heads, which equals
    the single-head formula of :class:`_AnchorGCIoU` over the concatenated positives. With a 9-value coder
    (velocity, nuScenes) the IoU term takes the 7 box values and the velocity keeps the host's Smooth-L1.
    ``IOU_QUALITY_FOCAL`` and
    ``ENLARGE_POSITIVES`` are single-head options and raise here.
    """

    def __init__(self, model_cfg, *args, **kwargs):
        options = parse_dense_loss_config(model_cfg.LOSS_CONFIG)
        for flag, name in (
            (options.iou_quality_focal, "IOU_QUALITY_FOCAL"),
            (options.enlarge_positives, "ENLARGE_POSITIVES"),
        ):
            if flag:
                raise ValueError(f"{name} is an AnchorHeadSingleGCIoU option; AnchorHeadMultiGCIoU does not support it")
        super().__init__(model_cfg, *args, **kwargs)
        self._init_gciou(options)

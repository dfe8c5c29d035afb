"""``AnchorHeadSingleGCIoU``: OpenPCDet's single anchor head with an IoU-family box loss.

Imports ``pcdet``: only :func:`pcdet_gciou.openpcdet.register` imports this module (on a CPU-only
machine call ``pcdet_gciou.openpcdet.cpu.install()`` first).
"""

from __future__ import annotations

import torch
from pcdet.models.dense_heads.anchor_head_single import AnchorHeadSingle
from pcdet.utils.box_coder_utils import ResidualCoder

from pcdet_gciou.geometry import rotated_iou_3d
from pcdet_gciou.losses import build_loss

from .anchor_ops import (
    clamp_encoded_sizes,
    enlarge_positives,
    flat_anchors,
    mean_positive_iou,
    quality_focal_loss,
    residual_space_boxes,
)
from .loss_config import parse_dense_loss_config

__all__ = ["AnchorHeadSingleGCIoU", "QFL_SCALE"]

#: Constant factor on the quality focal loss, as in the official code (the focal-loss alpha 0.25 used
#: as a plain scale, not as a class balance).
QFL_SCALE = 0.25


class AnchorHeadSingleGCIoU(AnchorHeadSingle):
    """``AnchorHeadSingle`` whose box regression loss is GCIoU (or another IoU-family loss).

    What differs from the parent (everything else, including target assignment and the direction
    classifier, is the host's):

    - :meth:`get_box_reg_layer_loss`: the positives' predictions and targets are decoded with
      ``self.box_coder`` against their anchors (decoded targets = matched GT boxes) and the loss of
      ``LOSS_CONFIG.REG_LOSS`` is applied per box with OpenPCDet's normalisation::

          rpn_loss_loc = loc_weight / B * sum_b sum_{i in pos(b)} L(pred_i, gt_i) / max(|pos(b)|, 1)

      ``SPACE: residual`` instead feeds the official code's residual-space boxes
      (:func:`~pcdet_gciou.openpcdet.anchor_ops.residual_space_boxes`). Predicted log sizes are
      straight-through clamped to +-``SIZE_LOG_CLAMP`` before ``exp`` in both spaces.
      ``KEEP_SMOOTH_L1`` adds the host's Smooth-L1 (``rpn_loss_loc_smooth_l1``, weight
      ``smooth_l1_weight``, default ``loc_weight``).
    - :meth:`get_cls_layer_loss` with ``IOU_QUALITY_FOCAL``: quality focal loss, soft target = the
      detached IoU of each positive in the loss's space, x ``QFL_SCALE`` x ``cls_weight``.
    - :meth:`assign_targets` with ``ENLARGE_POSITIVES``: positives copied to their +-1 neighbour
      cells across the anchor heading, with real regression targets
      (:func:`~pcdet_gciou.openpcdet.anchor_ops.enlarge_positives`).

    Logs ``rpn_loss_cls``, ``rpn_loss_loc``, ``rpn_loss_dir``, ``rpn_loss`` like the host, plus
    ``rpn_iou_pos``: mean 3D IoU of the decoded positive predictions with their GT (always in the
    decoded space, so runs in either space compare; 0.0 for a batch without positives).
    """

    def __init__(
        self,
        model_cfg,
        input_channels,
        num_class,
        class_names,
        grid_size,
        point_cloud_range,
        predict_boxes_when_training=True,
        **kwargs,
    ):
        options = parse_dense_loss_config(model_cfg.LOSS_CONFIG)
        super().__init__(
            model_cfg=model_cfg,
            input_channels=input_channels,
            num_class=num_class,
            class_names=class_names,
            grid_size=grid_size,
            point_cloud_range=point_cloud_range,
            predict_boxes_when_training=predict_boxes_when_training,
            **kwargs,
        )
        if not isinstance(self.box_coder, ResidualCoder) or self.box_coder.code_size != 7:
            raise ValueError(
                f"{type(self).__name__} needs BOX_CODER ResidualCoder with code size 7 (no sin/cos angle), "
                f"got {type(self.box_coder).__name__} with code size {self.box_coder.code_size}"
            )
        if options.enlarge_positives and self.use_multihead:
            raise ValueError("ENLARGE_POSITIVES needs a single shared anchor map; USE_MULTIHEAD is True")
        self.loss_options = options
        self.iou_loss_func = build_loss(options.reg_loss_name, **options.reg_loss_kwargs)

    # ----------------------------------------------------------------------------------------- anchors
    def _anchor_grid(self) -> torch.Tensor:
        """(ny, nx, A, 7) anchors, in the order of the flattened head outputs and targets."""
        anchors = torch.cat(self.anchors, dim=-3)  # (1, ny, nx, classes*sizes, rotations, 7)
        return anchors.view(anchors.shape[1], anchors.shape[2], -1, anchors.shape[-1])

    def _flat_anchors(self) -> torch.Tensor:
        """(N, 7) anchors in the host's flattened order (multihead layout included)."""
        return flat_anchors(self.anchors, self.use_multihead)

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

    # ---------------------------------------------------------------------------------------- positives
    def _positives(self):
        """Positive anchors of the current batch.

        Returns ``(positives (B,N) bool, weights (P,), pred (P,7) encodings, target (P,7), anchors (P,7))``
        with ``weights = 1 / max(#positives of its sample, 1)``.
        """
        box_preds = self.forward_ret_dict["box_preds"]
        labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(box_preds.shape[0])
        box_preds = box_preds.view(batch_size, labels.shape[1], -1)
        positives = labels > 0
        per_sample = positives.sum(dim=1, keepdim=True).clamp(min=1).to(box_preds.dtype)
        weights = (positives.to(box_preds.dtype) / per_sample)[positives]
        anchors = self._flat_anchors().to(box_preds.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        return (
            positives,
            weights,
            box_preds[positives].float(),
            self.forward_ret_dict["box_reg_targets"][positives].float(),
            anchors[positives].float(),
        )

    def decode_positives(self, pred: torch.Tensor, target: torch.Tensor, anchors: torch.Tensor):
        """(P,7) encodings and anchors -> (P,7) decoded predicted boxes (sizes clamped) and GT boxes."""
        pred_boxes = self.box_coder.decode_torch(clamp_encoded_sizes(pred), anchors)
        gt_boxes = self.box_coder.decode_torch(target, anchors)
        return pred_boxes, gt_boxes

    def loss_space_boxes(self, pred: torch.Tensor, target: torch.Tensor, anchors: torch.Tensor):
        """The (pred, target) boxes the IoU loss sees, in ``LOSS_CONFIG.SPACE``."""
        if self.loss_options.space == "residual":
            return residual_space_boxes(pred), residual_space_boxes(target)
        return self.decode_positives(pred, target, anchors)

    def positive_soft_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positives (B,N), iou (P,))``: detached IoU of each positive in the loss's space (QFL targets)."""
        positives, _, pred, target, anchors = self._positives()
        with torch.no_grad():
            iou = rotated_iou_3d(*self.loss_space_boxes(pred.detach(), target, anchors))
        return positives, iou.clamp(0.0, 1.0)

    # ------------------------------------------------------------------------------------------ losses
    def get_cls_layer_loss(self):
        if not self.loss_options.iou_quality_focal:
            return super().get_cls_layer_loss()
        cls_preds = self.forward_ret_dict["cls_preds"]
        labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(cls_preds.shape[0])
        logits = cls_preds.view(batch_size, -1, self.num_class).float()
        positives, iou = self.positive_soft_targets()
        negatives = labels == 0
        per_sample = positives.sum(dim=1, keepdim=True).clamp(min=1).float()
        weights = (positives | negatives).float() / per_sample
        column = (labels[positives] - 1).long() if self.num_class > 1 else torch.zeros_like(iou, dtype=torch.long)
        soft_targets = torch.zeros_like(logits)
        soft_targets[positives] = torch.zeros_like(logits[positives]).scatter(-1, column[:, None], iou[:, None])
        loss = (quality_focal_loss(logits, soft_targets).sum(dim=-1) * weights).sum() / batch_size
        cls_loss = loss * QFL_SCALE * self.loss_options.cls_weight
        return cls_loss, {"rpn_loss_cls": cls_loss.item()}

    def get_box_reg_layer_loss(self):
        options = self.loss_options
        positives, weights, pred, target, anchors = self._positives()
        batch_size = int(positives.shape[0])

        per_box = self.iou_loss_func(*self.loss_space_boxes(pred, target, anchors))
        loc_loss = (per_box * weights).sum() / batch_size * options.loc_weight
        box_loss = loc_loss
        tb_dict = {"rpn_loss_loc": loc_loss.item(), "rpn_iou_pos": mean_positive_iou(self)}

        box_preds = self.forward_ret_dict["box_preds"].view(batch_size, positives.shape[1], -1)
        box_reg_targets = self.forward_ret_dict["box_reg_targets"]
        reg_weights = positives.to(box_preds.dtype)
        reg_weights = reg_weights / reg_weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        if options.keep_smooth_l1:
            preds_sin, targets_sin = self.add_sin_difference(box_preds, box_reg_targets)
            smooth_l1 = self.reg_loss_func(preds_sin, targets_sin, weights=reg_weights).sum() / batch_size
            smooth_l1 = smooth_l1 * options.smooth_l1_weight
            box_loss = box_loss + smooth_l1
            tb_dict["rpn_loss_loc_smooth_l1"] = smooth_l1.item()

        dir_cls_preds = self.forward_ret_dict.get("dir_cls_preds", None)
        if dir_cls_preds is not None:
            anchors_all = self._flat_anchors().unsqueeze(0).expand(batch_size, -1, -1)
            dir_targets = self.get_direction_target(
                anchors_all, box_reg_targets, dir_offset=self.model_cfg.DIR_OFFSET, num_bins=self.model_cfg.NUM_DIR_BINS
            )
            dir_logits = dir_cls_preds.view(batch_size, -1, self.model_cfg.NUM_DIR_BINS)
            dir_loss = self.dir_loss_func(dir_logits, dir_targets, weights=reg_weights.type_as(dir_logits))
            dir_loss = dir_loss.sum() / batch_size * options.dir_weight
            box_loss = box_loss + dir_loss
            tb_dict["rpn_loss_dir"] = dir_loss.item()
        return box_loss, tb_dict

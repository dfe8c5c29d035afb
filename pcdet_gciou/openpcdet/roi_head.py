"""``PVRCNNHeadGCIoU``: PV-RCNN's RoI head with an optional IoU-family refinement loss.

This option is ours: the GCIoU paper reports no RoI-head result, so it is off in the paper-faithful
``pv_rcnn_gciou.yaml``. Imports ``pcdet``: only :func:`pcdet_gciou.openpcdet.register` imports it.
"""

from __future__ import annotations

import torch
from pcdet.models.roi_heads.pvrcnn_head import PVRCNNHead
from pcdet.utils import common_utils, loss_utils

from pcdet_gciou.geometry import rotated_iou_3d

from .anchor_ops import clamp_encoded_sizes
from .loss_config import parse_roi_loss_config

__all__ = ["PVRCNNHeadGCIoU"]


class PVRCNNHeadGCIoU(PVRCNNHead):
    """``PVRCNNHead`` whose box refinement loss can include an IoU-family loss.

    With ``LOSS_CONFIG.IOU_REG_LOSS.ENABLED: False`` it is exactly ``PVRCNNHead``. When enabled,
    :meth:`get_box_reg_layer_loss` decodes each foreground RoI's regression in the canonical RoI
    frame (decoded against the RoI with centre and heading zeroed, as OpenPCDet encodes the targets)
    and compares it with ``gt_of_rois`` (the GT in that frame; an IoU is invariant to the rigid
    transform, so the world frame would give the same value)::

        rcnn_loss_iou = rcnn_iou_reg_weight * sum_{fg} L(pred_i, gt_i) / max(#fg, 1)

    ``MODE: add`` keeps the host's Smooth-L1 (``rcnn_loss_reg``) and corner loss; ``MODE: replace``
    drops the Smooth-L1 (no ``rcnn_loss_reg`` key) and keeps the corner loss if configured. Predicted
    log sizes are straight-through clamped as in the dense head. Extra log key ``rcnn_iou_fg``: mean
    3D IoU of the foreground refinements (0.0 when there are none).
    """

    def __init__(self, input_channels, model_cfg, num_class=1, **kwargs):
        options = parse_roi_loss_config(model_cfg.LOSS_CONFIG)
        super().__init__(input_channels=input_channels, model_cfg=model_cfg, num_class=num_class, **kwargs)
        if self.box_coder.code_size != 7:
            raise ValueError(f"{type(self).__name__} needs a 7-value box code, got {self.box_coder.code_size}")
        self.iou_options = options
        self.iou_loss_func = options.loss.build() if options.enabled else None

    def get_box_reg_layer_loss(self, forward_ret_dict):
        options = self.iou_options
        if not options.enabled:
            return super().get_box_reg_layer_loss(forward_ret_dict)
        if options.mode == "add":
            reg_loss, tb_dict = super().get_box_reg_layer_loss(forward_ret_dict)
        else:
            reg_loss, tb_dict = self.corner_loss(forward_ret_dict)
        iou_loss, iou_tb = self.iou_reg_loss(forward_ret_dict)
        tb_dict.update(iou_tb)
        return reg_loss + iou_loss, tb_dict

    def foreground(self, forward_ret_dict):
        """``(fg_mask (R,), rcnn_reg (R,7), rois (R,7), gt_of_rois (R,7))`` flattened over the batch."""
        code_size = self.box_coder.code_size
        fg_mask = forward_ret_dict["reg_valid_mask"].view(-1) > 0
        rcnn_reg = forward_ret_dict["rcnn_reg"].view(fg_mask.shape[0], -1)
        rois = forward_ret_dict["rois"][..., 0:code_size].reshape(-1, code_size)
        gt_of_rois = forward_ret_dict["gt_of_rois"][..., 0:code_size].reshape(-1, code_size)
        return fg_mask, rcnn_reg, rois, gt_of_rois

    def decode_canonical(self, rcnn_reg: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """(R,7) refinements of (R,7) RoIs -> (R,7) boxes in each RoI's canonical frame (sizes clamped)."""
        local_rois = rois.detach().clone()
        local_rois[:, 0:3] = 0
        local_rois[:, 6] = 0
        return self.box_coder.decode_torch(clamp_encoded_sizes(rcnn_reg), local_rois)

    def iou_reg_loss(self, forward_ret_dict):
        fg_mask, rcnn_reg, rois, gt_of_rois = self.foreground(forward_ret_dict)
        pred = self.decode_canonical(rcnn_reg[fg_mask].float(), rois[fg_mask].float())
        target = gt_of_rois[fg_mask].float()
        per_box = self.iou_loss_func(pred, target)
        loss = per_box.sum() / max(int(fg_mask.sum()), 1) * self.iou_options.weight
        with torch.no_grad():
            iou = rotated_iou_3d(pred.detach(), target)
        return loss, {"rcnn_loss_iou": loss.item(), "rcnn_iou_fg": float(iou.mean()) if iou.numel() else 0.0}

    def corner_loss(self, forward_ret_dict):
        """The host's corner regulariser alone (``MODE: replace``): corners of the world-frame refined
        boxes vs the GT (and its pi-flipped copy), Smooth-L1, mean over foreground, x rcnn_corner_weight."""
        loss_cfg = self.model_cfg.LOSS_CONFIG
        fg_mask, rcnn_reg, rois, _ = self.foreground(forward_ret_dict)
        zero = rcnn_reg.sum() * 0.0
        if not loss_cfg.CORNER_LOSS_REGULARIZATION or not bool(fg_mask.any()):
            return zero, {}
        code_size = self.box_coder.code_size
        gt_src = forward_ret_dict["gt_of_rois_src"][..., 0:code_size].reshape(-1, code_size)[fg_mask]
        fg_rois = rois[fg_mask]
        anchors = fg_rois.detach().clone()
        anchors[:, 0:3] = 0
        boxes = self.box_coder.decode_torch(rcnn_reg[fg_mask], anchors)
        boxes = common_utils.rotate_points_along_z(boxes.unsqueeze(dim=1), fg_rois[:, 6]).squeeze(dim=1)
        boxes = torch.cat([boxes[:, 0:3] + fg_rois[:, 0:3], boxes[:, 3:]], dim=-1)
        corner = loss_utils.get_corner_loss_lidar(boxes[:, 0:7], gt_src[:, 0:7]).mean()
        corner = corner * loss_cfg.LOSS_WEIGHTS["rcnn_corner_weight"]
        return zero + corner, {"rcnn_loss_corner": corner.item()}

"""GCIoU query head: OpenPCDet's ``TransFusionHead`` (TransFusion-L on nuScenes).

Imports ``pcdet``: only :func:`pcdet_gciou.openpcdet.register` imports this module (on a CPU-only machine call
``pcdet_gciou.openpcdet.cpu.install()`` first).
"""

from __future__ import annotations

import torch
from pcdet.models.dense_heads.target_assigner.hungarian_assigner import HungarianAssigner3D, height_overlaps
from pcdet.models.dense_heads.transfusion_head import TransFusionHead

from pcdet_gciou.geometry import rotated_overlap_bev

from .loss_config import parse_transfusion_loss_config
from .positives import Positives, ScaledHostLoss, decode_center_boxes, grouped_box_loss_and_iou

__all__ = ["TransFusionHeadGCIoU", "PortableHungarianAssigner3D"]

#: the host's code layout (its ``encode_bbox``): x, y (grid units), z, log dx dy dz, sin, cos, then velocity
COVERED_CODES = slice(0, 8)


class PortableHungarianAssigner3D(HungarianAssigner3D):
    """The host's Hungarian assigner with its IoU cost computed on the boxes' own device.

    The host's ``overlaps`` moves the boxes to CUDA for the BEV overlap kernel; here the BEV overlap areas are the
    exact ones of :func:`pcdet_gciou.geometry.rotated_overlap_bev`, and the height overlap, volumes and cost are
    the host's (its ``height_overlaps``, which reads ``z`` as the box bottom, is kept so the matching is the
    host's). A sample without ground truth makes every query background (the host's ``assign`` fails there).
    """

    def assign(self, bboxes, gt_bboxes, gt_labels, cls_pred, point_cloud_range):
        if gt_bboxes.shape[0] == 0:  # the host reads an unset variable here: every query is background
            return bboxes.new_zeros(bboxes.shape[0], dtype=torch.long), bboxes.new_zeros(bboxes.shape[0])
        return super().assign(bboxes, gt_bboxes, gt_labels, cls_pred, point_cloud_range)

    def iou3d_cost(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor):
        rows, cols = bboxes.shape[0], gt_bboxes.shape[0]
        area, _ = rotated_overlap_bev(
            bboxes[:, None, :7].expand(rows, cols, 7).float(), gt_bboxes[None, :, :7].expand(rows, cols, 7).float()
        )
        overlap = area.to(bboxes.dtype) * height_overlaps(bboxes, gt_bboxes)
        volume1 = (bboxes[:, 3] * bboxes[:, 4] * bboxes[:, 5]).view(-1, 1)
        volume2 = (gt_bboxes[:, 3] * gt_bboxes[:, 4] * gt_bboxes[:, 5]).view(1, -1)
        iou = overlap / torch.clamp(volume1 + volume2 - overlap, min=1e-8)
        return -iou * self.iou_cost.get("weight", 0.25), iou


class TransFusionHeadGCIoU(TransFusionHead):
    """``TransFusionHead`` with a GCIoU box loss on its Hungarian-matched query proposals.

    The host matches each ground-truth box to one of its ``NUM_PROPOSALS`` queries and regresses the matched
    queries' codes with an L1 loss. Here the matched queries' predictions are decoded as the host decodes them for
    inference (grid-unit centre times stride and voxel size plus the range origin, z, exp of the log dims,
    heading atan2(sin, cos)), their targets are the host's encoded targets decoded the same way, and the
    IoU-family loss of ``LOSS_CONFIG.REG_LOSS`` is added, normalised like the host's L1::

        loss_iou_box = iou_weight * sum_{matched i} L(pred_i, gt_i) / max(num_matched, 1)

    ``KEEP_L1: False`` zeroes the host's L1 on the codes the IoU term covers (centre, z, log dims, sin/cos), so
    only velocity keeps its L1; ``KEEP_L1: True`` keeps the host's L1 as it is. Everything else is the host's:
    the dense heatmap loss, the query classification loss and the matching. Logs ``loss_iou_box`` and
    ``iou_pos`` (mean 3D IoU of the matched queries); ``loss_trans`` is the new total.

    Runs on any device: the host's assigner and decoder create CUDA tensors, so this head uses
    :class:`PortableHungarianAssigner3D` and its own :meth:`decode_bbox` (the host's outputs, tested).
    """

    def __init__(self, model_cfg, *args, **kwargs):
        options = parse_transfusion_loss_config(model_cfg.LOSS_CONFIG)
        super().__init__(model_cfg, *args, **kwargs)
        order = list(self.model_cfg.SEPARATE_HEAD_CFG.HEAD_ORDER)
        if order[:4] != ["center", "height", "dim", "rot"]:
            raise ValueError(f"{type(self).__name__} needs HEAD_ORDER to start [center, height, dim, rot], got {order}")
        self.loss_options = options
        self.iou_loss_func = options.reg_loss.build()
        self.bbox_assigner = PortableHungarianAssigner3D(**self.model_cfg.TARGET_ASSIGNER_CONFIG.HUNGARIAN_ASSIGNER)
        if not options.keep_l1:
            keep = torch.ones(self.code_size)
            keep[COVERED_CODES] = 0.0
            self.loss_bbox = ScaledHostLoss(self.loss_bbox, keep)
        self._geometry = (
            float(self.feature_map_stride),
            [float(v) for v in self.voxel_size[:2]],
            [float(v) for v in self.point_cloud_range[:2]],
        )
        self._last_targets = None
        self._positives_cache = None

    def get_targets(self, gt_bboxes_3d, gt_labels_3d, pred_dicts):
        targets = super().get_targets(gt_bboxes_3d, gt_labels_3d, pred_dicts)
        self._last_targets = (pred_dicts, targets[2], targets[3])  # the encoded targets and their weights
        return targets

    def positives(self) -> Positives:
        """The matched queries of the last training step, decoded once (the host's targets decoded alike)."""
        if self._last_targets is None:
            raise ValueError("positives() needs a training forward first")
        pred_dicts, bbox_targets, bbox_weights = self._last_targets
        if self._positives_cache is None or self._positives_cache[0] is not pred_dicts:
            matched = bbox_weights[..., 0] > 0  # (B, P)
            batch, query = matched.nonzero(as_tuple=True)
            codes = torch.cat([pred_dicts[name] for name in ("center", "height", "dim", "rot")], dim=1)
            pred = self._decode_codes(codes.permute(0, 2, 1)[batch, query].float())
            target = self._decode_codes(bbox_targets[batch, query, :8].float())
            count = max(int(matched.sum()), 1)
            weights = torch.full_like(pred[:, 0], 1.0 / count)
            self._positives_cache = (pred_dicts, Positives(pred=pred, target=target, weights=weights))
        return self._positives_cache[1]

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(P, 8) host codes (grid x y, z, log dims, sin, cos) -> (P, 7) boxes, as the host's ``decode_bbox``."""
        cells = torch.zeros_like(codes[:, :2], dtype=torch.long)
        rot = codes[:, [7, 6]]  # the host stores (sin, cos); decode_center_boxes takes (cos, sin)
        return decode_center_boxes(codes[:, 0:2], codes[:, 2:3], codes[:, 3:6], rot, cells, *self._geometry)

    def loss(self, gt_bboxes_3d, gt_labels_3d, pred_dicts, **kwargs):
        loss, tb_dict = super().loss(gt_bboxes_3d, gt_labels_3d, pred_dicts, **kwargs)
        positives = self.positives()
        (term,), iou = grouped_box_loss_and_iou([positives], self.iou_loss_func, self.loss_options.iou_weight)
        loss = loss + term
        tb_dict["loss_iou_box"] = term.item()
        tb_dict["iou_pos"] = float(iou.mean()) if iou.numel() else 0.0
        tb_dict["loss_trans"] = loss.item()
        return loss, tb_dict

    def decode_bbox(self, heatmap, rot, dim, center, height, vel, filter=False):
        """The host's decoder on the inputs' device: per sample ``pred_boxes`` (x y z dx dy dz heading [vx vy]),
        ``pred_scores`` and ``pred_labels`` (best class); with ``filter``, only scores above ``SCORE_THRESH`` and
        centres inside ``POST_CENTER_RANGE``. Log dims are clamped as in
        :func:`~pcdet_gciou.openpcdet.positives.decode_center_boxes` (only a diverging prediction differs)."""
        scores, labels = heatmap.max(1)
        codes = torch.cat([center, height, dim, rot], dim=1).permute(0, 2, 1)  # (B, P, 8)
        boxes = self._decode_codes(codes.reshape(-1, 8)).view(*codes.shape[:2], 7).to(center.dtype)
        if vel is not None:
            boxes = torch.cat([boxes, vel.permute(0, 2, 1)], dim=-1)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if filter:
            cfg = self.model_cfg.POST_PROCESSING
            limits = torch.as_tensor(cfg.POST_CENTER_RANGE, dtype=boxes.dtype, device=boxes.device)
            keep = (scores > cfg.SCORE_THRESH) & (boxes[..., :3] >= limits[:3]).all(-1)
            keep &= (boxes[..., :3] <= limits[3:]).all(-1)
        return [
            {"pred_boxes": boxes[i][keep[i]], "pred_scores": scores[i][keep[i]], "pred_labels": labels[i][keep[i]]}
            for i in range(boxes.shape[0])
        ]

"""GCIoU centre heads: OpenPCDet's ``CenterHead`` (dense BEV map) and ``VoxelNeXtHead`` (sparse voxels).

Imports ``pcdet``: only :func:`pcdet_gciou.openpcdet.register` imports this module (on a CPU-only machine call
``pcdet_gciou.openpcdet.cpu.install()`` first).
"""

from __future__ import annotations

import torch
from pcdet.models.dense_heads.center_head import CenterHead
from pcdet.models.dense_heads.voxelnext_head import VoxelNeXtHead
from torch.nn.utils.rnn import pad_sequence

from .loss_config import parse_center_loss_config
from .positives import (
    IOU_COVERED_HEADS,
    Positives,
    ScaledHostLoss,
    SharedGatherRegLoss,
    center_code_keep_mask,
    decode_center_boxes,
    gather_center_rows,
    grouped_box_loss_and_iou,
)

__all__ = ["CenterHeadGCIoU", "VoxelNeXtHeadGCIoU"]

#: channels of the covered heads, in IOU_COVERED_HEADS order: centre offset, z, log dims, (cos, sin)
COVERED_CHANNELS = (2, 1, 3, 2)


class _CenterGCIoU:
    """What both GCIoU centre heads add to their host (mixed in before the host class).

    Per task head, the predictions at the ground-truth centre cells (the host's ``inds``/``masks``) are decoded as
    the host decodes boxes for inference (:func:`~pcdet_gciou.openpcdet.positives.decode_center_boxes`) and the
    IoU-family loss of ``LOSS_CONFIG.REG_LOSS`` is applied to them against the GT boxes, normalised like the host's
    L1 (``RegLossCenterNet``: sum over the positives of the batch / (their number + 1e-4))::

        reg_iou_loss_head_k = iou_weight * sum_{i in pos(k)} L(pred_i, gt_i) / (|pos(k)| + 1e-4)

    The IoU term covers centre, z, size and heading; velocity (9-value boxes) is left to the host's L1.
    ``KEEP_L1: False`` zeroes the host's L1 on exactly the covered code values (velocity keeps its L1, so
    ``loc_loss_head_k`` is then the velocity L1 alone); ``KEEP_L1: True`` keeps the host's L1 as it is.
    Everything else is the host's: heatmap loss, its ``IOU_REG_LOSS`` (an axis-aligned DIoU, added on top when
    set) and its ``iou`` branch (trained on a detached IoU of the host's own decode).

    Logs, next to the host's keys: ``reg_iou_loss_head_k``, ``iou_pos_head_k`` (mean 3D IoU of head k's decoded
    positives) and ``iou_pos`` (over all heads; 0.0 without positives); ``rpn_loss`` is the new total.
    """

    def _init_gciou(self, options) -> None:
        head_order = list(self.separate_head_cfg.HEAD_ORDER)
        missing = [name for name in IOU_COVERED_HEADS if name not in head_order]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs HEAD_ORDER with {list(IOU_COVERED_HEADS)}, missing {missing}"
            )
        self.loss_options = options
        self.iou_loss_func = options.reg_loss.build()
        self._geometry = (
            float(self.feature_map_stride),
            [float(v) for v in self.voxel_size[:2]],
            [float(v) for v in self.point_cloud_range[:2]],
        )
        self._positives_cache = None

    def positives(self) -> list[Positives]:
        """Per task head, the positives of the last training forward, decoded once (cached on its ``pred_dicts``)."""
        key = self.forward_ret_dict["pred_dicts"]
        if self._positives_cache is None or self._positives_cache[0] is not key:
            targets = self.forward_ret_dict["target_dicts"]
            self._positives_cache = (key, self._all_positives(targets))
        return self._positives_cache[1]

    def _decode(self, rows: torch.Tensor, cell_xy: torch.Tensor, gt: torch.Tensor, num: torch.Tensor) -> Positives:
        """(P, 8) predictions (centre offset, z, log dims, cos, sin) at the positive cells -> Positives.

        ``num``: the number of positives of each one's task head (a scalar, or (P,)).
        """
        pred = decode_center_boxes(*rows.float().split(COVERED_CHANNELS, dim=-1), cell_xy, *self._geometry)
        weights = torch.full_like(pred[:, 0], 1.0) / (num.to(pred.dtype) + 1e-4)
        return Positives(pred=pred, target=gt[:, :7].float(), weights=weights)

    def iou_terms(self) -> tuple[list[torch.Tensor], dict]:
        """Per task head the IoU loss term, and what is logged of it: ``reg_iou_loss_head_k``, ``iou_pos_head_k``
        and ``iou_pos``. Everything the IoU loss adds to the host's step (timed by ``scripts/bench_heads.py``)."""
        heads = self.positives()
        terms, ious = grouped_box_loss_and_iou(heads, self.iou_loss_func, self.loss_options.iou_weight)
        logged = {}
        for idx, (term, iou) in enumerate(zip(terms, ious.split([len(p.weights) for p in heads]))):
            logged[f"reg_iou_loss_head_{idx}"] = term.item()
            logged[f"iou_pos_head_{idx}"] = float(iou.mean()) if iou.numel() else 0.0
        logged["iou_pos"] = float(ious.mean()) if ious.numel() else 0.0
        return terms, logged

    def get_loss(self):
        loss, tb_dict = super().get_loss()
        terms, logged = self.iou_terms()
        for term in terms:
            loss = loss + term
        tb_dict.update(logged)
        tb_dict["rpn_loss"] = loss.item()
        return loss, tb_dict


class CenterHeadGCIoU(_CenterGCIoU, CenterHead):
    """``CenterHead`` (CenterPoint, PillarNet, DSVT, PV-RCNN++) with a GCIoU box loss; see :class:`_CenterGCIoU`."""

    def __init__(self, model_cfg, *args, **kwargs):
        options = parse_center_loss_config(model_cfg.LOSS_CONFIG)
        super().__init__(model_cfg, *args, **kwargs)
        self._init_gciou(options)
        head_order, head_dict = list(self.separate_head_cfg.HEAD_ORDER), self.separate_head_cfg.HEAD_DICT
        keep = None if options.keep_l1 else center_code_keep_mask(head_order, head_dict)
        self.reg_loss_func = SharedGatherRegLoss(self.reg_loss_func, keep)
        starts = dict(zip(head_order, torch.tensor([head_dict[n]["out_channels"] for n in head_order]).cumsum(0)))
        covered = [torch.arange(starts[n] - head_dict[n]["out_channels"], starts[n]) for n in IOU_COVERED_HEADS]
        self.register_buffer("_covered_channels", torch.cat(covered), persistent=False)

    def get_loss(self):
        self.reg_loss_func.gathered.clear()  # the host's L1 gathers this step's rows, the IoU term reuses them
        return super().get_loss()

    def _all_positives(self, targets: dict) -> list[Positives]:
        """The maps at the GT cells ``inds`` (``y * W + x``) where ``masks`` is set, all task heads decoded at once.

        The rows are those the host's L1 gathered this step (``HEAD_ORDER`` channels); when asked before the host's
        loss ran, they are gathered here in the same way.
        """
        preds = self.forward_ret_dict["pred_dicts"]
        rows = torch.stack([self._task_rows(pred_dict, inds) for pred_dict, inds in zip(preds, targets["inds"])])
        masks = torch.stack(list(targets["masks"])) > 0
        task, batch, slot = masks.nonzero(as_tuple=True)
        cells = torch.stack(list(targets["inds"]))[task, batch, slot]
        covered = rows[task.unsqueeze(1), batch.unsqueeze(1), slot.unsqueeze(1), self._covered_channels]
        width = preds[0]["center"].shape[-1]
        cell_xy = torch.stack([cells % width, torch.div(cells, width, rounding_mode="floor")], dim=-1)
        gt = torch.stack([boxes[..., :7] for boxes in targets["target_boxes_src"]])[task, batch, slot]
        counts = masks.sum(dim=(1, 2))
        decoded = self._decode(covered, cell_xy, gt, counts[task])
        sizes = counts.tolist()
        return [
            Positives(pred=pred, target=target, weights=weights)
            for pred, target, weights in zip(*(t.split(sizes) for t in (decoded.pred, decoded.target, decoded.weights)))
        ]

    def _task_rows(self, pred_dict: dict, inds: torch.Tensor) -> torch.Tensor:
        rows = self.reg_loss_func.rows_for(inds)
        if rows is None:
            rows = gather_center_rows(
                torch.cat([pred_dict[name] for name in self.separate_head_cfg.HEAD_ORDER], 1), inds
            )
        return rows


class VoxelNeXtHeadGCIoU(_CenterGCIoU, VoxelNeXtHead):
    """``VoxelNeXtHead`` (sparse voxel predictions) with a GCIoU box loss; see :class:`_CenterGCIoU`.

    The host's ``inds`` index the voxels of one sample (``output[batch_index == b][ind]``); they are mapped to
    rows of the batch's voxel list through a stable sort by batch index, and each voxel's (x, y) cell is its sparse
    index, as in the host's decoder.
    """

    def __init__(self, model_cfg, *args, **kwargs):
        options = parse_center_loss_config(model_cfg.LOSS_CONFIG)
        super().__init__(model_cfg, *args, **kwargs)
        self._init_gciou(options)
        if not options.keep_l1:
            keep = center_code_keep_mask(list(self.separate_head_cfg.HEAD_ORDER), self.separate_head_cfg.HEAD_DICT)
            self.reg_loss_func = ScaledHostLoss(self.reg_loss_func, keep)

    def _all_positives(self, targets: dict) -> list[Positives]:
        return [self._head_positives(targets, idx) for idx in range(len(targets["masks"]))]

    def _head_positives(self, targets: dict, idx: int) -> Positives:
        pred_dict = self.forward_ret_dict["pred_dicts"][idx]
        voxel_indices = self.forward_ret_dict["voxel_indices"]
        batch_index = self.forward_ret_dict["batch_index"].long()
        mask = targets["masks"][idx] > 0
        batch, slot = mask.nonzero(as_tuple=True)
        counts = torch.bincount(batch_index, minlength=mask.shape[0])
        starts = counts.cumsum(0) - counts
        order = torch.argsort(batch_index, stable=True)
        rows_index = order[starts[batch] + targets["inds"][idx][batch, slot]]
        rows = torch.cat([pred_dict[name] for name in IOU_COVERED_HEADS], dim=1).index_select(0, rows_index)
        cell_xy = voxel_indices[rows_index][:, [-1, -2]]
        gt = pad_sequence(list(targets["gt_boxes"][idx]), batch_first=True)[batch, slot]
        return self._decode(rows, cell_xy, gt, mask.sum())

"""Cost of CenterHeadGCIoU's IoU box loss against the host CenterHead's L1 regression loss, in the same run.

On real KITTI frames (batch 2 by default) through ``cfgs/kitti_models/centerpoint_gciou.yaml``: the backbone runs
once; then, per step, the head's forward and targets are recomputed, its outputs are detached into leaves, and each
loss term is timed forward + backward to those outputs (median of ``--steps``):

- ``host L1``: the host's ``RegLossCenterNet`` over all task heads, x code weights x loc_weight;
- ``GCIoU``: finding and decoding the positives at the GT centres, the GCIoU loss, its backward and the logged IoU.

Usage::

    python scripts/bench_heads.py --data_path /path/to/kitti [--batch 2] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pcdet_gciou.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "cfgs" / "kitti_models" / "centerpoint_gciou.yaml"


def kitti_frames(data_path: Path, cfg, count: int) -> list[dict]:
    """The ``count`` training frames with the most labelled objects, as OpenPCDet input dicts (lidar frame)."""
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset
    from pcdet.utils import box_utils

    cfg.DATA_CONFIG.DATA_PATH = str(data_path)
    dataset = KittiDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, root_path=data_path, training=False)
    dataset.set_split("train")
    frames = []
    for sample in dataset.sample_id_list:
        objects = [o for o in dataset.get_label(sample) if o.cls_type in cfg.CLASS_NAMES]
        if objects:
            camera = np.array([[*o.loc, o.l, o.h, o.w, o.ry] for o in objects], dtype=np.float32)
            boxes = box_utils.boxes3d_kitti_camera_to_lidar(camera, dataset.get_calib(sample))
            names = np.array([o.cls_type for o in objects])
            frames.append({"points": dataset.get_lidar(sample), "gt_boxes": boxes, "gt_names": names})
    if len(frames) < count:
        raise ValueError(f"{data_path} has fewer than {count} labelled training frames")
    return sorted(frames, key=lambda frame: -len(frame["gt_names"]))[:count]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", type=Path, required=True, help="KITTI-layout root (training/, ImageSets/)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        from pcdet_gciou.openpcdet import cpu

        cpu.install()
    from pcdet.datasets.dataset import DatasetTemplate
    from pcdet.models import build_network, load_data_to_gpu

    from pcdet_gciou.openpcdet import register
    from pcdet_gciou.openpcdet.positives import Positives, grouped_box_loss

    register()
    cfg = load_config(CONFIG)
    augmentor = cfg.DATA_CONFIG.DATA_AUGMENTOR
    augmentor.DISABLE_AUG_LIST = [a.NAME for a in augmentor.AUG_CONFIG_LIST]
    frames = kitti_frames(args.data_path, cfg, args.batch)
    dataset = DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=True, logger=None)
    batch = dataset.collate_batch([dataset.prepare_data(frame) for frame in frames])
    load_data_to_gpu(batch)
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset).train()
    with torch.no_grad():
        for module in model.module_list[:-1]:
            batch = module(batch)
    head = model.dense_head
    weights = cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS
    host_l1 = getattr(head.reg_loss_func, "inner", head.reg_loss_func)

    def host_loss():
        preds, targets = head.forward_ret_dict["pred_dicts"], head.forward_ret_dict["target_dicts"]
        total = 0.0
        for idx, pred_dict in enumerate(preds):
            boxes = torch.cat([pred_dict[name] for name in head.separate_head_cfg.HEAD_ORDER], dim=1)
            per_code = host_l1(boxes, targets["masks"][idx], targets["inds"][idx], targets["target_boxes"][idx])
            total = total + (per_code * per_code.new_tensor(weights["code_weights"])).sum() * weights["loc_weight"]
        total.backward(retain_graph=True)

    def gciou_loss():
        head._positives_cache = None
        heads = head.positives()
        total = sum(grouped_box_loss(heads, head.iou_loss_func, head.loss_options.iou_weight))
        total.backward(retain_graph=True)
        return Positives.concat(heads).mean_iou

    rows = {"host L1 (RegLossCenterNet)": [], "GCIoU (decode + loss + IoU log)": []}
    for step in range(args.steps):
        head({**batch, "gt_boxes": batch["gt_boxes"].clone()})
        # the head's outputs become leaves: the timings cover the loss terms, not the backward through the convs
        head.forward_ret_dict["pred_dicts"] = [
            {name: value.detach().requires_grad_() for name, value in pred_dict.items()}
            for pred_dict in head.forward_ret_dict["pred_dicts"]
        ]
        terms = [("host L1 (RegLossCenterNet)", host_loss), ("GCIoU (decode + loss + IoU log)", gciou_loss)]
        for name, term in terms[:: 1 if step % 2 else -1]:  # alternate the order: the first backward pays more
            rows[name].append(timed(term))
    positives = sum(p.pred.shape[0] for p in head.positives())
    print(f"CenterHeadGCIoU, {args.batch} KITTI frames, {positives} positives, {torch.get_num_threads()} threads")
    print("| term (forward + backward) | median ms | min ms |")
    print("|---|---|---|")
    for name, times in rows.items():
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} |")


if __name__ == "__main__":
    main()

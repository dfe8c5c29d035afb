"""Cost of CenterHeadGCIoU's IoU box loss against the host CenterHead's L1 regression loss, in the same run.

On real KITTI frames (batch 2 by default) through ``cfgs/kitti_models/centerpoint_gciou.yaml``: the backbone runs
once; then, per step, the head's forward and targets are recomputed and its outputs detached into leaves, and
three regions are timed, each forward + backward to those outputs, with fresh gradients (median of ``--steps``;
the order of the regions rotates from step to step):

- ``host L1, stock``: what OpenPCDet's ``CenterHead.get_loss`` computes for box regression, per task head: the
  ``HEAD_ORDER`` maps concatenated, ``RegLossCenterNet`` (channels-last copy of the maps, gather at the 500
  ``inds`` slots, masked L1), x code weights x loc_weight;
- ``ours, host L1``: the same lines with our head's ``reg_loss_func`` (the host's L1 on a gather of the flat maps,
  its rows kept; ``KEEP_L1: False`` zeroes the covered codes);
- ``ours, host L1 + GCIoU``: the same, then ``head.iou_terms()``: the positives' rows taken from the host's
  gather, decoded, the GCIoU loss, and the logged values (its IoUs and ``.item()``), one backward for all;
- ``GCIoU loss alone``: for reference, ``iou_loss_func`` on this step's decoded positives made leaves, forward +
  backward (the floor: the rotated-IoU geometry, whatever the head does around it).

The GCIoU term's cost is ``(ours, host L1 + GCIoU) - (host L1, stock)``: what training with our head adds to the
stock head's box regression; ``- (ours, host L1)`` gives the IoU term's own work, the shared gather excluded.

Usage::

    python scripts/bench_heads.py --data_path /path/to/kitti [--batch 2] [--steps 8] [--threads N]
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


def timed(fn, leaves: list[torch.Tensor]) -> float:
    for leaf in leaves:
        leaf.grad = None
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def build_head(data_path: Path, batch_size: int):
    """The GCIoU CenterPoint head and the BEV features of the ``batch_size`` KITTI frames with most objects."""
    from pcdet.datasets.dataset import DatasetTemplate
    from pcdet.models import build_network, load_data_to_gpu

    from pcdet_gciou.openpcdet import register

    register()
    cfg = load_config(CONFIG)
    augmentor = cfg.DATA_CONFIG.DATA_AUGMENTOR
    augmentor.DISABLE_AUG_LIST = [a.NAME for a in augmentor.AUG_CONFIG_LIST]
    frames = kitti_frames(data_path, cfg, batch_size)
    dataset = DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=True, logger=None)
    batch = dataset.collate_batch([dataset.prepare_data(frame) for frame in frames])
    load_data_to_gpu(batch)
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset).train()
    with torch.no_grad():
        for module in model.module_list[:-1]:
            batch = module(batch)
    return model.dense_head, batch, cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS


def host_regression(head, reg_loss_func, weights) -> torch.Tensor:
    """The box-regression lines of ``CenterHead.get_loss``, with the given regression loss."""
    preds, targets = head.forward_ret_dict["pred_dicts"], head.forward_ret_dict["target_dicts"]
    total = 0.0
    for idx, pred_dict in enumerate(preds):
        boxes = torch.cat([pred_dict[name] for name in head.separate_head_cfg.HEAD_ORDER], dim=1)
        per_code = reg_loss_func(boxes, targets["masks"][idx], targets["inds"][idx], targets["target_boxes"][idx])
        total = total + (per_code * per_code.new_tensor(weights["code_weights"])).sum() * weights["loc_weight"]
    return total


def report(rows: dict, batch_size: int, positives: int) -> None:
    """The markdown table: each region's median and min, and the GCIoU term as per-step differences."""
    print(f"CenterHeadGCIoU, {batch_size} KITTI frames, {positives} positives, {torch.get_num_threads()} threads")
    print("| region (forward + backward) | median ms | min ms |")
    print("|---|---|---|")
    for name, times in rows.items():
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} |")
    for base in ("host L1, stock", "ours, host L1"):
        added = [ours - host for ours, host in zip(rows["ours, host L1 + GCIoU"], rows[base])]
        print(f"| GCIoU term = (ours, host L1 + GCIoU) - ({base}), per step | {statistics.median(added):.2f} | |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", type=Path, required=True, help="KITTI-layout root (training/, ImageSets/)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not torch.cuda.is_available():
        from pcdet_gciou.openpcdet import cpu

        cpu.install()
    head, batch, weights = build_head(args.data_path, args.batch)

    def host_stock():
        host_regression(head, head.reg_loss_func.inner, weights).backward()

    def ours_host_l1():
        head.reg_loss_func.gathered.clear()
        host_regression(head, head.reg_loss_func, weights).backward()

    def ours_with_gciou():
        head.reg_loss_func.gathered.clear()
        head._positives_cache = None
        total = host_regression(head, head.reg_loss_func, weights)
        terms, _ = head.iou_terms()
        for term in terms:
            total = total + term
        total.backward()

    decoded = {}

    def loss_alone():
        boxes = decoded["pred"].clone().requires_grad_()
        head.iou_loss_func(boxes, decoded["target"]).sum().backward()

    terms = {
        "host L1, stock": host_stock,
        "ours, host L1": ours_host_l1,
        "ours, host L1 + GCIoU": ours_with_gciou,
        "GCIoU loss alone": loss_alone,
    }
    rows = {name: [] for name in terms}
    for step in range(args.steps):
        head({**batch, "gt_boxes": batch["gt_boxes"].clone()})
        # the head's outputs become leaves: the timings cover the loss terms, not the backward through the convs
        head.forward_ret_dict["pred_dicts"] = [
            {name: value.detach().requires_grad_() for name, value in pred_dict.items()}
            for pred_dict in head.forward_ret_dict["pred_dicts"]
        ]
        leaves = [value for pred_dict in head.forward_ret_dict["pred_dicts"] for value in pred_dict.values()]
        with torch.no_grad():
            decoded.update(pred=torch.cat([p.pred for p in head.positives()]))
            decoded.update(target=torch.cat([p.target for p in head.positives()]))
        names = list(terms)
        for name in names[step % len(names) :] + names[: step % len(names)]:
            rows[name].append(timed(terms[name], leaves))
    report(rows, args.batch, sum(p.pred.shape[0] for p in head.positives()))


if __name__ == "__main__":
    main()

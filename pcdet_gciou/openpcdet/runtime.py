"""The OpenPCDet-touching half of ``tools/train.py`` and ``tools/test.py``.

Everything here imports ``pcdet`` lazily; :func:`import_pcdet` must run first (it installs the CPU layer when asked
and registers our heads). The model-agnostic loop, checkpoints and logging live in :mod:`pcdet_gciou.training`.
"""

from __future__ import annotations

import copy
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
import tqdm

__all__ = ["build_dataset", "build_model", "import_pcdet", "make_train_step", "predict", "evaluate_kitti"]


def import_pcdet(cpu: bool) -> None:
    """Install the CPU compatibility layer when ``cpu`` (before pcdet is imported), then register our heads."""
    if cpu:
        from .cpu import install

        install()
    elif not torch.cuda.is_available():
        raise RuntimeError(
            "no CUDA device is visible; pass --cpu to run OpenPCDet through the CPU compatibility "
            "layer (for smoke tests only: a KITTI epoch takes hours on CPU)"
        )
    from . import register

    register()


def build_dataset(cfg: Mapping, *, training: bool, batch_size: int, workers: int, logger: logging.Logger | None = None):
    """``(dataset, loader)`` from ``pcdet.datasets.build_dataloader`` (single process, no sampler).

    Training loaders are rebuilt from ``dataset`` by :func:`pcdet_gciou.training.make_epoch_loader`, whose seeded
    sampler (DDP-aware) makes mid-epoch resume exact; the returned loader serves evaluation.
    """
    from pcdet.datasets import build_dataloader

    dataset, loader, _ = build_dataloader(
        dataset_cfg=cfg["DATA_CONFIG"],
        class_names=list(cfg["CLASS_NAMES"]),
        batch_size=batch_size,
        dist=False,
        workers=workers,
        logger=logger,
        training=training,
    )
    if len(dataset) == 0:
        split = cfg["DATA_CONFIG"]["DATA_SPLIT"]["train" if training else "test"]
        raise ValueError(
            f"the {split!r} split of {cfg['DATA_CONFIG'].get('DATA_PATH')} holds no frames; "
            f"run tools/prepare_kitti.py on that folder first"
        )
    return dataset, loader


def build_model(cfg: Mapping, dataset, device: torch.device) -> torch.nn.Module:
    """``pcdet.models.build_network`` for ``cfg.MODEL`` on ``device``."""
    from pcdet.models import build_network

    model = build_network(model_cfg=cfg["MODEL"], num_class=len(cfg["CLASS_NAMES"]), dataset=dataset)
    return model.to(device)


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def make_train_step():
    """``(model, batch) -> (loss, scalars)`` built on ``pcdet.models.model_fn_decorator`` (which moves the batch to
    the device, runs the detector and bumps its ``global_step``); scalars are the detector's ``tb_dict``, plus
    ``rpn_iou_pos`` (:func:`~pcdet_gciou.openpcdet.anchor_ops.mean_positive_iou`) for heads that do not log it."""
    from pcdet.models import model_fn_decorator

    from .anchor_ops import mean_positive_iou

    model_fn = model_fn_decorator()

    def train_step(model, batch):
        loss, tb_dict, _ = model_fn(model, batch)
        scalars = {key: _as_float(value) for key, value in tb_dict.items()}
        if "rpn_iou_pos" not in scalars:  # stock anchor heads: log it too, so baseline and GCIoU curves compare
            dense_head = getattr(getattr(model, "module", model), "dense_head", None)
            scalars["rpn_iou_pos"] = None if dense_head is None else mean_positive_iou(dense_head)
        return loss, {key: value for key, value in scalars.items() if value is not None}

    return train_step


@torch.no_grad()
def predict(model: torch.nn.Module, loader, cfg: Mapping, *, progress: bool = True):
    """Run the detector over ``loader``; returns ``(det_annos, recall)`` like OpenPCDet's ``eval_one_epoch``.

    ``recall`` maps ``recall/roi_<t>`` and ``recall/rcnn_<t>`` (thresholds ``RECALL_THRESH_LIST``) to the fraction
    of ground-truth boxes recalled.
    """
    from pcdet.models import load_data_to_gpu

    dataset = loader.dataset
    thresholds = list(cfg["MODEL"]["POST_PROCESSING"]["RECALL_THRESH_LIST"])
    hits = {f"recall/{stage}_{t}": 0.0 for t in thresholds for stage in ("roi", "rcnn")}
    gt_count = 0
    det_annos = []
    was_training = model.training
    model.eval()
    for batch in tqdm.tqdm(loader, desc="eval", dynamic_ncols=True, disable=not progress, leave=False):
        load_data_to_gpu(batch)
        pred_dicts, ret_dict = model(batch)
        for t in thresholds:
            hits[f"recall/roi_{t}"] += ret_dict.get(f"roi_{t}", 0)
            hits[f"recall/rcnn_{t}"] += ret_dict.get(f"rcnn_{t}", 0)
        gt_count += ret_dict.get("gt", 0)
        det_annos += dataset.generate_prediction_dicts(batch, pred_dicts, dataset.class_names, output_path=None)
    model.train(was_training)
    recall = {key: float(value) / max(gt_count, 1) for key, value in hits.items()}
    return det_annos, recall


def evaluate_kitti(model: torch.nn.Module, loader, cfg: Mapping, result_dir: str | Path, *, progress: bool = True):
    """Detections -> ``result_dir/result.pkl`` and KITTI AP rows at R11 and R40.

    Returns:
        ``(rows, recall, text)`` with rows from :func:`pcdet_gciou.openpcdet.kitti_eval.kitti_ap_rows`.
    """
    from .kitti_eval import kitti_ap_rows

    dataset = loader.dataset
    infos = getattr(dataset, "kitti_infos", None)
    if infos is None:
        raise ValueError(f"{type(dataset).__name__} is not a KITTI dataset; tools/test.py evaluates KITTI only")
    det_annos, recall = predict(model, loader, cfg, progress=progress)
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    with open(result_dir / "result.pkl", "wb") as handle:
        pickle.dump(det_annos, handle)
    if not infos or "annos" not in infos[0]:
        raise ValueError(
            f"the {cfg['DATA_CONFIG']['DATA_SPLIT']['test']!r} infos have no labels, so no AP can be "
            f"computed (detections were saved to {result_dir / 'result.pkl'})"
        )
    gt_annos = [copy.deepcopy(info["annos"]) for info in infos]
    text, rows = kitti_ap_rows(gt_annos, det_annos, dataset.class_names)
    return rows, recall, text

"""OpenPCDet at run time: import it for a device, build datasets and models, train steps, prediction, evaluation.

Everything here imports ``pcdet`` lazily; :func:`import_pcdet` must run first (it installs the portable op layer and
registers our heads). The host-agnostic loop, checkpoints and logging live in :mod:`pcdet_gciou.training`; the tools
are wired in :mod:`pcdet_gciou.openpcdet.app`.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import tqdm

from .app.errors import UsageError

__all__ = [
    "require_device",
    "batch_to_device",
    "build_dataset",
    "build_model",
    "evaluate",
    "import_pcdet",
    "make_train_step",
    "predict",
]

#: batch entries that stay on the host (OpenPCDet's ``load_data_to_gpu`` leaves the same ones alone)
HOST_KEYS = frozenset({"frame_id", "metadata", "calib", "image_paths", "ori_shape", "img_process_infos"})


def require_device(cpu: bool) -> None:
    """Without ``cpu`` a CUDA device must be visible (UsageError otherwise): ``--cpu`` is never implied."""
    if not cpu and not torch.cuda.is_available():
        raise UsageError(
            "no CUDA device is visible; pass --cpu to run OpenPCDet on CPU through the portable op layer "
            "(smoke tests: a KITTI epoch takes hours on CPU)"
        )


def import_pcdet(cpu: bool) -> torch.device:
    """Make OpenPCDet importable for this run, register our heads and return the device to run on.

    ``cpu``: the portable op layer on CPU, even where CUDA exists. Otherwise CUDA is required; on a CUDA machine the
    layer stands in for compiled extensions that are not built.

    Raises:
        UsageError: no CUDA without ``cpu``, or OpenPCDet (or a module it needs) is not importable.
    """
    require_device(cpu)
    from . import cpu as portable

    portable.install(device="cpu" if cpu else "cuda")
    try:
        import pcdet.datasets  # noqa: F401
        import pcdet.models  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if missing.split(".")[0] == "pcdet":
            raise UsageError(
                f"OpenPCDet is not importable (no module {missing!r}); get it with: python -m pcdet_gciou.openpcdet.get"
            ) from exc
        raise UsageError(
            f"OpenPCDet needs the module {missing!r}, which is not installed; install it (pip install ...) and see "
            f"docs/INSTALL.md"
        ) from exc
    from . import register

    register()
    return torch.device("cpu" if cpu else "cuda")


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
        raise UsageError(
            f"the {split!r} split of {cfg['DATA_CONFIG']['DATA_PATH']} holds no frames; "
            f"run python tools/prepare_kitti.py --data_path {cfg['DATA_CONFIG']['DATA_PATH']} first"
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


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """Move a collated OpenPCDet batch to ``device`` in place, as ``pcdet.models.load_data_to_gpu`` does for CUDA:
    numpy arrays become float tensors (``image_shape`` int, ``images`` channels-first), host-side entries
    (:data:`HOST_KEYS`) stay as they are. Works on any device, so ``--cpu`` never goes through ``.cuda()``."""
    for key, value in batch.items():
        if key == "camera_imgs" and isinstance(value, torch.Tensor):
            batch[key] = value.to(device)
        elif key in HOST_KEYS or not isinstance(value, np.ndarray):
            continue
        elif key == "images":
            batch[key] = torch.from_numpy(value).permute(0, 3, 1, 2).float().to(device).contiguous()
        elif key == "image_shape":
            batch[key] = torch.from_numpy(value).int().to(device)
        else:
            batch[key] = torch.from_numpy(value).float().to(device)
    return batch


def make_train_step(device: torch.device):
    """``(model, batch) -> (loss, scalars)``: batch to ``device``, forward, mean loss, and the detector's
    ``global_step`` bumped, as OpenPCDet's ``model_fn_decorator``; scalars are the detector's ``tb_dict``, plus
    ``rpn_iou_pos`` (:func:`~pcdet_gciou.openpcdet.anchor_ops.mean_positive_iou`) for heads that do not log it."""
    from .anchor_ops import mean_positive_iou

    def train_step(model, batch):
        batch_to_device(batch, device)
        ret_dict, tb_dict, _ = model(batch)
        loss = ret_dict["loss"].mean()
        detector = getattr(model, "module", model)
        detector.update_global_step()
        scalars = {key: _as_float(value) for key, value in tb_dict.items()}
        if "rpn_iou_pos" not in scalars:  # stock anchor heads: log it too, so baseline and GCIoU curves compare
            dense_head = getattr(detector, "dense_head", None)
            scalars["rpn_iou_pos"] = None if dense_head is None else mean_positive_iou(dense_head)
        return loss, {key: value for key, value in scalars.items() if value is not None}

    return train_step


@torch.no_grad()
def predict(model: torch.nn.Module, loader, cfg: Mapping, device: torch.device, *, progress: bool = True):
    """Run the detector over ``loader``; returns ``(det_annos, recall)`` like OpenPCDet's ``eval_one_epoch``.

    ``recall`` maps ``recall/roi_<t>`` and ``recall/rcnn_<t>`` (thresholds ``RECALL_THRESH_LIST``) to the fraction
    of ground-truth boxes recalled.
    """
    dataset = loader.dataset
    thresholds = list(cfg["MODEL"]["POST_PROCESSING"]["RECALL_THRESH_LIST"])
    hits = {f"recall/{stage}_{t}": 0.0 for t in thresholds for stage in ("roi", "rcnn")}
    gt_count = 0
    det_annos = []
    was_training = model.training
    model.eval()
    for batch in tqdm.tqdm(loader, desc="eval", dynamic_ncols=True, disable=not progress, leave=False):
        pred_dicts, ret_dict = model(batch_to_device(batch, device))
        for t in thresholds:
            hits[f"recall/roi_{t}"] += ret_dict.get(f"roi_{t}", 0)
            hits[f"recall/rcnn_{t}"] += ret_dict.get(f"rcnn_{t}", 0)
        gt_count += ret_dict.get("gt", 0)
        det_annos += dataset.generate_prediction_dicts(batch, pred_dicts, dataset.class_names, output_path=None)
    model.train(was_training)
    recall = {key: float(value) / max(gt_count, 1) for key, value in hits.items()}
    return det_annos, recall


def evaluate(
    model: torch.nn.Module, loader, cfg: Mapping, result_dir: str | Path, device: torch.device, *, progress=True
):
    """Detections -> ``result_dir/result.pkl``, then the dataset's evaluation
    (:func:`~pcdet_gciou.openpcdet.evaluation.evaluate_detections`: KITTI R11 + R40 rows, or OpenPCDet's own
    Waymo/nuScenes evaluation).

    Returns:
        ``(results, recall, text)``: ``results`` is a list of AP rows (KITTI) or the dataset's metric dict.
    """
    from .evaluation import evaluate_detections

    det_annos, recall = predict(model, loader, cfg, device, progress=progress)
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    with open(result_dir / "result.pkl", "wb") as handle:
        pickle.dump(det_annos, handle)
    metric = cfg["MODEL"]["POST_PROCESSING"].get("EVAL_METRIC")
    text, results = evaluate_detections(
        loader.dataset, det_annos, list(cfg["CLASS_NAMES"]), result_dir, eval_metric=metric
    )
    return results, recall, text

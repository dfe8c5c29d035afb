"""One entry point for evaluating detections on KITTI, Waymo and nuScenes datasets.

KITTI goes through our R11 + R40 reduction of the official evaluator
(:func:`pcdet_gciou.openpcdet.kitti_eval.kitti_ap_rows`). Waymo and nuScenes go through OpenPCDet's own,
documented ``dataset.evaluation(det_annos, class_names, eval_metric=..., output_path=...)``; their metric
packages are optional, so a missing one is named in a one-line error before any work is done.

Example:
    >>> from pcdet_gciou.openpcdet.evaluation import required_package
    >>> required_package("NuScenesDataset", "kitti")
    ('nuscenes', 'nuscenes-devkit')
    >>> required_package("WaymoDataset", "kitti") is None  # Waymo's KITTI-style metric needs no extra package
    True
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["DATASET_METRICS", "required_package", "evaluate_detections"]

#: dataset class name -> (allowed eval metrics, default metric: OpenPCDet's stock POST_PROCESSING.EVAL_METRIC)
DATASET_METRICS = {
    "KittiDataset": (("kitti",), "kitti"),
    "WaymoDataset": (("waymo", "kitti"), "waymo"),
    "NuScenesDataset": (("kitti",), "kitti"),  # nuScenes ignores the metric name: it always runs the nuScenes eval
}

#: (dataset, metric) -> (module to import, pip package that provides it)
_PACKAGES = {
    ("WaymoDataset", "waymo"): ("waymo_open_dataset", "waymo-open-dataset"),
    ("NuScenesDataset", "kitti"): ("nuscenes", "nuscenes-devkit"),
}


def required_package(dataset_name: str, eval_metric: str) -> Optional[tuple[str, str]]:
    """``(module, pip package)`` that evaluating ``dataset_name`` with ``eval_metric`` imports, or None."""
    return _PACKAGES.get((dataset_name, eval_metric))


def _check_package(dataset_name: str, eval_metric: str) -> None:
    needed = required_package(dataset_name, eval_metric)
    if needed is not None and importlib.util.find_spec(needed[0]) is None:
        raise RuntimeError(
            f"{dataset_name} evaluation ({eval_metric!r} metric) needs the {needed[1]!r} package "
            f"(module {needed[0]!r}), which is not installed: pip install {needed[1]}"
        )


def _kitti_rows(dataset, det_annos: Sequence[dict], class_names: Sequence[str]):
    from .kitti_eval import kitti_ap_rows

    infos = dataset.kitti_infos
    if not infos or "annos" not in infos[0]:
        raise ValueError("the KITTI infos of this split have no labels, so no AP can be computed")
    gt_annos = [copy.deepcopy(info["annos"]) for info in infos]
    return kitti_ap_rows(gt_annos, det_annos, class_names)


def evaluate_detections(
    dataset,
    det_annos: Sequence[dict],
    class_names: Sequence[str],
    output_dir: str | Path,
    *,
    eval_metric: Optional[str] = None,
):
    """Evaluate ``det_annos`` (from ``dataset.generate_prediction_dicts``) on ``dataset``'s split.

    Args:
        dataset: an OpenPCDet ``KittiDataset``, ``WaymoDataset`` or ``NuScenesDataset``.
        det_annos: per-frame detections in the dataset's frame order.
        class_names: the model's class names.
        output_dir: where the dataset's evaluation may write files (nuScenes writes its result JSON there).
        eval_metric: ``MODEL.POST_PROCESSING.EVAL_METRIC``; None takes the dataset's stock default.

    Returns:
        ``(text, results)``. KITTI: ``results`` is the row list of
        :func:`~pcdet_gciou.openpcdet.kitti_eval.kitti_ap_rows` (R11 and R40). Waymo/nuScenes: the metric dict
        that OpenPCDet's ``dataset.evaluation`` returns.

    Raises:
        ValueError: a dataset type other than the three above, a metric it does not support, or unlabelled
            KITTI infos.
        RuntimeError: the dataset's evaluation package (waymo-open-dataset, nuscenes-devkit) is not installed.
    """
    name = type(dataset).__name__
    if name not in DATASET_METRICS:
        raise ValueError(f"cannot evaluate a {name}; expected one of {sorted(DATASET_METRICS)}")
    allowed, default = DATASET_METRICS[name]
    metric = default if eval_metric is None else eval_metric
    if metric not in allowed:
        raise ValueError(f"{name} evaluation metric must be one of {list(allowed)}, got {metric!r}")
    if name == "KittiDataset":
        return _kitti_rows(dataset, det_annos, class_names)
    _check_package(name, metric)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return dataset.evaluation(list(det_annos), list(class_names), eval_metric=metric, output_path=str(output_dir))

"""KITTI AP at both R11 and R40 from OpenPCDet's official evaluator.

``KittiDataset.evaluation`` returns a dict with R40 values only (its R11 entries are commented out), while the
GCIoU paper reports R11. We call the same evaluator, ``get_official_eval_result(..., PR_detail_dict=d)``, which
fills ``d[metric]`` with the interpolated precision curves ``(num_class, 3 difficulties, 2 overlap sets, 41)``, and
reduce them with the evaluator's own ``get_mAP`` (11 recall points 0, 0.1, ..., 1) and ``get_mAP_R40`` (40 points
1/40, ..., 1). We report the first (strict) overlap set: Car 0.7, Pedestrian and Cyclist 0.5 for bbox/bev/3d,
the official KITTI setting.

On a machine without CUDA, ``pcdet_gciou.openpcdet.cpu.install()`` must run first: the evaluator's rotated IoU is a
numba.cuda kernel, which the CPU layer replaces with ours.
"""

from __future__ import annotations

import copy
from typing import Sequence

__all__ = ["EVAL_CLASSES", "DIFFICULTIES", "kitti_ap_rows"]

EVAL_CLASSES = ("Car", "Pedestrian", "Cyclist")
DIFFICULTIES = ("easy", "moderate", "hard")
#: our metric name -> PR_detail_dict key of the evaluator
_METRICS = {"bbox": "bbox", "bev": "bev", "3d": "3d", "aos": "aos"}
_STRICT_OVERLAP = 0


def kitti_ap_rows(gt_annos: Sequence[dict], det_annos: Sequence[dict], class_names: Sequence[str]):
    """AP rows for every evaluated class x metric x difficulty x {R11, R40}.

    Args:
        gt_annos: per-frame KITTI ground-truth annos (``info["annos"]`` of the val infos).
        det_annos: per-frame detections from ``dataset.generate_prediction_dicts``, same frame order.
        class_names: the model's classes; those in Car/Pedestrian/Cyclist are evaluated.

    Returns:
        ``(result_text, rows)``; each row is a dict with ``class``, ``metric`` (3d/bev/bbox/aos), ``difficulty``,
        ``recall`` (R11/R40) and ``ap`` in percent. ``aos`` rows are present only when the detections carry a valid
        ``alpha``, as in the official evaluator.
    """
    if len(gt_annos) != len(det_annos):
        raise ValueError(f"need one detection anno per ground-truth frame, got {len(det_annos)} for {len(gt_annos)}")
    classes = [name for name in class_names if name in EVAL_CLASSES]
    if not classes:
        raise ValueError(f"no KITTI evaluation class among {list(class_names)}; expected some of {EVAL_CLASSES}")
    from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval

    curves: dict = {}
    text, _ = kitti_eval.get_official_eval_result(
        copy.deepcopy(list(gt_annos)), copy.deepcopy(list(det_annos)), classes, PR_detail_dict=curves
    )
    rows = []
    for metric, key in _METRICS.items():
        if key not in curves:
            continue
        reductions = {"R11": kitti_eval.get_mAP(curves[key]), "R40": kitti_eval.get_mAP_R40(curves[key])}
        for recall, ap in reductions.items():
            for class_index, name in enumerate(classes):
                for difficulty_index, difficulty in enumerate(DIFFICULTIES):
                    rows.append(
                        {
                            "class": name,
                            "metric": metric,
                            "difficulty": difficulty,
                            "recall": recall,
                            "ap": float(ap[class_index, difficulty_index, _STRICT_OVERLAP]),
                        }
                    )
    return text, rows

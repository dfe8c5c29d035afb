"""The evaluation dispatch: KITTI through our R11/R40 rows, Waymo/nuScenes through OpenPCDet with clear errors."""

from __future__ import annotations

import importlib.util

import pytest

from pcdet_gciou.openpcdet import evaluation
from pcdet_gciou.openpcdet.evaluation import evaluate_detections, required_package


def _stub(name, **attrs):
    return type(name, (), attrs)()


def test_unknown_dataset_and_metric_are_named():
    with pytest.raises(ValueError, match="LyftDataset"):
        evaluate_detections(_stub("LyftDataset"), [], ["car"], "/tmp")
    with pytest.raises(ValueError, match="'waymo'"):
        evaluate_detections(_stub("NuScenesDataset"), [], ["car"], "/tmp", eval_metric="waymo")


@pytest.mark.parametrize(
    "dataset, metric, package",
    [("NuScenesDataset", None, "nuscenes-devkit"), ("WaymoDataset", None, "waymo-open-dataset")],
)
def test_missing_evaluation_package_is_one_clear_error(dataset, metric, package, monkeypatch, tmp_path):
    calls = []
    stub = _stub(dataset, evaluation=lambda self, *a, **k: calls.append((a, k)))
    real_find_spec = importlib.util.find_spec
    module = required_package(dataset, evaluation.DATASET_METRICS[dataset][1])[0]
    monkeypatch.setattr(
        evaluation.importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name, *a)
    )
    with pytest.raises(RuntimeError, match=package) as info:
        evaluate_detections(stub, [], ["car"], tmp_path, eval_metric=metric)
    assert "\n" not in str(info.value) and calls == []


def test_waymo_and_nuscenes_call_the_dataset_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation.importlib.util, "find_spec", lambda name, *a: object())
    seen = {}

    def fake_evaluation(self, det_annos, class_names, **kwargs):
        seen.update(kwargs, det_annos=det_annos, class_names=class_names)
        return "text", {"AP": 0.5}

    waymo = _stub("WaymoDataset", evaluation=fake_evaluation)
    out = tmp_path / "eval"
    assert evaluate_detections(waymo, [{"name": []}], ("Vehicle",), out) == ("text", {"AP": 0.5})
    assert seen == {
        "eval_metric": "waymo",
        "output_path": str(out),
        "det_annos": [{"name": []}],
        "class_names": ["Vehicle"],
    }
    assert out.is_dir()
    # Waymo's KITTI-style metric needs no extra package
    assert required_package("WaymoDataset", "kitti") is None


def test_unlabelled_kitti_infos_raise():
    with pytest.raises(ValueError, match="no labels"):
        evaluate_detections(_stub("KittiDataset", kitti_infos=[{"point_cloud": {}}]), [{}], ["Car"], "/tmp")

"""test.py's config comparison (model, loss and data only) and its dataset-evaluation dispatch checks (no pcdet)."""

import logging

import pytest
import torch

from pcdet_gciou.config import AttrDict
from pcdet_gciou.openpcdet.app.errors import UsageError
from pcdet_gciou.openpcdet.app.evaluate import _check_evaluation_package, _eval_epoch, _load_for_evaluation

CFG = {
    "CLASS_NAMES": ["Car"],
    "DATA_CONFIG": {"DATASET": "KittiDataset", "DATA_PATH": "/data/a", "POINT_CLOUD_RANGE": [0, -40, -3, 70.4, 40, 1]},
    "MODEL": {"NAME": "PointPillar", "DENSE_HEAD": {"LOSS_CONFIG": {"REG_LOSS": "gciou"}}, "POST_PROCESSING": {}},
    "OPTIMIZATION": {"BATCH_SIZE_PER_GPU": 4, "NUM_EPOCHS": 80, "LR": 0.003},
}


def _saved(tmp_path, config):
    path = tmp_path / "checkpoint_epoch_3.pth"
    torch.save({"model_state": {}, "config": config}, path)
    return path


def _warnings(caplog, path, current):
    logger = logging.getLogger("h2-test")
    with caplog.at_level(logging.WARNING, logger="h2-test"):
        _load_for_evaluation(path, current, logger)
    return [r.getMessage() for r in caplog.records if r.name == "h2-test"]


def test_run_options_are_not_differences(tmp_path, caplog):
    trained = {**CFG, "OPTIMIZATION": {"BATCH_SIZE_PER_GPU": 2, "NUM_EPOCHS": 1, "LR": 0.003}}
    moved = {**CFG, "DATA_CONFIG": {**CFG["DATA_CONFIG"], "DATA_PATH": "/elsewhere"}}
    assert _warnings(caplog, _saved(tmp_path, trained), AttrDict(moved)) == []


def test_model_loss_and_data_differences_are_reported(tmp_path, caplog):
    other = {**CFG, "MODEL": {**CFG["MODEL"], "DENSE_HEAD": {"LOSS_CONFIG": {"REG_LOSS": "diou"}}}}
    other["DATA_CONFIG"] = {**CFG["DATA_CONFIG"], "POINT_CLOUD_RANGE": [0, -20, -3, 35.2, 20, 1]}
    (message,) = _warnings(caplog, _saved(tmp_path, other), AttrDict(CFG))
    assert "MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS: checkpoint='diou' current='gciou'" in message
    assert "DATA_CONFIG.POINT_CLOUD_RANGE" in message and "OPTIMIZATION" not in message


def test_eval_epoch_of_iteration_checkpoints(tmp_path):
    assert _eval_epoch(tmp_path / "checkpoint_epoch_4.pth", {}) == 4
    assert _eval_epoch(tmp_path / "checkpoint_iter_5.pth", {"global_iter": 5, "iters_per_epoch": 3}) == 2


def test_missing_dataset_evaluation_package_is_named():
    nuscenes = AttrDict({**CFG, "DATA_CONFIG": {"DATASET": "NuScenesDataset"}})
    nuscenes.MODEL.POST_PROCESSING = {"EVAL_METRIC": "kitti"}
    import importlib.util

    if importlib.util.find_spec("nuscenes") is not None:
        pytest.skip("nuscenes-devkit is installed here")
    with pytest.raises(UsageError, match=r"NuScenesDataset evaluation .* needs the 'nuscenes-devkit' package"):
        _check_evaluation_package(nuscenes)
    with pytest.raises(UsageError, match="cannot evaluate a LyftDataset"):
        _check_evaluation_package(AttrDict({**CFG, "DATA_CONFIG": {"DATASET": "LyftDataset"}}))
    _check_evaluation_package(AttrDict(CFG))  # KITTI needs nothing extra

"""Every known failure of the tools ends in ONE stderr line naming cause and fix, with exit code 2 (fixable before
the run) or 1 (during the run); --debug adds the traceback; an unknown exception keeps its traceback.

The tools run as subprocesses, exactly as a user starts them. All but one fail before OpenPCDet is imported, so they
need no pcdet; the GT-sampler case builds the dataset and is pcdet-marked."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PP = str(REPO / "cfgs" / "kitti_models" / "pointpillar_gciou.yaml")
NO_GT = ["--set", "DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST", "['gt_sampling']"]


def _tool(name, *args, python_prefix=None):
    command = [sys.executable, *(python_prefix or []), str(REPO / "tools" / f"{name}.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _assert_one_line(result, code, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-4000:]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def tree(tmp_path):
    """A KITTI-layout folder with split lists and one-frame info files: enough for every check before OpenPCDet."""
    root = tmp_path / "kitti"
    (root / "ImageSets").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "ImageSets" / f"{split}.txt").write_text("000000\n")
        (root / f"kitti_infos_{split}.pkl").write_bytes(pickle.dumps([{"point_cloud": {"lidar_idx": "000000"}}]))
    return root


def _train(tree, tmp_path, *extra, sets=NO_GT):
    common = ["--cfg_file", PP, "--cpu", "--data_path", str(tree), "--output_dir", str(tmp_path / "out")]
    return _tool("train", *common, *extra, *sets)


def test_config_not_found_and_debug_traceback(tmp_path):
    result = _tool("train", "--cfg_file", str(tmp_path / "nope.yaml"), "--cpu")
    _assert_one_line(result, 2, "config file", "nope.yaml not found", "--cfg_file")
    debug = _tool("train", "--cfg_file", str(tmp_path / "nope.yaml"), "--cpu", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("train.py: error: config file")


def test_usage_error_is_one_line():
    _assert_one_line(_tool("test", "--cfg_file", PP), 2, "one of the arguments --ckpt --eval_all is required", "--help")


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST", "['gt_sampling'"], "is not a valid YAML list or mapping"),
        (["OPTIMIZATION.LR", "fast"], "OPTIMIZATION.LR: expected a float"),
        (["OPTIMIZATION.LRR", "0.1"], "no key 'LRR' under OPTIMIZATION"),
    ],
)
def test_set_values_that_do_not_parse(tree, tmp_path, sets, fragment):
    _assert_one_line(_train(tree, tmp_path, sets=["--set", *sets]), 2, fragment)


def test_unknown_hook_is_refused_before_the_run(tree, tmp_path):
    cfg = tmp_path / "hooked.yaml"
    cfg.write_text(f"_BASE_CONFIG_: {PP}\nHOOK:\n    EarlyStopHook: {{PATIENCE: 3}}\n")
    common = ["--cfg_file", str(cfg), "--cpu", "--data_path", str(tree), "--output_dir", str(tmp_path / "out")]
    _assert_one_line(_tool("train", *common, *NO_GT), 2, "unknown hook HOOK.EarlyStopHook", "DisableAugmentationHook")


def test_missing_or_empty_data_path_and_split(tmp_path):
    _assert_one_line(_train(tmp_path / "nowhere", tmp_path), 2, "nowhere does not exist", "--data_path")
    (tmp_path / "empty").mkdir()
    _assert_one_line(_train(tmp_path / "empty", tmp_path), 2, "empty is empty", "--data_path")
    (tmp_path / "other" / "training").mkdir(parents=True)
    _assert_one_line(_train(tmp_path / "other", tmp_path), 2, "ImageSets/train.txt is missing", "KITTI-layout")
    (tmp_path / "other" / "ImageSets").mkdir()
    (tmp_path / "other" / "ImageSets" / "train.txt").write_text("\n")
    _assert_one_line(_train(tmp_path / "other", tmp_path), 2, "ImageSets/train.txt is empty")


def test_infos_not_prepared_names_prepare_tool(tree, tmp_path):
    (tree / "kitti_infos_train.pkl").unlink()
    _assert_one_line(_train(tree, tmp_path), 2, "infos not prepared", "kitti_infos_train.pkl", "tools/prepare_kitti.py")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "cannot be read (EOFError"),
        (pickle.dumps([{"frame": 1}])[:-3], "cannot be read"),
        (b"\x80\x04garbage", "cannot be read"),
        (pickle.dumps({"Car": []}), "holds a dict, not the list"),
        (pickle.dumps([]), "hold no frame"),
    ],
)
def test_corrupt_or_empty_infos_name_the_file_and_prepare(tree, tmp_path, content, fragment):
    (tree / "kitti_infos_train.pkl").write_bytes(content)
    _assert_one_line(_train(tree, tmp_path), 2, "kitti_infos_train.pkl", fragment, "tools/prepare_kitti.py")


def test_gt_sampling_without_gt_database(tree, tmp_path):
    line = _assert_one_line(_train(tree, tmp_path, sets=[]), 2, "kitti_dbinfos_train.pkl, which is missing")
    assert "tools/prepare_kitti.py" in line and "DISABLE_AUG_LIST" in line
    (tree / "kitti_dbinfos_train.pkl").write_bytes(b"\x80\x04truncated")
    _assert_one_line(_train(tree, tmp_path, sets=[]), 2, "kitti_dbinfos_train.pkl cannot be read", "corrupt")
    (tree / "kitti_dbinfos_train.pkl").write_bytes(pickle.dumps({"Car": []}))
    _assert_one_line(_train(tree, tmp_path, sets=[]), 2, "USE_ROAD_PLANE", "planes", "DISABLE_AUG_LIST")


def test_corrupt_and_foreign_checkpoints(tree, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02not a pickle at all")
    _assert_one_line(_train(tree, tmp_path, "--ckpt", str(garbage)), 2, "garbage.pth cannot be read", "corrupt")
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": {}}, foreign)
    test = _tool("test", "--cfg_file", PP, "--cpu", "--data_path", str(tree), "--ckpt", str(foreign))
    _assert_one_line(test, 2, "foreign.pth is not a training checkpoint")
    _assert_one_line(_train(tree, tmp_path, "--ckpt", str(tmp_path / "gone.pth")), 2, "checkpoint not found")
    stale = tmp_path / "stale.pth"
    torch.save({"model_state": {}, "config": {"OPTIMIZATION": {"LR": 1.0}}}, stale)
    _assert_one_line(_train(tree, tmp_path, "--ckpt", str(stale)), 2, "refusing to resume", "--extra_tag")


def test_eval_all_without_checkpoints(tree, tmp_path):
    out = ["--output_dir", str(tmp_path / "out")]
    (tmp_path / "out" / "pointpillar_gciou" / "default" / "ckpt").mkdir(parents=True)
    result = _tool("test", "--cfg_file", PP, "--cpu", "--data_path", str(tree), "--eval_all", *out)
    _assert_one_line(result, 2, "no checkpoint to evaluate", "train first")


def test_openpcdet_not_importable_names_the_get_command(tree, tmp_path):
    hide = ["-c", "import runpy, sys; sys.path[:] = [p for p in sys.path if 'openpcdet' not in p]; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"]  # fmt: skip
    result = _tool("train", "--cfg_file", PP, "--cpu", "--data_path", str(tree), *NO_GT, python_prefix=hide)
    _assert_one_line(result, 2, "OpenPCDet is not importable", "python -m pcdet_gciou.openpcdet.get")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_no_cuda_without_cpu_flag(tree, tmp_path):
    result = _tool("train", "--cfg_file", PP, "--data_path", str(tree), *NO_GT)
    _assert_one_line(result, 2, "no CUDA device", "--cpu")
    _assert_one_line(_tool("prepare_kitti", "--data_path", str(tree)), 2, "no CUDA device", "--cpu")


def test_run_tool_exit_codes_in_process(capsys):
    from pcdet_gciou.openpcdet.app.errors import run_tool

    def nan_loss(argv):
        raise FloatingPointError("non-finite loss nan at iteration 3 (epoch 1); loss terms: {}")

    assert run_tool(nan_loss, [], prog="train.py") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss" in err[0] and "lower OPTIMIZATION.LR" in err[0]

    def bug(argv):
        raise RuntimeError("an unexpected bug")

    with pytest.raises(RuntimeError, match="unexpected bug"):  # unknown: propagates with its traceback
        run_tool(bug, [], prog="train.py")


@pytest.mark.pcdet
def test_gt_sampler_class_without_boxes(kitti_mini_dir, tmp_path):
    """On the real mini frames the database's only Cyclist has difficulty -1, which PREPARE filters out. The road
    plane folder exists (empty): the sampler is checked when the dataset is built, before any plane is read."""
    root = tmp_path / "kitti"
    (root / "training" / "planes").mkdir(parents=True)
    for name in ("ImageSets", "testing"):
        (root / name).symlink_to(kitti_mini_dir / name, target_is_directory=True)
    for sub in ("velodyne", "calib", "label_2", "image_2"):
        (root / "training" / sub).symlink_to(kitti_mini_dir / "training" / sub, target_is_directory=True)
    prepare = _tool("prepare_kitti", "--data_path", str(root), "--cpu", "--workers", "1")
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    _assert_one_line(
        _train(root, tmp_path, "--workers", "0", sets=[]),
        2,
        "GT sampling draws ['Cyclist']",
        "no usable box",
        "DISABLE",
    )


def test_several_info_files_are_empty_only_all_together(tree):
    from pcdet_gciou.openpcdet.app.checks import check_data_files
    from pcdet_gciou.openpcdet.app.errors import UsageError

    (tree / "empty.pkl").write_bytes(pickle.dumps([]))
    data = {"DATA_PATH": str(tree), "DATASET": "KittiDataset", "DATA_SPLIT": {"test": "val"}}
    check_data_files(
        {"DATA_CONFIG": {**data, "INFO_PATH": {"test": ["kitti_infos_val.pkl", "empty.pkl"]}}}, training=False
    )
    with pytest.raises(UsageError, match="empty.pkl hold no frame"):
        check_data_files({"DATA_CONFIG": {**data, "INFO_PATH": {"test": ["empty.pkl"]}}}, training=False)

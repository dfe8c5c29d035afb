"""End to end on real KITTI frames (CPU): prepare -> train -> interrupt/resume -> eval_all, for the GCIoU configs.

The pcdet-marked tests skip without an importable OpenPCDet. They run few iterations on a reduced point-cloud range
(a quarter of the BEV grid) to stay within a few minutes on two cores; they check plumbing, not AP values.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcdet_gciou.openpcdet.prepare import check_kitti_layout
from pcdet_gciou.training import ConfigMismatchError, onecycle_reference_lr, read_metrics

REPO = Path(__file__).resolve().parents[1]
# gt sampling is off: kitti_mini has no road planes and its only train Cyclist has difficulty -1.
NO_GT_SAMPLING = ["DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST", "['gt_sampling']"]
SMALL_RANGE = {
    "pointpillar_gciou": "[0, -19.84, -3, 34.56, 19.84, 1]",  # 216 x 248 pillars
    "second_gciou": "[0, -20, -3, 35.2, 20, 1]",  # 704 x 800 x 41 voxels
}
CLASSES = ("Car", "Pedestrian", "Cyclist")


def _common(cfg_name, tree, out):
    return [
        "--cfg_file",
        str(REPO / "cfgs" / "kitti_models" / f"{cfg_name}.yaml"),
        "--cpu",
        "--workers",
        "0",
        "--data_path",
        str(tree),
        "--output_dir",
        str(out),
        "--no_progress",
    ]


def _sets(cfg_name, *extra):
    return ["--set", *NO_GT_SAMPLING, "DATA_CONFIG.POINT_CLOUD_RANGE", SMALL_RANGE[cfg_name], *extra]


def test_layout_check_names_missing_paths(tmp_path, kitti_mini_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_kitti_layout(tmp_path / "nowhere")
    root = tmp_path / "kitti"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=r"ImageSets/train\.txt"):
        check_kitti_layout(root)
    (root / "ImageSets").symlink_to(kitti_mini_dir / "ImageSets")
    with pytest.raises(FileNotFoundError, match=r"training/velodyne; expected KITTI training/velodyne/<id>\.bin"):
        check_kitti_layout(root)
    (root / "training").mkdir()
    for sub in ("velodyne", "calib", "image_2"):
        (root / "training" / sub).symlink_to(kitti_mini_dir / "training" / sub)
    (root / "training" / "label_2").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no .*label_2/<id>\.txt, first: .*label_2/\d{6}\.txt"):
        check_kitti_layout(root)
    assert check_kitti_layout(kitti_mini_dir) == {"train": 5, "val": 3, "test": 2}


@pytest.fixture(scope="module")
def pipeline(kitti_mini_tree, tmp_path_factory):
    from pcdet_gciou.openpcdet.app import prepare_kitti_main, test_main, train_main

    out = tmp_path_factory.mktemp("output")
    prepare_kitti_main(["--data_path", str(kitti_mini_tree), "--workers", "1", "--cpu"])
    train = _common("pointpillar_gciou", kitti_mini_tree, out) + ["--batch_size", "2", "--epochs", "2"]
    first = train_main(train + ["--max_iters", "2"] + _sets("pointpillar_gciou"))
    run_dir = first["run_dir"]
    after_first = {
        "state": first,
        "ckpts": sorted(p.name for p in (run_dir / "ckpt").iterdir()),
        "metrics": read_metrics(run_dir / "metrics.csv"),
    }
    # --eval_interval 2: the in-training evaluation covers epoch 2 only, so --eval_all below must add epoch 1 alone
    resumed = train_main(
        train
        + ["--ckpt", str(run_dir / "ckpt" / "checkpoint_iter_2.pth"), "--eval_interval", "2"]
        + _sets("pointpillar_gciou")
    )
    eval_during_training = {r["checkpoint"] for r in _eval_rows(run_dir)}
    evaluation = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "test.py"),
            *_common("pointpillar_gciou", kitti_mini_tree, out),
            "--batch_size",
            "2",
            "--eval_all",
            *_sets("pointpillar_gciou"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluation.returncode == 0, evaluation.stdout[-3000:] + evaluation.stderr[-3000:]
    second = train_main(
        _common("second_gciou", kitti_mini_tree, out)
        + ["--batch_size", "1", "--epochs", "1", "--max_iters", "1"]
        + _sets("second_gciou")
    )
    second_eval = test_main(
        _common("second_gciou", kitti_mini_tree, out)
        + ["--batch_size", "2", "--ckpt", str(second["run_dir"] / "ckpt" / "checkpoint_iter_1.pth")]
        + _sets("second_gciou")
    )
    return {
        "tree": kitti_mini_tree,
        "out": out,
        "first": after_first,
        "resumed": resumed,
        "run_dir": run_dir,
        "eval_log": evaluation.stdout + evaluation.stderr,
        "eval_during_training": eval_during_training,
        "second": second,
        "second_eval": second_eval,
    }


def _eval_rows(run_dir):
    with open(run_dir / "eval_results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.pcdet
@pytest.mark.slow
def test_prepare_writes_infos_into_the_tree(pipeline):
    tree = pipeline["tree"]
    for name in ("kitti_infos_train.pkl", "kitti_infos_val.pkl", "kitti_infos_test.pkl", "kitti_dbinfos_train.pkl"):
        assert (tree / name).is_file(), name
    assert any((tree / "gt_database").iterdir())


@pytest.mark.pcdet
@pytest.mark.slow
def test_interrupted_run_resumes_iterations_and_lr(pipeline):
    first = pipeline["first"]
    assert (first["state"]["epoch"], first["state"]["global_iter"]) == (0, 2)
    assert first["ckpts"] == ["checkpoint_iter_2.pth"]  # --max_iters ends the run with a checkpoint
    assert sorted({r["step"] for r in first["metrics"]}) == [1, 2]

    resumed = pipeline["resumed"]
    assert (resumed["epoch"], resumed["global_iter"]) == (2, 6)  # 5 frames at batch 2: 3 iterations per epoch
    run_dir = pipeline["run_dir"]
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == [
        "checkpoint_epoch_1.pth",
        "checkpoint_epoch_2.pth",
        "checkpoint_iter_2.pth",
    ]
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["step"] for r in rows if r["tag"] == "train/loss"] == [1, 2, 3, 4, 5, 6]
    lrs = [r["value"] for r in rows if r["tag"] == "train/lr"]
    assert lrs == pytest.approx([onecycle_reference_lr(i, 6, 0.003, 10.0, 0.4) for i in range(6)], rel=1e-9)
    tags = {r["tag"] for r in rows}
    assert {
        "train/rpn_loss_cls",
        "train/rpn_loss_loc",
        "train/rpn_loss_dir",
        "train/rpn_iou_pos",
        "train/grad_norm",
    } <= tags
    assert all(r["value"] == r["value"] for r in rows)  # no NaN logged
    assert (run_dir / "config.yaml").is_file() and any((run_dir / "tensorboard").iterdir())
    assert len(list(run_dir.glob("log_train_*.txt"))) >= 1


@pytest.mark.pcdet
@pytest.mark.slow
def test_eval_all_writes_r11_and_r40_for_every_class(pipeline):
    run_dir = pipeline["run_dir"]
    rows = _eval_rows(run_dir)
    assert {r["checkpoint"] for r in rows} == {
        "checkpoint_epoch_1.pth",
        "checkpoint_epoch_2.pth",
        "checkpoint_iter_2.pth",
    }
    for epoch in ("1", "2"):
        for cls in CLASSES:
            for metric in ("3d", "bev", "bbox"):
                for recall in ("R11", "R40"):
                    found = {
                        r["difficulty"]
                        for r in rows
                        if (r["epoch"], r["class"], r["metric"], r["recall"]) == (epoch, cls, metric, recall)
                    }
                    assert found == {"easy", "moderate", "hard"}, (epoch, cls, metric, recall)
    assert all(0.0 <= float(r["ap"]) <= 100.0 for r in rows)
    assert pipeline["eval_during_training"] == {"checkpoint_epoch_2.pth"}
    assert "evaluation of checkpoint_epoch_1.pth" in pipeline["eval_log"]
    assert "evaluation of checkpoint_epoch_2.pth" not in pipeline["eval_log"]  # skipped: already evaluated
    assert any((run_dir / "tensorboard" / "eval").iterdir())
    assert (run_dir / "eval" / "epoch_1" / "val" / "result.pkl").is_file()
    assert (run_dir / "eval" / "epoch_2" / "val" / "result.pkl").is_file()


@pytest.mark.pcdet
@pytest.mark.slow
def test_eval_all_skips_evaluated_checkpoints(pipeline):
    from pcdet_gciou.openpcdet.app import test_main

    before = _eval_rows(pipeline["run_dir"])
    again = test_main(
        _common("pointpillar_gciou", pipeline["tree"], pipeline["out"]) + ["--eval_all", *_sets("pointpillar_gciou")]
    )
    assert again["evaluated"] == []
    assert _eval_rows(pipeline["run_dir"]) == before


@pytest.mark.pcdet
@pytest.mark.slow
def test_resume_with_other_config_is_refused(pipeline):
    from pcdet_gciou.openpcdet.app import train_main

    argv = _common("pointpillar_gciou", pipeline["tree"], pipeline["out"]) + ["--batch_size", "2", "--epochs", "2"]
    with pytest.raises(
        ConfigMismatchError, match=r"refusing to resume .*OPTIMIZATION\.LR: checkpoint=0\.003 current=0\.01"
    ):
        train_main(argv + _sets("pointpillar_gciou", "OPTIMIZATION.LR", "0.01"))


@pytest.mark.pcdet
@pytest.mark.slow
def test_second_gciou_trains_and_evaluates(pipeline):
    assert pipeline["second"]["global_iter"] == 1
    run_dir = pipeline["second"]["run_dir"]
    rows = _eval_rows(run_dir)
    assert {(r["class"], r["recall"]) for r in rows} == {(c, r) for c in CLASSES for r in ("R11", "R40")}
    tags = {r["tag"] for r in read_metrics(run_dir / "metrics.csv")}
    assert {"train/rpn_loss_loc", "train/rpn_iou_pos", "train/lr"} <= tags


@pytest.mark.pcdet
@pytest.mark.slow
def test_r11_and_r40_reduce_the_official_curves(pipeline):
    """Perfect detections on the real val frames: with n ground truths of a class/difficulty, the evaluator's
    41-point precision curve is 1 at its first n points and 0 after, so R40 = (n - 1) / 40 and R11 = ceil(n / 4) / 11.
    n is recovered from the evaluator's own R40 dict, an independent path through its code."""
    import copy
    import math
    import pickle

    import numpy as np
    from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval

    from pcdet_gciou.openpcdet.kitti_eval import kitti_ap_rows

    with open(pipeline["tree"] / "kitti_infos_val.pkl", "rb") as handle:
        gt_annos = [info["annos"] for info in pickle.load(handle)]
    fields = ("name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y")
    det_annos = []
    for anno in gt_annos:
        keep = anno["name"] != "DontCare"
        det = {key: anno[key][keep] for key in fields}
        det["score"] = np.linspace(0.9, 0.5, int(keep.sum()))
        det_annos.append(det)
    _, rows = kitti_ap_rows(gt_annos, det_annos, list(CLASSES))
    _, official = kitti_eval.get_official_eval_result(copy.deepcopy(gt_annos), copy.deepcopy(det_annos), list(CLASSES))
    official_name = {"3d": "3d", "bev": "bev", "bbox": "image", "aos": "aos"}
    assert len(rows) == 3 * 4 * 3 * 2
    for row in rows:
        r40 = official[f"{row['class']}_{official_name[row['metric']]}/{row['difficulty']}_R40"]
        n = round(r40 * 40 / 100) + 1
        expected = r40 if row["recall"] == "R40" else math.ceil(n / 4) / 11 * 100
        assert row["ap"] == pytest.approx(expected), row
    car_moderate = {
        r["recall"]: r["ap"] for r in rows if (r["class"], r["metric"], r["difficulty"]) == ("Car", "3d", "moderate")
    }
    assert car_moderate == pytest.approx({"R11": 100 / 11, "R40": 7.5})  # 4 moderate Cars in mini-val


@pytest.mark.pcdet
@pytest.mark.slow
def test_torchrun_launcher_two_processes(pipeline, tmp_path):
    """``torchrun --nproc_per_node=2 tools/train.py --launcher pytorch`` (gloo on CPU): rank 0 alone writes files."""
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "tools" / "train.py"),
            "--launcher",
            "pytorch",
            *_common("pointpillar_gciou", pipeline["tree"], out),
            "--batch_size",
            "2",
            "--epochs",
            "1",
            "--max_iters",
            "2",
            *_sets("pointpillar_gciou"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = out / "pointpillar_gciou" / "default"
    assert "2 process(es), 1 frames per process" in result.stdout
    assert [p.name for p in (run_dir / "ckpt").iterdir()] == ["checkpoint_iter_2.pth"]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.csv") if r["tag"] == "train/loss"] == [1, 2]
    assert len(list(run_dir.glob("log_train_*.txt"))) == 1


@pytest.mark.pcdet
@pytest.mark.slow
def test_compare_curves_reads_real_runs(pipeline, tmp_path):
    # The analysis script on what train.py/test.py really wrote: both runs, every class, R11 and R40.
    from pcdet_gciou.analysis.curves import compare_runs

    runs, rows, text = compare_runs([pipeline["run_dir"], pipeline["second"]["run_dir"]], tmp_path / "compare")
    assert [run.label for run in runs] == ["pointpillar_gciou", "second_gciou"]
    pointpillar = {(r["class"], r["recall"]) for r in rows if r["run"] == "pointpillar_gciou"}
    assert pointpillar == {(c, recall) for c in CLASSES for recall in ("R11", "R40")}
    assert (tmp_path / "compare" / "losses.png").is_file() and (tmp_path / "compare" / "iou_pos.png").is_file()
    assert "pointpillar_gciou" in text and "second_gciou" in text


@pytest.mark.pcdet
@pytest.mark.slow
def test_train_honours_the_config_hook(pipeline, tmp_path):
    """A config with HOOK.DisableAugmentationHook: train.py switches the listed augmentation off for the last epoch."""
    from pcdet_gciou.openpcdet.app import train_main

    cfg = tmp_path / "pointpillar_hooked.yaml"
    cfg.write_text(
        f"_BASE_CONFIG_: {REPO / 'cfgs' / 'kitti_models' / 'pointpillar_gciou.yaml'}\n"
        "HOOK:\n    DisableAugmentationHook: {DISABLE_AUG_LIST: [random_world_flip], NUM_LAST_EPOCHS: 1}\n"
    )
    common = _common("pointpillar_gciou", pipeline["tree"], tmp_path / "out")
    common[1] = str(cfg)
    # 5 frames, batch 5: one iteration per epoch
    result = train_main(common + ["--batch_size", "5", "--epochs", "2"] + _sets("pointpillar_gciou"))
    assert result["global_iter"] == 2
    (log,) = result["run_dir"].glob("log_train_*.txt")
    lines = [line for line in log.read_text().splitlines() if "HOOK.DisableAugmentationHook" in line]
    assert len(lines) == 1 and "epoch 2: augmentations ['gt_sampling', 'random_world_flip'] off" in lines[0]

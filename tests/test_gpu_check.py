"""``scripts/gpu_check.sh`` and ``pcdet_gciou.openpcdet.gpu_check`` on CPU: arguments, refusals, a tiny CPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcdet_gciou.openpcdet import gpu_check

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
NO_GT_SAMPLING = ["DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST", "['gt_sampling']"]


def run_script(*args, cwd=None):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def kitti_layout(tmp_path):
    """An empty folder with the KITTI layout the script checks for."""
    (tmp_path / "kitti" / "training" / "velodyne").mkdir(parents=True)
    (tmp_path / "kitti" / "ImageSets").mkdir()
    return tmp_path / "kitti"


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_option():
    result = run_script("-h")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: scripts/gpu_check.sh")
    for option in ("--data DIR", "--openpcdet DIR", "--steps N", "--out DIR", "-h, --help"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--steps"], "--steps needs a value"),
        (["--steps", "0"], "--steps must be a positive integer, got '0'"),
        (["--steps", "ten"], "--steps must be a positive integer, got 'ten'"),
        (["--data", "/nonexistent/kitti"], "--data /nonexistent/kitti is not a KITTI-layout folder"),
    ],
)
def test_bad_arguments_end_in_one_line_and_exit_2(args, fragment):
    _assert_one_line_error(run_script(*args), fragment)


def test_openpcdet_dir_without_pcdet_is_refused(kitti_layout, tmp_path):
    result = run_script("--data", str(kitti_layout), "--openpcdet", str(tmp_path))
    _assert_one_line_error(result, "holds no pcdet/ package", "pcdet_gciou.openpcdet.get")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(kitti_layout, tmp_path):
    result = run_script("--data", str(kitti_layout), "--out", str(tmp_path / "out"))
    _assert_one_line_error(result, "no CUDA device is visible")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_python_helper_arguments():
    for bad in (["--steps", "0"], ["--warmup", "-1"], ["--device", "tpu"], []):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check._parse_args(["--cfg_file", "a.yaml", "--data_path", "d", *bad] if bad else bad)
        assert exit_info.value.code == 2
    args = gpu_check._parse_args(["--cfg_file", "a.yaml", "b.yaml", "--data_path", "d", "--set", "K", "V"])
    assert args.cfg_file == ["a.yaml", "b.yaml"] and args.set_cfgs == ["K", "V"] and args.steps == 50


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_python_helper_refuses_cuda_without_cuda(capsys):
    assert gpu_check.main(["--cfg_file", "a.yaml", "--data_path", "d"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device is visible" in err[0] and "--device cpu" in err[0]


class _Head(torch.nn.Module):
    """What box_loss_seconds uses of a dense head: forward_ret_dict and get_box_reg_layer_loss reading from it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.forward_ret_dict = {"box_preds": self.weight * 2.0, "box_reg_targets": torch.zeros(3)}
        self.grads_seen = []

    def get_box_reg_layer_loss(self):
        box_preds = self.forward_ret_dict["box_preds"]
        box_preds.register_hook(self.grads_seen.append)
        loss = (box_preds - self.forward_ret_dict["box_reg_targets"]).square().sum()
        return loss, {"rpn_loss_loc": float(loss)}


def test_box_loss_seconds_reruns_forward_and_backward_alone_and_restores_the_head():
    head = _Head()
    before = dict(head.forward_ret_dict)
    forward_s, backward_s = gpu_check.box_loss_seconds(head, torch.device("cpu"))
    assert forward_s > 0 and backward_s > 0
    assert len(head.grads_seen) == 1  # the backward did reach the head output ...
    torch.testing.assert_close(head.grads_seen[0], torch.full((3,), 4.0))  # d/dp p^2 at p = 2
    assert head.weight.grad is None  # ... and stopped there: the model's gradients are untouched
    assert all(head.forward_ret_dict[key] is value for key, value in before.items())


@pytest.mark.pcdet
@pytest.mark.slow
def test_cpu_run_of_pointpillar_gciou(kitti_mini_tree, tmp_path):
    prepare = [sys.executable, str(REPO / "tools" / "prepare_kitti.py"), "--data_path", str(kitti_mini_tree), "--cpu"]
    if not (kitti_mini_tree / "kitti_infos_train.pkl").exists():
        subprocess.run(prepare, check=True, capture_output=True, timeout=300)
    out = tmp_path / "gpu_check.json"
    cfg = str(REPO / "cfgs" / "kitti_models" / "pointpillar_gciou.yaml")
    argv = ["--cfg_file", cfg, "--data_path", str(kitti_mini_tree), "--device", "cpu", "--steps", "1"]
    argv += ["--warmup", "0", "--batch_size", "1", "--json", str(out), "--set", *NO_GT_SAMPLING]
    assert gpu_check.main(argv) == 0
    results = json.loads(out.read_text())
    assert [Path(r["cfg_file"]).name for r in results] == ["pointpillar_gciou.yaml"]
    for result in results:
        assert result["device"] == "cpu" and result["peak_memory_bytes"] is None
        assert result["step_s_mean"] > 0 and 0 < result["box_loss_share"] < 1
        assert result["box_loss_backward_s_mean"] > 0
        assert "% of the step" in gpu_check.summary_line(result)

"""``cpu.install()``: its report, its device modes, and ``pcdet.version`` for unbuilt trees.

The CUDA mode is exercised on any machine in a subprocess that reports CUDA as available and imports a small
pcdet-shaped tree where one extension is "built" (a module stands in for the ``.so``) and another is not.
"""

from __future__ import annotations

import importlib.machinery
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pcdet_gciou.openpcdet import cpu
from pcdet_gciou.openpcdet.cpu import pointnet2_stack, version_module


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_install_is_idempotent_and_reports_every_portable_op():
    report = cpu.install()
    assert cpu.install() is report and cpu.installed_report() is report
    assert cpu.install(report.device) is report
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert report.device == expected_device and report.noop_cuda_calls == (expected_device == "cpu")
    portable = set(report.portable_ops)
    if expected_device == "cpu":
        assert {f"pcdet.ops.iou3d_nms.iou3d_nms_utils.{name}" for name in ("nms_gpu", "boxes_iou3d_gpu")} <= portable
        assert "pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils.points_in_boxes_gpu" in portable
        stack = "pcdet.ops.pointnet2.pointnet2_stack.pointnet2_utils"
        assert {f"{stack}.{name}" for name in pointnet2_stack.PATCHES} <= portable
    assert "pcdet.datasets.kitti.kitti_object_eval_python.rotate_iou.rotate_iou_gpu_eval" in portable
    text = str(report)
    assert f"device {expected_device!r}" in text and "nms_gpu" in text.splitlines()[1]


def test_install_rejects_bad_devices():
    with pytest.raises(ValueError, match="device must be None, 'cpu' or 'cuda', got 'mps'"):
        cpu.install("mps")
    for bad in (3, "garbage"):
        with pytest.raises(ValueError, match="device must be None"):
            cpu.install(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False"):
            cpu.install("cuda")


def _fake_pcdet_tree(root: Path) -> Path:
    """pcdet with iou3d_nms "built" (a module in place of the .so) and roiaware_pool3d not built."""
    files = {
        "setup.py": "version = '9.9.9+%s' % get_git_commit_number()\n",
        "pcdet/__init__.py": "from .version import __version__\n",
        "pcdet/ops/__init__.py": "",
        "pcdet/ops/iou3d_nms/__init__.py": "",
        "pcdet/ops/iou3d_nms/iou3d_nms_cuda.py": "def nms_gpu(*args):\n    return 'compiled nms'\n",
        "pcdet/ops/iou3d_nms/iou3d_nms_utils.py": (
            "from . import iou3d_nms_cuda\n\ndef nms_gpu(*args):\n    return iou3d_nms_cuda.nms_gpu(*args)\n"
        ),
        "pcdet/ops/roiaware_pool3d/__init__.py": "",
        "pcdet/ops/roiaware_pool3d/roiaware_pool3d_utils.py": (
            "from . import roiaware_pool3d_cuda\n\n"
            "def points_in_boxes_gpu(points, boxes):\n"
            "    return roiaware_pool3d_cuda.points_in_boxes_gpu(points, boxes)\n"
        ),
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_cuda_mode_keeps_built_extensions_and_fills_in_the_rest(tmp_path):
    tree = _fake_pcdet_tree(tmp_path / "tree")
    result = _run_python(
        f"""
        import sys, torch
        torch.cuda.is_available = lambda: True  # a CUDA machine without compiled OpenPCDet extensions
        sys.path.insert(0, {str(tree)!r})
        cuda_before = torch.Tensor.cuda
        from pcdet_gciou.openpcdet import cpu
        from pcdet_gciou.openpcdet.cpu import box_ops
        report = cpu.install()
        import pcdet
        from pcdet.ops.iou3d_nms import iou3d_nms_utils
        from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils
        print(report.device, report.built_extensions, report.noop_cuda_calls, torch.Tensor.cuda is cuda_before)
        print(iou3d_nms_utils.nms_gpu(), roiaware_pool3d_utils.points_in_boxes_gpu is box_ops.points_in_boxes_gpu)
        print(pcdet.__version__, [op for op in report.portable_ops if 'iou3d_nms_utils' in op])
        try:
            cpu.install('cpu')
        except ValueError as exc:
            print(exc)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "cuda ('pcdet.ops.iou3d_nms.iou3d_nms_cuda',) False True",
        "compiled nms True",
        "9.9.9+unbuilt []",
        "the portable layer is already installed for device 'cuda'; call uninstall() before install(device='cpu')",
    ]


def test_cpu_mode_uses_portable_ops_even_where_an_extension_is_built(tmp_path):
    tree = _fake_pcdet_tree(tmp_path / "tree")
    result = _run_python(
        f"""
        import sys, torch
        sys.path.insert(0, {str(tree)!r})
        from pcdet_gciou.openpcdet import cpu
        from pcdet_gciou.openpcdet.cpu import box_ops
        report = cpu.install('cpu')
        from pcdet.ops.iou3d_nms import iou3d_nms_utils
        print(report.device, report.noop_cuda_calls, iou3d_nms_utils.nms_gpu is box_ops.nms_gpu)
        tensor = torch.ones(1)
        print(tensor.cuda() is tensor)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["cpu True True", "True"]


def _git_tree(root: Path, head: str, packed: str = "") -> Path:
    (root / ".git" / "refs" / "heads").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text(head)
    if packed:
        (root / ".git" / "packed-refs").write_text(packed)
    (root / "setup.py").write_text("    version = '0.6.0+%s' % get_git_commit_number()\n")
    return root / "pcdet"


def test_tree_version_reads_setup_py_and_the_git_head(tmp_path):
    sha = "8cacccec11db6f59bf6934600c9a175dae254806"
    detached = _git_tree(tmp_path / "detached", sha + "\n")
    assert version_module.tree_version(detached) == "0.6.0+8caccce"
    on_branch = _git_tree(tmp_path / "branch", "ref: refs/heads/master\n")
    (tmp_path / "branch" / ".git" / "refs" / "heads" / "master").write_text(sha.replace("8", "7") + "\n")
    assert version_module.tree_version(on_branch) == "0.6.0+7caccce"
    packed = _git_tree(tmp_path / "packed", "ref: refs/heads/main\n", f"# pack-refs\n{sha} refs/heads/main\n")
    assert version_module.tree_version(packed) == "0.6.0+8caccce"
    dangling = _git_tree(tmp_path / "dangling", "ref: refs/heads/gone\n")
    assert version_module.tree_version(dangling) == "0.6.0+unbuilt"
    (tmp_path / "bare" / "pcdet").mkdir(parents=True)
    assert version_module.tree_version(tmp_path / "bare" / "pcdet") == "0+unknown+unbuilt"


@pytest.mark.pcdet
def test_an_unbuilt_openpcdet_copy_without_version_py_imports_through_the_layer(tmp_path):
    spec = importlib.machinery.PathFinder.find_spec("pcdet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("no OpenPCDet source tree on sys.path to copy")
    source = Path(list(spec.submodule_search_locations)[0])
    shutil.copytree(
        source, tmp_path / "pcdet", ignore=shutil.ignore_patterns("version.py", "__pycache__", "*.so", "*.pyc")
    )
    if (source.parent / "setup.py").is_file():
        shutil.copy(source.parent / "setup.py", tmp_path / "setup.py")
    assert not (tmp_path / "pcdet" / "version.py").exists()
    result = _run_python(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from pcdet_gciou.openpcdet import cpu
        report = cpu.install()
        import pcdet, pcdet.datasets, pcdet.models, pcdet.version
        print(report.supplies_version, pcdet.__file__, pcdet.version.__version__, pcdet.__version__)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    supplied, module_file, version, package_version = result.stdout.split()
    assert supplied == "True" and module_file == str(tmp_path / "pcdet" / "__init__.py")
    base = "0.6.0" if (tmp_path / "setup.py").is_file() else "0+unknown"
    assert version == f"{base}+unbuilt"
    assert package_version.startswith(version)  # pcdet/__init__.py appends "+py<commit>" when it finds no .git

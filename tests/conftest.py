"""Shared pytest configuration: the ``gpu`` and ``pcdet`` markers and the real-KITTI fixtures."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PCDET_GCIOU_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@functools.lru_cache(maxsize=1)
def pcdet_import_error() -> str | None:
    """Why OpenPCDet cannot be imported here, or None when it can.

    The portable op layer is installed first, as the tools do: on CPU it runs everything; on a CUDA machine it
    keeps the compiled extensions that are built and stands in only for the missing ones, so an unbuilt
    OpenPCDet tree (``python -m pcdet_gciou.openpcdet.get``) is tested on a GPU as well.
    """
    try:
        from pcdet_gciou.openpcdet import cpu

        cpu.install()
        import pcdet.datasets  # noqa: F401
        import pcdet.models  # noqa: F401
    except Exception as exc:  # any import failure means "skip", with the reason shown
        return f"OpenPCDet (pcdet) is not importable: {type(exc).__name__}: {exc}"
    return None


def pytest_collection_modifyitems(config, items):
    cuda_skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(cuda_skip)
        if "pcdet" in item.keywords:
            reason = pcdet_import_error()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kitti_mini_dir() -> Path:
    path = SHARED_DATA / "kitti_mini"
    if not (path / "training" / "velodyne").is_dir():
        pytest.skip(f"real KITTI frames not found at {path} (expected ../shared/data/kitti_mini)")
    return path


@pytest.fixture(scope="session")
def kitti_mini_tree(kitti_mini_dir, tmp_path_factory) -> Path:
    """A writable dataset root whose ImageSets/training/testing are symlinks to the read-only frames."""
    root = tmp_path_factory.mktemp("kitti_mini")
    for name in ("ImageSets", "training", "testing"):
        (root / name).symlink_to(kitti_mini_dir / name, target_is_directory=True)
    return root

"""Machinery behind :func:`pcdet_gciou.openpcdet.cpu.install`: an import hook plus a few reversible patches."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Callable

import torch

from . import placeholders

# The seven compiled extensions that OpenPCDet's setup.py builds, by the names pcdet imports them under.
EXTENSION_MODULES = (
    "pcdet.ops.iou3d_nms.iou3d_nms_cuda",
    "pcdet.ops.roiaware_pool3d.roiaware_pool3d_cuda",
    "pcdet.ops.roipoint_pool3d.roipoint_pool3d_cuda",
    "pcdet.ops.pointnet2.pointnet2_stack.pointnet2_stack_cuda",
    "pcdet.ops.pointnet2.pointnet2_batch.pointnet2_batch_cuda",
    "pcdet.ops.bev_pool.bev_pool_ext",
    "pcdet.ops.ingroup_inds.ingroup_inds_cuda",
)
KITTI_ROTATE_IOU_MODULE = "pcdet.datasets.kitti.kitti_object_eval_python.rotate_iou"
ARGO2_DATASET_MODULE = "pcdet.datasets.argo2.argo2_dataset"
OPTIONAL_PACKAGES = ("torchvision", "av2")


def _cpu_op_patches() -> dict[str, dict[str, Callable]]:
    from . import box_ops, pointnet2_stack

    return {
        "pcdet.ops.iou3d_nms.iou3d_nms_utils": {
            name: getattr(box_ops, name)
            for name in (
                "boxes_bev_iou_cpu",
                "boxes_iou_bev",
                "boxes_iou3d_gpu",
                "boxes_aligned_iou3d_gpu",
                "paired_boxes_iou3d_gpu",
                "nms_gpu",
                "nms_normal_gpu",
            )
        },
        "pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils": {
            name: getattr(box_ops, name) for name in ("points_in_boxes_cpu", "points_in_boxes_gpu")
        },
        "pcdet.ops.pointnet2.pointnet2_stack.pointnet2_utils": pointnet2_stack.PATCHES,
    }


class _State:
    lock = threading.Lock()
    finder: _CpuFinder | None = None
    restore: list[Callable[[], None]] = []
    missing_packages: dict[str, str] = {}


def _set_attr(target, name: str, value) -> None:
    """setattr that remembers how to undo itself."""
    sentinel = object()
    original = target.__dict__.get(name, sentinel) if isinstance(target, type) else getattr(target, name, sentinel)

    def undo():
        if original is sentinel:
            delattr(target, name)
        else:
            setattr(target, name, original)

    setattr(target, name, value)
    _State.restore.append(undo)


def _patch_module(module: types.ModuleType, patches: dict[str, Callable]) -> None:
    for name, replacement in patches.items():
        if hasattr(module, name) and getattr(module, name) is not replacement:
            _set_attr(module, name, replacement)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real module, then swaps in CPU functions (or a fallback module when the real one fails)."""

    def __init__(
        self,
        loader,
        after_exec: Callable[[types.ModuleType], None] | None = None,
        on_error: Callable[[types.ModuleType, BaseException], None] | None = None,
    ):
        self._loader = loader
        self._after_exec = after_exec
        self._on_error = on_error

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(module, exc)
            return
        if self._after_exec is not None:
            self._after_exec(module)


class _ModuleLoader(importlib.abc.Loader):
    """Serves a prepared module object."""

    def __init__(self, factory: Callable[[str], types.ModuleType]):
        self._factory = factory

    def create_module(self, spec):
        return self._factory(spec.name)

    def exec_module(self, module):
        return None


class _CpuFinder(importlib.abc.MetaPathFinder):
    def __init__(self, patches: dict[str, dict[str, Callable]]):
        self._patches = patches

    @staticmethod
    def _real_spec(fullname, path):
        return importlib.machinery.PathFinder.find_spec(fullname, path)

    def find_spec(self, fullname, path, target=None):
        root = fullname.partition(".")[0]
        if root in _State.missing_packages:
            reason = _State.missing_packages[root]
            return importlib.util.spec_from_loader(
                fullname, _ModuleLoader(lambda name: placeholders.PackagePlaceholder(name, reason)), is_package=True
            )
        if not fullname.startswith("pcdet."):
            return None
        if fullname in EXTENSION_MODULES:
            if self._real_spec(fullname, path) is not None:
                return None  # a built extension exists: let Python load it
            return importlib.util.spec_from_loader(fullname, _ModuleLoader(placeholders.ExtensionPlaceholder))
        if fullname == KITTI_ROTATE_IOU_MODULE:
            from . import kitti_rotate_iou

            return importlib.util.spec_from_loader(fullname, _ModuleLoader(lambda name: kitti_rotate_iou))
        if fullname in self._patches:
            spec = self._real_spec(fullname, path)
            if spec is None:
                return None
            patches = self._patches[fullname]
            spec.loader = _PatchingLoader(spec.loader, after_exec=lambda module: _patch_module(module, patches))
            return spec
        if fullname == ARGO2_DATASET_MODULE:
            spec = self._real_spec(fullname, path)
            if spec is None:
                return None
            spec.loader = _PatchingLoader(spec.loader, on_error=_replace_with_argo2_placeholder)
            return spec
        return None


def _replace_with_argo2_placeholder(module: types.ModuleType, exc: BaseException) -> None:
    fallback = placeholders.argo2_dataset_placeholder(module.__name__, f"{type(exc).__name__}: {exc}")
    module.__dict__.update({k: v for k, v in fallback.__dict__.items() if k not in ("__spec__", "__loader__")})


def _register_missing_packages() -> None:
    for package in OPTIONAL_PACKAGES:
        loaded = sys.modules.get(package)
        if isinstance(loaded, placeholders.PackagePlaceholder):  # from an earlier install()
            _State.missing_packages[package] = loaded._reason
            continue
        if loaded is not None:
            continue
        try:
            importlib.import_module(package)
        except Exception as exc:  # absent, or present but broken (torchvision's CUDA wheel on CPU torch)
            for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[name]
            _State.missing_packages[package] = f"{type(exc).__name__}: {exc}"


def _noop_tensor_cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
    return self


def _noop_module_cuda(self, device=None):
    return self


def _patch_cuda_calls() -> None:
    _set_attr(torch.Tensor, "cuda", _noop_tensor_cuda)
    _set_attr(torch.nn.Module, "cuda", _noop_module_cuda)


def _cpu_stream() -> int:
    return 0


def _patch_spconv_stream() -> None:
    """spconv 2.x asks torch for the CUDA stream before taking its CPU branch in backward (traveller59/spconv#366)."""
    try:
        import spconv.pytorch.cppcore as cppcore
        import spconv.pytorch.hash as spconv_hash
        import spconv.pytorch.ops as spconv_ops
    except ImportError:
        return
    for module in (cppcore, spconv_ops, spconv_hash):
        if hasattr(module, "get_current_stream"):
            _set_attr(module, "get_current_stream", _cpu_stream)


def install() -> None:
    with _State.lock:
        if _State.finder is not None:
            return
        patches = _cpu_op_patches()
        _register_missing_packages()
        if not torch.cuda.is_available():
            _patch_cuda_calls()
            _patch_spconv_stream()
        finder = _CpuFinder(patches)
        sys.meta_path.insert(0, finder)
        _State.finder = finder
        for name, module_patches in patches.items():  # pcdet imported before install(): patch in place
            if name in sys.modules:
                _patch_module(sys.modules[name], module_patches)


def uninstall() -> None:
    with _State.lock:
        if _State.finder is None:
            return
        sys.meta_path.remove(_State.finder)
        _State.finder = None
        while _State.restore:
            _State.restore.pop()()
        _State.missing_packages.clear()


def is_installed() -> bool:
    return _State.finder is not None

"""Machinery behind :func:`pcdet_gciou.openpcdet.cpu.install`: an import hook plus a few reversible patches."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Callable

import torch

from . import placeholders, version_module

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
VERSION_MODULE = "pcdet.version"
# The Python module whose functions the portable ops replace -> the extension those functions call. The wrapper
# module and its extension sit in the same package directory.
BACKING_EXTENSION = {
    "pcdet.ops.iou3d_nms.iou3d_nms_utils": "pcdet.ops.iou3d_nms.iou3d_nms_cuda",
    "pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils": "pcdet.ops.roiaware_pool3d.roiaware_pool3d_cuda",
    "pcdet.ops.pointnet2.pointnet2_stack.pointnet2_utils": "pcdet.ops.pointnet2.pointnet2_stack.pointnet2_stack_cuda",
}
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
    finder: _PortableFinder | None = None
    report: InstallReport | None = None
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


def _extension_is_built(extension: str, search_path) -> bool:
    """Whether a compiled ``extension`` module exists in ``search_path`` (its package's ``__path__``)."""
    return importlib.machinery.PathFinder.find_spec(extension, search_path) is not None


class _PortableFinder(importlib.abc.MetaPathFinder):
    def __init__(self, patches: dict[str, dict[str, Callable]], device: str):
        self._patches = patches
        self._device = device

    @staticmethod
    def _real_spec(fullname, path):
        return importlib.machinery.PathFinder.find_spec(fullname, path)

    def _uses_portable_ops(self, module_name: str, path) -> bool:
        # On CPU a built extension would still be a CUDA kernel; on CUDA it is the fast path, so keep it.
        return self._device == "cpu" or not _extension_is_built(BACKING_EXTENSION[module_name], path)

    def find_spec(self, fullname, path, target=None):
        root = fullname.partition(".")[0]
        if root in _State.missing_packages:
            reason = _State.missing_packages[root]
            return importlib.util.spec_from_loader(
                fullname, _ModuleLoader(lambda name: placeholders.PackagePlaceholder(name, reason)), is_package=True
            )
        if not fullname.startswith("pcdet."):
            return None
        if fullname == VERSION_MODULE:
            if path is None or self._real_spec(fullname, path) is not None:
                return None  # a version.py written by setup.py: use it
            package_dir = list(path)[0]
            return importlib.util.spec_from_loader(
                fullname, _ModuleLoader(lambda name: version_module.make_version_module(name, package_dir))
            )
        if fullname in EXTENSION_MODULES:
            if self._real_spec(fullname, path) is not None:
                return None  # a built extension exists: let Python load it
            return importlib.util.spec_from_loader(fullname, _ModuleLoader(placeholders.ExtensionPlaceholder))
        if fullname == KITTI_ROTATE_IOU_MODULE:
            from . import kitti_rotate_iou

            return importlib.util.spec_from_loader(fullname, _ModuleLoader(lambda name: kitti_rotate_iou))
        if fullname in self._patches and self._uses_portable_ops(fullname, path):
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


@dataclasses.dataclass(frozen=True)
class InstallReport:
    """What :func:`install` does on this machine; ``str(report)`` is a readable summary.

    Attributes:
        device: ``"cpu"`` (everything on CPU) or ``"cuda"`` (compiled extensions where built, portable ops elsewhere).
        pcdet_dir: the ``pcdet`` package directory found on ``sys.path`` at install time, or None.
        portable_ops: ``module.function`` names that the portable versions replace when ``pcdet`` imports them.
        built_extensions: compiled extensions found (used as they are unless ``device`` is ``"cpu"``).
        placeholder_extensions: extensions not built; calling one of their remaining ops raises NotImplementedError.
        supplies_version: whether ``pcdet.version`` is supplied (the tree has no ``version.py``).
        noop_cuda_calls: whether ``Tensor.cuda``/``Module.cuda`` return ``self`` and spconv's stream query is patched.
        placeholder_packages: optional third-party packages that failed to import -> why.
    """

    device: str
    pcdet_dir: str | None
    portable_ops: tuple[str, ...]
    built_extensions: tuple[str, ...]
    placeholder_extensions: tuple[str, ...]
    supplies_version: bool
    noop_cuda_calls: bool
    placeholder_packages: dict[str, str]

    def __str__(self) -> str:
        def short(names):
            return ", ".join(name.rpartition(".")[2] for name in names) or "none"

        by_module: dict[str, list[str]] = {}
        for name in self.portable_ops:
            module, _, function = name.rpartition(".")
            by_module.setdefault(module, []).append(function)
        lines = [f"pcdet_gciou portable layer, device {self.device!r}, pcdet at {self.pcdet_dir or '(not found yet)'}"]
        lines += [f"  portable {module}: {', '.join(functions)}" for module, functions in by_module.items()]
        lines += [
            f"  compiled extensions used: {short(self.built_extensions) if self.device == 'cuda' else 'none'}",
            f"  extensions not built (their other ops raise NotImplementedError): {short(self.placeholder_extensions)}",
            f"  pcdet.version: {'supplied by the layer' if self.supplies_version else 'from the tree'}",
            f"  .cuda() calls: {'no-ops (CPU run)' if self.noop_cuda_calls else 'unchanged'}",
        ]
        lines += [f"  placeholder package {name}: {reason}" for name, reason in self.placeholder_packages.items()]
        return "\n".join(lines)


def _pcdet_dir() -> Path | None:
    loaded = sys.modules.get("pcdet")
    locations = getattr(loaded, "__path__", None)
    if locations is None:
        spec = importlib.machinery.PathFinder.find_spec("pcdet")
        locations = None if spec is None else spec.submodule_search_locations
    return Path(list(locations)[0]) if locations else None


def _built_in(pcdet_dir: Path | None, module_name: str) -> bool:
    if pcdet_dir is None:
        return False
    package_dir = pcdet_dir.joinpath(*module_name.split(".")[1:-1])
    return _extension_is_built(module_name, [str(package_dir)])


def _make_report(device: str, patches: dict[str, dict[str, Callable]]) -> InstallReport:
    pcdet_dir = _pcdet_dir()
    built = tuple(name for name in EXTENSION_MODULES if _built_in(pcdet_dir, name))
    portable = [
        f"{module}.{name}"
        for module, module_patches in patches.items()
        if device == "cpu" or BACKING_EXTENSION[module] not in built
        for name in module_patches
    ]
    portable.append(f"{KITTI_ROTATE_IOU_MODULE}.rotate_iou_gpu_eval")
    has_version = pcdet_dir is not None and (pcdet_dir / "version.py").is_file()
    return InstallReport(
        device=device,
        pcdet_dir=None if pcdet_dir is None else str(pcdet_dir),
        portable_ops=tuple(portable),
        built_extensions=built,
        placeholder_extensions=tuple(name for name in EXTENSION_MODULES if name not in built),
        supplies_version=not has_version,
        noop_cuda_calls=device == "cpu",
        placeholder_packages=dict(_State.missing_packages),
    )


def _patch_loaded_modules(finder: _PortableFinder, patches: dict[str, dict[str, Callable]]) -> None:
    """pcdet was imported before install(): patch its op modules in place."""
    for name, module_patches in patches.items():
        module = sys.modules.get(name)
        if module is None:
            continue
        package = sys.modules.get(name.rpartition(".")[0])
        if finder._uses_portable_ops(name, getattr(package, "__path__", None)):
            _patch_module(module, module_patches)


def _resolve_device(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type if isinstance(device, (str, torch.device)) else None
    except RuntimeError:  # not a device string at all
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch.cuda.is_available() is False")
    return kind


def install(device: str | torch.device | None = None) -> InstallReport:
    """Install the portable layer (see the package docstring); call before ``pcdet`` is imported.

    Args:
        device: ``"cpu"`` runs OpenPCDet entirely on CPU, even where CUDA exists: every op with a portable version
            uses it and ``.cuda()`` becomes a no-op. ``"cuda"`` keeps the compiled extensions that are built and
            supplies portable ops only for those that are not. ``None``: the device of an active install, else
            ``"cuda"`` when CUDA is available, else ``"cpu"``.

    Returns:
        An :class:`InstallReport` saying which ops are replaced; the same one on repeated calls.

    Raises:
        ValueError: ``device`` is not cpu/cuda, is cuda without CUDA, or differs from an earlier, still active
            install (call :func:`uninstall` first).
    """
    with _State.lock:
        if _State.report is not None and device is None:
            return _State.report
        device = _resolve_device(device)
        if _State.report is not None:
            if _State.report.device != device:
                raise ValueError(
                    f"the portable layer is already installed for device {_State.report.device!r}; "
                    f"call uninstall() before install(device={device!r})"
                )
            return _State.report
        patches = _cpu_op_patches()
        _register_missing_packages()
        if device == "cpu":
            _patch_cuda_calls()
            _patch_spconv_stream()
        finder = _PortableFinder(patches, device)
        sys.meta_path.insert(0, finder)
        _State.finder = finder
        _patch_loaded_modules(finder, patches)
        _State.report = _make_report(device, patches)
        return _State.report


def uninstall() -> None:
    """Remove the import hook and undo the patches of :func:`install`."""
    with _State.lock:
        if _State.finder is None:
            return
        sys.meta_path.remove(_State.finder)
        _State.finder = None
        _State.report = None
        while _State.restore:
            _State.restore.pop()()
        _State.missing_packages.clear()


def is_installed() -> bool:
    return _State.finder is not None


def installed_report() -> InstallReport | None:
    """The report of the active :func:`install`, or None when the layer is not installed."""
    return _State.report

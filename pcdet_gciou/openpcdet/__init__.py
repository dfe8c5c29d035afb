"""OpenPCDet integration: GCIoU heads and their explicit registration.

Importing this package does **not** import ``pcdet``; :func:`register` does. Typical use, before
``pcdet.models.build_network``::

    from pcdet_gciou.openpcdet import register
    register()   # -> ['AnchorHeadSingleGCIoU', 'PVRCNNHeadGCIoU', 'CTBEVBackbone'] the first time, [] afterwards

On a machine without CUDA, call ``pcdet_gciou.openpcdet.cpu.install()`` before anything imports
``pcdet`` (tests and debugging only).

The head classes are also reachable as attributes (``pcdet_gciou.openpcdet.AnchorHeadSingleGCIoU``);
that access imports ``pcdet`` lazily but does not register anything.
"""

from __future__ import annotations

import importlib

__all__ = ["register", "registered_heads", "HEADS"]

#: name -> (OpenPCDet registry module, our module, class name)
HEADS = {
    "AnchorHeadSingleGCIoU": ("pcdet.models.dense_heads", "pcdet_gciou.openpcdet.dense_head"),
    "AnchorHeadMultiGCIoU": ("pcdet.models.dense_heads", "pcdet_gciou.openpcdet.dense_head"),
    "CenterHeadGCIoU": ("pcdet.models.dense_heads", "pcdet_gciou.openpcdet.center_head"),
    "VoxelNeXtHeadGCIoU": ("pcdet.models.dense_heads", "pcdet_gciou.openpcdet.center_head"),
    "TransFusionHeadGCIoU": ("pcdet.models.dense_heads", "pcdet_gciou.openpcdet.transfusion_head"),
    "PVRCNNHeadGCIoU": ("pcdet.models.roi_heads", "pcdet_gciou.openpcdet.roi_head"),
    "CTBEVBackbone": ("pcdet.models.backbones_2d", "pcdet_gciou.openpcdet.ct_bev_backbone"),
}


def _head_class(name: str) -> type:
    return getattr(importlib.import_module(HEADS[name][1]), name)


def registered_heads() -> dict[str, type]:
    """Our head classes (imports pcdet), without touching OpenPCDet's registries."""
    return {name: _head_class(name) for name in HEADS}


def register() -> list[str]:
    """Add our heads to OpenPCDet's ``__all__`` registries (``dense_heads``, ``roi_heads``).

    Explicit and idempotent; it never edits OpenPCDet's own classes.

    Returns:
        The names added by this call (empty when everything was already registered).

    Raises:
        ValueError: a registry already holds a *different* class under one of our names.
    """
    added = []
    pending = []
    for name, (registry_module, _) in HEADS.items():
        registry = importlib.import_module(registry_module).__all__
        cls = _head_class(name)
        existing = registry.get(name)
        if existing is None:
            pending.append((registry, name, cls))
        elif existing is not cls:
            raise ValueError(
                f"{registry_module}.__all__[{name!r}] already holds {existing.__module__}.{existing.__qualname__}; "
                f"refusing to replace it with {cls.__module__}.{cls.__qualname__}"
            )
    for registry, name, cls in pending:
        registry[name] = cls
        added.append(name)
    return added


def __getattr__(name: str):
    if name in HEADS:
        return _head_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Placeholder modules for imports that an unbuilt OpenPCDet tree cannot satisfy (extensions, optional packages)."""

from __future__ import annotations

import types

__all__ = ["ExtensionPlaceholder", "PackagePlaceholder", "MissingDependency", "argo2_dataset_placeholder"]


class _UnavailableOp:
    def __init__(self, qualified_name: str, hint: str):
        self._qualified_name = qualified_name
        self._hint = hint

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{self._qualified_name} is not available: {self._hint}")

    def __repr__(self) -> str:
        return f"<unavailable op {self._qualified_name}>"


class ExtensionPlaceholder(types.ModuleType):
    """Stands in for a compiled OpenPCDet extension; every attribute is an op that raises NotImplementedError.

    OpenPCDet's Python wrappers that have portable versions in :mod:`pcdet_gciou.openpcdet.cpu` never reach it.
    """

    def __init__(self, name: str):
        super().__init__(name, f"pcdet_gciou placeholder for the compiled extension {name} (not built)")
        self.__file__ = f"<pcdet_gciou placeholder {name}>"

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _UnavailableOp(
            f"{self.__name__}.{attr}",
            "it is a compiled OpenPCDet CUDA op, the extension is not built, and pcdet_gciou.openpcdet.cpu has no "
            "portable version of the Python function that calls it",
        )


class MissingDependency:
    """Attribute/call sink for a third-party package that is absent: using anything from it raises ImportError."""

    def __init__(self, qualified_name: str, reason: str):
        self._qualified_name = qualified_name
        self._reason = reason

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return MissingDependency(f"{self._qualified_name}.{attr}", self._reason)

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self._qualified_name} is unavailable: {self._reason}")

    def __repr__(self) -> str:
        return f"<missing {self._qualified_name}>"


class PackagePlaceholder(types.ModuleType):
    """Stands in for an unimportable package (``torchvision``, ``av2``): importable, unusable.

    Submodule imports resolve to further placeholders (see the finder in :mod:`._install`); any attribute is a
    :class:`MissingDependency` that raises ImportError when used.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(name, f"pcdet_gciou CPU placeholder for {name}: {reason}")
        self.__file__ = f"<pcdet_gciou placeholder {name}>"
        self.__path__ = []
        self._reason = reason

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return MissingDependency(f"{self.__name__}.{attr}", self._reason)


def argo2_dataset_placeholder(name: str, reason: str) -> types.ModuleType:
    """Module with an ``Argo2Dataset`` that raises on use, for ``pcdet.datasets.argo2.argo2_dataset``."""
    module = types.ModuleType(name, f"pcdet_gciou CPU placeholder for {name}: {reason}")
    module.__file__ = f"<pcdet_gciou placeholder {name}>"

    class Argo2Dataset:
        def __init__(self, *args, **kwargs):
            raise ImportError(f"Argo2Dataset is unavailable: {reason}")

    Argo2Dataset.__module__ = name
    module.Argo2Dataset = Argo2Dataset
    return module

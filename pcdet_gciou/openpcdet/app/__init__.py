"""The OpenPCDet application: the tools (train, test, prepare) wired from :mod:`pcdet_gciou.training` (the engine)
and :mod:`pcdet_gciou.openpcdet.runtime` (datasets, models, evaluation).

- :mod:`.args`: the shared command-line parser;
- :mod:`.run_config`: the run's config, loaded and parsed once;
- :mod:`.checks`: input checks before any model is built;
- :mod:`.errors`: one-line failures and exit codes (:func:`run_tool`);
- :mod:`.train`, :mod:`.evaluate`, :mod:`.prepare`: the tools' ``main`` functions.

Importing this package imports neither OpenPCDet nor the tools' modules; the names below load on first use.
"""

from __future__ import annotations

import importlib

__all__ = ["prepare_kitti_main", "run_tool", "test_main", "train_main"]

_WHERE = {"prepare_kitti_main": ".prepare", "run_tool": ".errors", "test_main": ".evaluate", "train_main": ".train"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)

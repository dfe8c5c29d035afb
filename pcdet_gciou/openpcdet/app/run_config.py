"""The run's config: loaded once, with ``--set`` and ``--data_path`` applied, and its typed sections parsed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...config import AttrDict, apply_set_args, load_config, override_data_path, project_root
from ...training import OptimizationOptions
from .errors import UsageError

__all__ = ["EVALUATED_SECTIONS", "load_run_config", "parse_optimization"]

#: what test.py compares between a checkpoint and the current config: the model (with its losses), the classes and
#: the data. Run options (batch size, epochs, workers, --max_iters) are not differences.
EVALUATED_SECTIONS = ("CLASS_NAMES", "DATA_CONFIG", "MODEL")


def load_run_config(args: argparse.Namespace) -> AttrDict:
    """``--cfg_file`` merged, then ``--set`` and ``--data_path``.

    Raises:
        UsageError: a config that is not found or does not parse, or an invalid ``--set``.
    """
    if not Path(args.cfg_file).expanduser().is_file():
        raise UsageError(
            f"config file {args.cfg_file} not found; pass --cfg_file with a config such as "
            f"{project_root() / 'cfgs' / 'kitti_models' / 'pointpillar_gciou.yaml'}"
        )
    try:
        cfg = load_config(args.cfg_file)
        apply_set_args(cfg, args.set_cfgs)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc
    if args.data_path is not None:
        override_data_path(cfg, args.data_path)
    return cfg


def parse_optimization(cfg: AttrDict) -> OptimizationOptions:
    """The typed ``OPTIMIZATION`` section; UsageError naming a bad or unknown key."""
    if "OPTIMIZATION" not in cfg:
        raise UsageError("the config has no OPTIMIZATION section; pass a model config as --cfg_file")
    try:
        return OptimizationOptions.parse(cfg["OPTIMIZATION"])
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc

"""The tools' command lines: one shared parser for the common flags, extended by each tool.

Every flag means the same in every tool: ``--cfg_file``, ``--data_path`` (replaces ``DATA_CONFIG.DATA_PATH``),
``--workers``, ``--cpu``, ``--debug`` and ``--set`` everywhere; ``--batch_size``, ``--extra_tag``, ``--output_dir``
and ``--no_progress`` in the tools that run a model (train, test).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["ToolParser", "base_parser", "add_model_run_arguments", "add_set_argument", "FIXED_SEED"]

FIXED_SEED = 666  # OpenPCDet's --fix_random_seed value


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (cause and ``--help``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def base_parser(description: str, *, cfg_default: str | None = None) -> ToolParser:
    """The flags every tool shares; ``--cfg_file`` is required unless ``cfg_default`` is given."""
    parser = ToolParser(description=description)
    parser.add_argument(
        "--cfg_file",
        required=cfg_default is None,
        default=cfg_default,
        help="config file, e.g. cfgs/kitti_models/second_gciou.yaml"
        + (f" (default: {cfg_default})" if cfg_default else ""),
    )
    parser.add_argument("--data_path", default=None, help="dataset root; replaces DATA_CONFIG.DATA_PATH of the config")
    parser.add_argument("--workers", type=int, default=4, help="worker processes for data loading and preparation")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="run OpenPCDet on CPU through pcdet_gciou's portable op layer, even where CUDA exists",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return parser


def add_model_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the tools that run a model (train, test)."""
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="total batch size over all processes (default: OPTIMIZATION.BATCH_SIZE_PER_GPU per process)",
    )
    parser.add_argument("--extra_tag", default="default", help="run name under <output_dir>/<cfg_tag>/")
    parser.add_argument("--output_dir", default=None, help="root of run directories (default: <repo>/output)")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bars (log lines only)")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY VALUE ...``, which must come last."""
    parser.add_argument(
        "--set",
        dest="set_cfgs",
        default=None,
        nargs=argparse.REMAINDER,
        help="override config keys: --set KEY.SUB VALUE ... (lists and mappings as YAML; must come last)",
    )

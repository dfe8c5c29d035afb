"""``tools/prepare_kitti.py``: check a KITTI folder and write OpenPCDet's infos and GT database into it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ...config import project_root
from .args import add_set_argument, base_parser
from .errors import UsageError
from .run_config import load_run_config

__all__ = ["parse_prepare_args", "prepare_kitti_main"]

DEFAULT_DATASET_CFG = project_root() / "cfgs" / "dataset_configs" / "kitti_dataset.yaml"


def parse_prepare_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = base_parser(
        "Check a KITTI folder (--data_path, default: the config's DATA_PATH) and build OpenPCDet's infos and GT "
        "database in it. --cfg_file may be a dataset config or a model config (its DATA_CONFIG is used).",
        cfg_default=str(DEFAULT_DATASET_CFG),
    )
    add_set_argument(parser)
    return parser.parse_args(argv)


def prepare_kitti_main(argv: Sequence[str] | None = None) -> list[Path]:
    """Entry point of ``tools/prepare_kitti.py``; returns the files and folders written."""
    from .. import prepare, runtime

    args = parse_prepare_args(argv)
    runtime.require_device(cpu=args.cpu)
    cfg = load_run_config(args)
    dataset_cfg = cfg["DATA_CONFIG"] if "DATA_CONFIG" in cfg else cfg
    class_names = list(cfg["CLASS_NAMES"]) if "CLASS_NAMES" in cfg else list(prepare.KITTI_CLASSES)
    root = Path(dataset_cfg["DATA_PATH"])
    try:
        counts = prepare.check_kitti_layout(root)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    print(f"KITTI layout OK at {root}: " + ", ".join(f"{k} {v} frames" for k, v in counts.items()))
    runtime.import_pcdet(cpu=args.cpu)
    outputs = prepare.prepare_kitti(dataset_cfg, root, class_names=class_names, workers=args.workers)
    print("wrote " + ", ".join(str(p) for p in outputs))
    return outputs

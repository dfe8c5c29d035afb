"""Input checks that run before a model is built, so a careless input ends in one line naming the fix.

File checks (:func:`check_data_files`) need no OpenPCDet; :func:`check_gt_sampler` inspects the dataset OpenPCDet
built (before the network is).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError

__all__ = ["DISABLE_GT_SAMPLING", "check_data_files", "check_gt_sampler", "gt_sampling_config"]

#: the ``--set`` pair that switches GT sampling off
DISABLE_GT_SAMPLING = "--set DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST \"['gt_sampling']\""


def gt_sampling_config(data_cfg: Mapping) -> Mapping | None:
    """The ``gt_sampling`` entry of ``DATA_AUGMENTOR`` when it is enabled, else None."""
    augmentor = data_cfg.get("DATA_AUGMENTOR") or {}  # OpenPCDet's schema: every key optional
    disabled = augmentor.get("DISABLE_AUG_LIST") or []
    for entry in augmentor.get("AUG_CONFIG_LIST") or []:
        if entry["NAME"] == "gt_sampling" and "gt_sampling" not in disabled:
            return entry
    return None


def _prepare_hint(root: Path) -> str:
    return f"run python tools/prepare_kitti.py --data_path {root} (add --cpu without CUDA)"


def _check_kitti(root: Path, data_cfg: Mapping, mode: str) -> None:
    split = data_cfg["DATA_SPLIT"][mode]
    split_file = root / "ImageSets" / f"{split}.txt"
    if not split_file.is_file() or not split_file.read_text().strip():
        state = "is empty" if split_file.is_file() else "is missing"
        raise UsageError(
            f"split list {split_file} {state}; --data_path must be a KITTI-layout folder (ImageSets/, training/)"
        )
    frames = 0
    for name in data_cfg["INFO_PATH"][mode]:
        if not (root / name).is_file():
            raise UsageError(f"infos not prepared: {root / name} is missing; {_prepare_hint(root)}")
        frames += len(_load_prepared(root / name, list, root))
    if not frames:  # OpenPCDet concatenates the listed files: only all of them empty is an error
        infos = ", ".join(str(root / name) for name in data_cfg["INFO_PATH"][mode])
        raise UsageError(f"infos {infos} hold no frame; {_prepare_hint(root)} again")


def _load_prepared(path: Path, kind: type, root: Path) -> Any:
    """The pickle ``prepare_kitti`` wrote at ``path``, which must hold a ``kind``; else one line naming the fix."""
    try:
        with path.open("rb") as handle:
            content = pickle.load(handle)
    except Exception as exc:  # truncated or not a pickle: pickle raises many types (EOFError, UnpicklingError, ...)
        raise UsageError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); it is corrupt: {_prepare_hint(root)} again"
        ) from exc
    if not isinstance(content, kind):
        raise UsageError(
            f"{path} holds a {type(content).__name__}, not the {kind.__name__} tools/prepare_kitti.py writes; "
            f"{_prepare_hint(root)} again"
        )
    return content


def _check_gt_database(root: Path, sampling: Mapping) -> None:
    for name in sampling["DB_INFO_PATH"]:
        if not (root / name).is_file():
            raise UsageError(
                f"GT sampling needs the GT database {root / name}, which is missing; {_prepare_hint(root)}, "
                f"or switch GT sampling off: {DISABLE_GT_SAMPLING}"
            )
        _load_prepared(root / name, dict, root)
    if sampling.get("USE_ROAD_PLANE"):
        planes = root / "training" / "planes"
        if not planes.is_dir():
            raise UsageError(
                f"GT sampling with USE_ROAD_PLANE needs road planes in {planes}, which is missing; add KITTI's "
                f"planes there, or switch GT sampling off: {DISABLE_GT_SAMPLING}"
            )


def check_data_files(cfg: Mapping, *, training: bool) -> None:
    """The data folder, split list, infos and (training) GT database that ``cfg`` reads exist and are not empty.

    Raises:
        UsageError: naming the missing path and the fix (``--data_path``, ``tools/prepare_kitti.py``, switching
            GT sampling off).
    """
    data_cfg = cfg["DATA_CONFIG"]
    root = Path(data_cfg["DATA_PATH"])
    if not root.is_dir() or not any(root.iterdir()):
        state = "is empty" if root.is_dir() else "does not exist"
        raise UsageError(f"data path {root} {state}; pass --data_path pointing to the dataset root")
    if data_cfg["DATASET"] != "KittiDataset":
        return
    _check_kitti(root, data_cfg, "train" if training else "test")
    sampling = gt_sampling_config(data_cfg) if training else None
    if sampling is not None:
        _check_gt_database(root, sampling)


def check_gt_sampler(dataset) -> None:
    """Every class the built dataset's GT sampler draws has boxes left after its PREPARE filters.

    Raises:
        UsageError: a class with no usable box (OpenPCDet would fail inside the data loader).
    """
    augmentor = getattr(dataset, "data_augmentor", None)
    for stage in getattr(augmentor, "data_augmentor_queue", []):
        groups, infos = getattr(stage, "sample_groups", None), getattr(stage, "db_infos", None)
        if groups is None or infos is None:
            continue
        empty = [name for name, group in groups.items() if int(group["sample_num"]) > 0 and not infos[name]]
        if empty:
            raise UsageError(
                f"GT sampling draws {empty} but the GT database has no usable box of them (after its PREPARE "
                f"filters); switch GT sampling off: {DISABLE_GT_SAMPLING}, or drop them from SAMPLE_GROUPS"
            )

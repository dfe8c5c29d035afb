"""KITTI preparation: check the folder layout, then build OpenPCDet's info pkls and GT database.

Expected layout (OpenPCDet's ``data/kitti``)::

    <root>/ImageSets/{train,val,test}.txt          split lists (OpenPCDet's data/kitti/ImageSets)
    <root>/training/{velodyne,calib,label_2,image_2}/<id>.{bin,txt,txt,png}   every train/val id
    <root>/training/planes/<id>.txt                 optional; needed when gt_sampling has USE_ROAD_PLANE: True
    <root>/testing/{velodyne,calib,image_2}/<id>.{bin,txt,png}                every test id

Outputs, written into ``<root>`` like OpenPCDet's ``create_kitti_infos``: ``kitti_infos_{train,val,trainval,test}.pkl``,
``gt_database/`` and ``kitti_dbinfos_train.pkl``.
"""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["KITTI_CLASSES", "KITTI_SPLIT_FOLDERS", "check_kitti_layout", "prepare_kitti"]

#: classes whose GT boxes go into the database when the config names none (a dataset config)
KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")

_TRAINING = {"velodyne": ".bin", "calib": ".txt", "label_2": ".txt", "image_2": ".png"}
_TESTING = {"velodyne": ".bin", "calib": ".txt", "image_2": ".png"}
#: split list -> (folder, {subfolder: extension})
KITTI_SPLIT_FOLDERS = {"train": ("training", _TRAINING), "val": ("training", _TRAINING), "test": ("testing", _TESTING)}


def _read_ids(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split list {path} is empty; expected one KITTI frame id (e.g. 000000) per line")
    return ids


def check_kitti_layout(root: str | Path) -> dict[str, int]:
    """Raise FileNotFoundError/ValueError naming the first missing path and what belongs there.

    Returns:
        frame count per split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"KITTI root {root} does not exist; expected a folder with ImageSets/, training/ "
            f"and testing/ (link your KITTI object dataset there, see data/README.md)"
        )
    counts = {}
    for split, (folder, subfolders) in KITTI_SPLIT_FOLDERS.items():
        split_file = root / "ImageSets" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"missing split list {split_file}; expected OpenPCDet's "
                f"data/kitti/ImageSets/{split}.txt (one frame id per line)"
            )
        ids = _read_ids(split_file)
        for sub, ext in subfolders.items():
            directory = root / folder / sub
            if not directory.is_dir():
                raise FileNotFoundError(f"missing folder {directory}; expected KITTI {folder}/{sub}/<id>{ext} files")
            present = {p.name for p in directory.iterdir()}
            missing = [i for i in ids if f"{i}{ext}" not in present]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} frame(s) of {split_file.name} have no {directory}/<id>{ext}, "
                    f"first: {directory / (missing[0] + ext)}"
                )
        counts[split] = len(ids)
    return counts


def prepare_kitti(
    dataset_cfg: Mapping,
    root: str | Path,
    *,
    class_names: Sequence[str] = KITTI_CLASSES,
    workers: int = 4,
) -> list[Path]:
    """Check the layout and write infos + GT database into ``root`` with OpenPCDet's KITTI functions.

    Args:
        dataset_cfg: the ``DATA_CONFIG`` of a config (or ``cfgs/dataset_configs/kitti_dataset.yaml``).
        root: the KITTI folder (``data/kitti``).
        class_names: classes whose GT boxes go into the database.
        workers: threads for ``get_infos``.

    Returns:
        the files and folders written.
    """
    root = Path(root).resolve()
    check_kitti_layout(root)
    from pcdet.datasets.kitti import kitti_dataset

    # create_kitti_infos uses `Path`, which kitti_dataset imports only under `if __name__ == "__main__"`.
    if not hasattr(kitti_dataset, "Path"):
        kitti_dataset.Path = pathlib.Path
    kitti_dataset.create_kitti_infos(
        dataset_cfg=dataset_cfg, class_names=list(class_names), data_path=root, save_path=root, workers=workers
    )
    outputs = [root / f"kitti_infos_{s}.pkl" for s in ("train", "val", "trainval", "test")]
    outputs += [root / "kitti_dbinfos_train.pkl", root / "gt_database"]
    absent = [str(p) for p in outputs if not p.exists()]
    if absent:
        raise RuntimeError(f"OpenPCDet's create_kitti_infos finished without writing {absent}")
    return outputs

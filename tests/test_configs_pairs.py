"""The dense-head config pairs (KITTI, Waymo, nuScenes): baselines equal OpenPCDet's stock files, GCIoU pairs differ
only in the head name and the shared loss block."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from config_paths import config_diff, flatten

from pcdet_gciou.config import load_config

CFGS = Path(__file__).resolve().parents[1] / "cfgs"
#: baseline -> the GCIoU head its pair names
PAIRS = {
    "kitti_models/centerpoint": "CenterHeadGCIoU",
    "kitti_models/second_multihead": "AnchorHeadMultiGCIoU",
    "waymo_models/centerpoint": "CenterHeadGCIoU",
    "waymo_models/pointpillar_1x": "AnchorHeadSingleGCIoU",
    "waymo_models/second": "AnchorHeadSingleGCIoU",
    "waymo_models/pv_rcnn": "AnchorHeadSingleGCIoU",
    "nuscenes_models/cbgs_voxel0075_res3d_centerpoint": "CenterHeadGCIoU",
    "nuscenes_models/cbgs_pp_multihead": "AnchorHeadMultiGCIoU",
    "nuscenes_models/cbgs_voxel0075_voxelnext": "VoxelNeXtHeadGCIoU",
    "nuscenes_models/transfusion_lidar": "TransFusionHeadGCIoU",
}
STOCK_BASELINES = [name for name in PAIRS if name != "kitti_models/centerpoint"]  # ours has no stock file
DATASETS = ["dataset_configs/waymo_dataset", "dataset_configs/nuscenes_dataset"]
LOSS_BLOCKS = {
    "Center": "center_head_loss.yaml",
    "VoxelNeXt": "center_head_loss.yaml",
    "TransFusion": "center_head_loss.yaml",
    "Anchor": "anchor_head_loss.yaml",
}


def _stock(rel: str, tmp_path) -> dict:
    """OpenPCDet's merged stock config, loaded by OpenPCDet's own loader from its tools/ (CWD-relative bases)."""
    import pcdet

    tools = Path(pcdet.__file__).resolve().parents[1] / "tools"
    if not (tools / "cfgs" / f"{rel}.yaml").is_file():
        pytest.skip(f"no stock {rel}.yaml next to the importable pcdet ({tools})")
    out = tmp_path / "stock.pkl"
    code = (
        "import pickle, sys; sys.path.insert(0, sys.argv[1]); from easydict import EasyDict; "
        "from pcdet.config import cfg_from_yaml_file; "
        "to = lambda x: {k: to(v) for k, v in x.items()} if isinstance(x, dict) else "
        "([to(v) for v in x] if isinstance(x, list) else x); "
        "pickle.dump(to(cfg_from_yaml_file(sys.argv[2], EasyDict())), open(sys.argv[3], 'wb'))"
    )
    subprocess.run([sys.executable, "-c", code, str(tools.parent), f"cfgs/{rel}.yaml", str(out)], check=True, cwd=tools)
    return pickle.loads(out.read_bytes())


def _is_path_key(path: tuple) -> bool:
    """Keys that hold paths: OpenPCDet keeps the CWD-relative base path and DATA_PATH; ours are file-/root-relative."""
    return path[-1] in ("_BASE_CONFIG_", "DATA_PATH")


@pytest.mark.pcdet
@pytest.mark.parametrize("name", STOCK_BASELINES + DATASETS)
def test_baseline_equals_stock_openpcdet_config(name, tmp_path):
    stock = _stock(name, tmp_path)
    ours = load_config(CFGS / f"{name}.yaml").to_dict()
    diff = config_diff(ours, stock)
    assert [path for path in diff if not _is_path_key(path)] == []
    assert all(not str(v).startswith("..") for k, v in flatten(ours).items() if k[-1] == "DATA_PATH")


@pytest.mark.parametrize("name", list(PAIRS))
def test_gciou_pair_inherits_baseline_and_shared_block_and_names_its_head(name):
    raw = yaml.safe_load((CFGS / f"{name}_gciou.yaml").read_text())
    assert raw["_BASE_CONFIG_"] == f"{Path(name).name}.yaml"
    head = PAIRS[name]
    block = next(file for prefix, file in LOSS_BLOCKS.items() if head.startswith(prefix))
    assert raw["MODEL"]["DENSE_HEAD"] == {"NAME": head, "LOSS_CONFIG": {"_BASE_CONFIG_": f"../gciou/{block}"}}
    base = load_config(CFGS / f"{name}.yaml")
    gciou = load_config(CFGS / f"{name}_gciou.yaml")
    allowed = (("MODEL", "DENSE_HEAD", "NAME"), ("MODEL", "DENSE_HEAD", "LOSS_CONFIG"), ("MODEL", "ROI_HEAD"))
    unexpected = [p for p in config_diff(base, gciou) if not any(p[: len(a)] == a for a in allowed)]
    assert unexpected == []
    shared = load_config(CFGS / "gciou" / "loss.yaml")
    assert gciou.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS == shared.REG_LOSS
    # the host's own loss weights survive the include
    host_weights = base.MODEL.DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS
    assert all(
        gciou.MODEL.DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS[k] == v for k, v in host_weights.items() if k != "loc_weight"
    )


def test_waymo_pv_rcnn_pair_uses_the_roi_option_off():
    cfg = load_config(CFGS / "waymo_models" / "pv_rcnn_gciou.yaml")
    assert cfg.MODEL.ROI_HEAD.NAME == "PVRCNNHeadGCIoU"
    assert cfg.MODEL.ROI_HEAD.LOSS_CONFIG.IOU_REG_LOSS.ENABLED is False
    assert cfg.MODEL.DENSE_HEAD.NAME == "AnchorHeadSingleGCIoU"


@pytest.mark.parametrize("name", list(PAIRS))
def test_gciou_loss_blocks_validate(name):
    from pcdet_gciou.openpcdet import loss_config

    head = load_config(CFGS / f"{name}_gciou.yaml").MODEL.DENSE_HEAD
    parsers = {"Anchor": "dense", "Center": "center", "VoxelNeXt": "center", "TransFusion": "transfusion"}
    kind = next(kind for prefix, kind in parsers.items() if head.NAME.startswith(prefix))
    parse = getattr(loss_config, f"parse_{kind}_loss_config")
    assert parse(head.LOSS_CONFIG).reg_loss.name == "gciou"

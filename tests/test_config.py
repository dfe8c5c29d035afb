"""Config loader and the shipped KITTI configs: loading, merge rules, pair diffs, stock comparison."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from config_paths import config_diff

from pcdet_gciou.config import AttrDict, apply_set_args, config_tag, load_config, project_root

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "cfgs" / "kitti_models"
BASELINES = ("pointpillar", "second", "second_iou", "pv_rcnn")
ALL_CONFIGS = sorted(MODELS_DIR.glob("*.yaml"))

# The keys a *_gciou.yaml may change relative to its baseline: the head names, the dense-head loss
# block, the RoI-head loss block (PV-RCNN), and GRAD_NORM_CLIP (restated, justified in the file).
ALLOWED_PAIR_DIFF_PREFIXES = (
    ("MODEL", "DENSE_HEAD", "NAME"),
    ("MODEL", "DENSE_HEAD", "LOSS_CONFIG"),
    ("MODEL", "ROI_HEAD", "NAME"),
    ("MODEL", "ROI_HEAD", "LOSS_CONFIG"),
    ("OPTIMIZATION", "GRAD_NORM_CLIP"),
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ loader
def test_base_config_is_recursive_and_relative_to_including_file(tmp_path, monkeypatch):
    write(tmp_path / "a" / "base.yaml", "A: 1\nNESTED: {X: 1, Y: [1, 2]}\nL: [1, 2, 3]\n")
    write(tmp_path / "a" / "b" / "mid.yaml", "_BASE_CONFIG_: ../base.yaml\nNESTED: {Y: [9]}\nB: 2\n")
    top = write(
        tmp_path / "c" / "top.yaml",
        "_BASE_CONFIG_: ../a/b/mid.yaml\nNESTED: {Z: 3}\nL: [7]\nSUB: {_BASE_CONFIG_: ../a/base.yaml, A: 5}\n",
    )
    monkeypatch.chdir(tmp_path / "a" / "b")  # the working directory must not matter
    cfg = load_config(top)
    assert cfg.A == 1 and cfg.B == 2
    assert cfg.NESTED == {"X": 1, "Y": [9], "Z": 3}  # mappings merge, lists replace
    assert cfg.L == [7]
    assert cfg.SUB.A == 5 and cfg.SUB.NESTED.X == 1  # nested _BASE_CONFIG_ too
    assert "_BASE_CONFIG_" not in cfg and "_BASE_CONFIG_" not in cfg.SUB


def test_base_config_cycle_and_missing_file_raise(tmp_path):
    write(tmp_path / "x.yaml", "_BASE_CONFIG_: y.yaml\n")
    write(tmp_path / "y.yaml", "_BASE_CONFIG_: x.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "x.yaml")
    write(tmp_path / "z.yaml", "_BASE_CONFIG_: nowhere.yaml\n")
    with pytest.raises(ValueError, match="nowhere.yaml"):
        load_config(tmp_path / "z.yaml")
    write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_data_path_resolved_against_project_root_not_cwd(tmp_path, monkeypatch):
    cfg_file = write(
        tmp_path / "deep" / "d.yaml", "DATA_CONFIG: {DATA_PATH: data/kitti}\nABS: {DATA_PATH: /abs/kitti}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PCDET_GCIOU_ROOT", raising=False)
    cfg = load_config(cfg_file)
    assert Path(cfg.DATA_CONFIG.DATA_PATH) == REPO_ROOT / "data" / "kitti"
    assert project_root() == REPO_ROOT
    assert cfg.ABS.DATA_PATH == "/abs/kitti"
    monkeypatch.setenv("PCDET_GCIOU_ROOT", str(tmp_path / "elsewhere"))
    assert Path(load_config(cfg_file).DATA_CONFIG.DATA_PATH) == (tmp_path / "elsewhere" / "data" / "kitti").resolve()
    apply_set_args(cfg, ["DATA_CONFIG.DATA_PATH", "other/kitti"])
    assert Path(cfg.DATA_CONFIG.DATA_PATH) == (tmp_path / "elsewhere" / "other" / "kitti").resolve()


def test_shipped_configs_load_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PCDET_GCIOU_ROOT", raising=False)
    cfg = load_config(MODELS_DIR / "second_gciou.yaml")
    assert Path(cfg.DATA_CONFIG.DATA_PATH) == REPO_ROOT / "data" / "kitti"


def test_attrdict_access_pickle_deepcopy_and_plain_dict():
    cfg = AttrDict({"A": {"B": [{"NAME": "x"}]}})
    assert cfg.A.B[0].NAME == "x"  # dicts inside lists get attribute access (OpenPCDet uses it)
    cfg.C = {"D": 1}
    assert isinstance(cfg.C, AttrDict) and cfg.C.D == 1
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg and isinstance(copy.deepcopy(cfg).A, AttrDict)
    with pytest.raises(AttributeError):
        _ = cfg.MISSING
    assert type(cfg.to_dict()["A"]) is dict
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg


def test_apply_set_args_types_and_errors():
    cfg = AttrDict(
        {
            "OPT": {
                "LR": 0.003,
                "EPOCHS": 80,
                "FLAG": False,
                "NAME": "adam",
                "MOMS": [0.95, 0.85],
                "W": {"cls_weight": 1.0, "loc_weight": 2.0},
            }
        }
    )
    apply_set_args(
        cfg,
        [
            "OPT.LR",
            "0.01",
            "OPT.EPOCHS",
            "2",
            "OPT.FLAG",
            "True",
            "OPT.NAME",
            "sgd",
            "OPT.MOMS",
            "0.9,0.8",
            "OPT.W",
            "loc_weight:1",
        ],
    )
    assert cfg.OPT.LR == 0.01 and cfg.OPT.EPOCHS == 2 and cfg.OPT.FLAG is True and cfg.OPT.NAME == "sgd"
    assert cfg.OPT.MOMS == [0.9, 0.8] and cfg.OPT.W == {"cls_weight": 1.0, "loc_weight": 1.0}
    apply_set_args(cfg, ["OPT.LR", "1"])  # an int is accepted for a float
    assert cfg.OPT.LR == 1.0 and isinstance(cfg.OPT.LR, float)
    with pytest.raises(ValueError, match="no key 'LRR'.*available"):
        apply_set_args(cfg, ["OPT.LRR", "1"])
    with pytest.raises(ValueError, match="odd number"):
        apply_set_args(cfg, ["OPT.LR"])
    with pytest.raises(ValueError, match="OPT.EPOCHS"):
        apply_set_args(cfg, ["OPT.EPOCHS", "abc"])
    with pytest.raises(ValueError, match="bool"):
        apply_set_args(cfg, ["OPT.FLAG", "1"])
    apply_set_args(cfg, ["OPT.LR", "None"])  # None switches an option off (GCIoU's alpha/g)
    assert cfg.OPT.LR is None


@pytest.mark.parametrize(
    "row, options, expected",
    [
        (1, {"alpha": "None", "g": "None", "grad_rescale": "False"}, "log_iou"),
        (4, {"grad_rescale": "False"}, None),
    ],
)
def test_table1_ablation_rows_are_one_set_away(row, options, expected):
    # README: the paper's Table 1 rows are --set switches of the shipped GCIoU config; row 1 (f = 1, g = 0,
    # no rescaling) must be exactly -ln IoU.
    import torch

    from pcdet_gciou.losses import build_loss

    cfg = load_config(REPO_ROOT / "cfgs/kitti_models/second_gciou.yaml")
    prefix = "MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS."
    apply_set_args(cfg, [item for key, value in options.items() for item in (prefix + key, value)])
    kwargs = {k: v for k, v in cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS.items() if k != "NAME"}
    loss = build_loss(cfg.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS.NAME, **kwargs)
    pred = torch.tensor([[0.2, 0.1, 0.0, 4.0, 1.7, 1.5, 0.4]])
    target = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]])
    assert loss.grad_rescale is False
    if expected is not None:
        torch.testing.assert_close(loss(pred, target), build_loss(expected)(pred, target))


def test_config_tag_is_file_stem():
    assert config_tag("cfgs/kitti_models/second_gciou.yaml") == "second_gciou"
    assert config_tag(Path("/x/pointpillar.yaml")) == "pointpillar"


# ------------------------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    # the three KITTI classes; the CT-Stack configs (the paper's ablation detector) are car only
    assert cfg.CLASS_NAMES == (["Car"] if path.stem.startswith("ct_stack") else ["Car", "Pedestrian", "Cyclist"])
    assert cfg.DATA_CONFIG.DATASET == "KittiDataset"
    assert Path(cfg.DATA_CONFIG.DATA_PATH).is_absolute()
    assert {"NAME", "DENSE_HEAD", "POST_PROCESSING"} <= set(cfg.MODEL)


def test_every_baseline_has_a_gciou_pair():
    stems = {p.stem for p in ALL_CONFIGS}
    assert {*BASELINES, *(f"{b}_gciou" for b in BASELINES)} <= stems


@pytest.mark.parametrize("baseline", BASELINES)
def test_gciou_config_inherits_its_baseline_in_the_file(baseline):
    raw = yaml.safe_load((MODELS_DIR / f"{baseline}_gciou.yaml").read_text())
    assert raw["_BASE_CONFIG_"] == f"{baseline}.yaml"


@pytest.mark.parametrize("baseline", BASELINES)
def test_pair_differs_only_in_intended_keys(baseline):
    base = load_config(MODELS_DIR / f"{baseline}.yaml")
    gciou = load_config(MODELS_DIR / f"{baseline}_gciou.yaml")
    diff = config_diff(base, gciou)
    unexpected = [p for p in diff if not any(p[: len(a)] == a for a in ALLOWED_PAIR_DIFF_PREFIXES)]
    assert not unexpected, f"{baseline}_gciou changes keys outside the loss blocks: {unexpected}"
    assert ("MODEL", "DENSE_HEAD", "NAME") in diff
    assert gciou.MODEL.DENSE_HEAD.NAME == "AnchorHeadSingleGCIoU"
    assert gciou.MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS.NAME == "gciou"
    # the paper-faithful reading, and the RoI option off
    assert gciou.MODEL.DENSE_HEAD.LOSS_CONFIG.SPACE == "decoded"
    if "ROI_HEAD" in gciou.MODEL and "IOU_REG_LOSS" in gciou.MODEL.ROI_HEAD.LOSS_CONFIG:
        assert gciou.MODEL.ROI_HEAD.LOSS_CONFIG.IOU_REG_LOSS.ENABLED is False


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_loss_blocks_of_shipped_configs_validate(path):
    from pcdet_gciou.openpcdet.loss_config import parse_dense_loss_config, parse_roi_loss_config

    cfg = load_config(path)
    if cfg.MODEL.DENSE_HEAD.NAME == "AnchorHeadSingleGCIoU":
        parse_dense_loss_config(cfg.MODEL.DENSE_HEAD.LOSS_CONFIG)
    if cfg.MODEL.get("ROI_HEAD", {}).get("NAME") == "PVRCNNHeadGCIoU":
        parse_roi_loss_config(cfg.MODEL.ROI_HEAD.LOSS_CONFIG)


def _openpcdet_source() -> Path | None:
    candidates = [os.environ.get("OPENPCDET_ROOT"), "/work/openpcdet", str(REPO_ROOT.parent / "openpcdet")]
    for candidate in candidates:
        if (
            candidate
            and (Path(candidate) / "tools" / "cfgs" / "kitti_models" / "second.yaml").is_file()
            and (Path(candidate) / "pcdet" / "config.py").is_file()
        ):
            return Path(candidate)
    return None


# Documented differences between our merged baselines and OpenPCDet's merged stock configs:
# - DATA_CONFIG._BASE_CONFIG_: OpenPCDet keeps the (CWD-relative) path as a key; we drop it after merging;
# - DATA_CONFIG.DATA_PATH: OpenPCDet '../data/kitti' (CWD-relative); ours absolute, under the project root.
DOCUMENTED_STOCK_DIFFS = {("DATA_CONFIG", "_BASE_CONFIG_"), ("DATA_CONFIG", "DATA_PATH")}


@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_matches_stock_openpcdet_config(baseline, tmp_path):
    source = _openpcdet_source()
    if source is None:
        pytest.skip("no OpenPCDet source tree (set OPENPCDET_ROOT, or place one at /work/openpcdet)")
    pytest.importorskip("easydict", reason="OpenPCDet's config loader needs easydict")
    # OpenPCDet's loader (pcdet/config.py) is run in a subprocess from tools/, where its CWD-relative
    # _BASE_CONFIG_ resolves; importing pcdet.config alone needs no compiled extension.
    out = tmp_path / "stock.pkl"
    code = (
        "import pickle, sys; sys.path.insert(0, sys.argv[1]); "
        "from easydict import EasyDict; from pcdet.config import cfg_from_yaml_file; "
        "import json; c = cfg_from_yaml_file(sys.argv[2], EasyDict()); "
        "to = lambda x: {k: to(v) for k, v in x.items()} if isinstance(x, dict) else "
        "([to(v) for v in x] if isinstance(x, list) else x); "
        "pickle.dump(to(c), open(sys.argv[3], 'wb'))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(source), f"cfgs/kitti_models/{baseline}.yaml", str(out)],
        check=True,
        cwd=source / "tools",
    )
    stock = pickle.loads(out.read_bytes())
    ours = load_config(MODELS_DIR / f"{baseline}.yaml").to_dict()
    diff = set(config_diff(ours, stock))
    assert diff - DOCUMENTED_STOCK_DIFFS == set(), f"undocumented differences from stock {baseline}.yaml"
    assert stock["DATA_CONFIG"]["DATA_PATH"] == "../data/kitti"


def test_set_parses_lists_and_mappings_strictly_as_yaml():
    cfg = load_config(REPO_ROOT / "cfgs" / "kitti_models" / "pointpillar_gciou.yaml")
    key = "DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST"
    apply_set_args(cfg, [key, "['gt_sampling']"])
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST == ["gt_sampling"]
    apply_set_args(cfg, [key, "[gt_sampling, random_world_flip]"])  # YAML flow list, unquoted
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST == ["gt_sampling", "random_world_flip"]
    for bad in ("['gt_sampling'", "[a, b", "{x: 1"):
        with pytest.raises(ValueError, match="is not a valid YAML list or mapping"):
            apply_set_args(cfg, [key, bad])
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST == ["gt_sampling", "random_world_flip"]


def test_data_path_override_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    from pcdet_gciou.config import override_data_path

    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO_ROOT / "cfgs" / "kitti_models" / "pointpillar_gciou.yaml")
    assert override_data_path(cfg, "kitti").DATA_CONFIG.DATA_PATH == str(tmp_path.resolve() / "kitti")
    dataset_cfg = load_config(REPO_ROOT / "cfgs" / "dataset_configs" / "kitti_dataset.yaml")
    assert override_data_path(dataset_cfg, "k2").DATA_PATH == str(tmp_path.resolve() / "k2")

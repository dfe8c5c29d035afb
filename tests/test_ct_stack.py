"""CT-Stack: the BEV backbone's structure, size and shapes; its configs; one train step and an evaluation (pcdet).

The parameter counts are those measured on the official module (reference notes, addendum): 4,606,352 in use, of
which the Swin stage holds 3,162,256 (790,436 per block + 512 for the final LayerNorm).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from config_paths import flatten
from torch import nn

from pcdet_gciou.config import load_config
from pcdet_gciou.nn import SwinStage
from pcdet_gciou.openpcdet.ct_bev_backbone import CTBEVBackbone

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "cfgs" / "kitti_models"
OFFICIAL_PARAMETERS = 4_606_352
OFFICIAL_SWIN_PARAMETERS = 3_162_256


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _backbone(**cfg) -> CTBEVBackbone:
    return CTBEVBackbone({"NAME": "CTBEVBackbone", **cfg}, input_channels=256)


def test_parameter_count_matches_the_official_module():
    backbone = _backbone()
    assert abs(_count(backbone) - OFFICIAL_PARAMETERS) <= 0.01 * OFFICIAL_PARAMETERS
    assert _count(backbone) == OFFICIAL_PARAMETERS
    assert _count(backbone.transformer) == OFFICIAL_SWIN_PARAMETERS
    assert [_count(block) for block in backbone.transformer.blocks] == [790_436] * 4
    assert backbone.num_bev_features == 256


def test_layer_structure_in_order():
    backbone = _backbone()
    convs = [m for m in backbone.conv_stage if isinstance(m, nn.Conv2d)]
    assert isinstance(backbone.conv_stage[0], nn.ZeroPad2d) and backbone.conv_stage[0].padding == (1, 1, 1, 1)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [(256, 128, (3, 3), (1, 1))] + [
        (128, 128, (3, 3), (1, 1))
    ] * 4
    down = backbone.downsample[1]
    assert isinstance(backbone.downsample[0], nn.ZeroPad2d)
    assert (down.in_channels, down.out_channels, down.stride) == (128, 256, (2, 2))
    assert all(c.bias is None for c in [*convs, down])
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 7 and all((n.eps, n.momentum) == (1e-3, 0.01) for n in norms)
    stage = backbone.transformer
    assert isinstance(stage, SwinStage) and [b.shift for b in stage.blocks] == [0, 3, 0, 3]
    assert [b.drop_path.p for b in stage.blocks] == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])
    attn = stage.blocks[0].attn
    assert (attn.num_heads, attn.window_size, attn.relative_position_bias_table.shape) == (4, 7, (169, 4))
    assert attn.qkv.bias is not None and stage.blocks[0].mlp[0].out_features == 1024
    assert isinstance(stage.blocks[0].mlp[1], nn.GELU)
    deconv = backbone.deblock[0]
    assert isinstance(deconv, nn.ConvTranspose2d) and (deconv.kernel_size, deconv.stride) == ((2, 2), (2, 2))
    assert (deconv.in_channels, deconv.out_channels, deconv.bias) == (256, 256, None)


@pytest.mark.parametrize("height, width", [(200, 176), (22, 30)], ids=["kitti-200x176", "small"])
def test_output_shape_for_maps_not_multiple_of_the_window(height, width):
    # 200 x 176 -> 100 x 88 inside the Swin stage: neither side is a multiple of 7
    torch.manual_seed(0)
    backbone = _backbone().eval()
    seen = {}
    backbone.transformer.register_forward_hook(lambda m, i, o: seen.update(swin=o.shape))
    data = {"spatial_features": torch.randn(1, 256, height, width)}
    with torch.no_grad():
        out = backbone(data)["spatial_features_2d"]
    assert seen["swin"] == (1, 256, height // 2, width // 2)
    assert out.shape == (1, 256, height, width) and torch.isfinite(out).all()
    assert data["spatial_features_2d"] is out


def test_eval_output_is_deterministic_and_gradients_are_finite():
    torch.manual_seed(0)
    backbone = _backbone(CONV_FILTERS=16, CONV_LAYERS=1, SWIN_DIM=32, NUM_UPSAMPLE_FILTERS=32)
    x = torch.randn(2, 256, 18, 16)
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(
            backbone({"spatial_features": x})["spatial_features_2d"],
            backbone({"spatial_features": x})["spatial_features_2d"],
        )
    backbone.train()
    backbone({"spatial_features": x})["spatial_features_2d"].square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_bad_backbone_config_raises_naming_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['LAYER_NUMS'\].*allowed"):
        _backbone(LAYER_NUMS=[4, 0])
    with pytest.raises(ValueError, match="SWIN_HEADS must be a positive int, got 0"):
        _backbone(SWIN_HEADS=0)
    with pytest.raises(ValueError, match="CONV_LAYERS must be an int >= 0, got -1"):
        _backbone(CONV_LAYERS=-1)
    with pytest.raises(ValueError, match="not divisible"):
        _backbone(SWIN_HEADS=3)


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["ct_stack", "ct_stack_gciou"])
def test_configs_are_car_only_with_the_official_data_settings(name):
    cfg = load_config(MODELS / f"{name}.yaml")
    assert cfg.CLASS_NAMES == ["Car"]
    data = cfg.DATA_CONFIG
    assert data.POINT_CLOUD_RANGE == [0, -40, -3, 70.4, 40, 1]
    voxel = next(p for p in data.DATA_PROCESSOR if p.NAME == "transform_points_to_voxels")
    assert voxel.VOXEL_SIZE == [0.05, 0.05, 0.1]
    model = cfg.MODEL
    assert (model.BACKBONE_3D.NAME, model.MAP_TO_BEV.NAME, model.MAP_TO_BEV.NUM_BEV_FEATURES) == (
        "VoxelBackBone8x",
        "HeightCompression",
        256,
    )
    assert model.BACKBONE_2D.NAME == "CTBEVBackbone" and model.DENSE_HEAD.NAME == "AnchorHeadSingleGCIoU"
    (anchor,) = model.DENSE_HEAD.ANCHOR_GENERATOR_CONFIG
    assert anchor.class_name == "Car" and anchor.anchor_sizes == [[3.9, 1.6, 1.56]]
    assert anchor.anchor_bottom_heights == [-1.78] and anchor.anchor_rotations == [0, 1.57]
    opt = cfg.OPTIMIZATION
    assert (opt.OPTIMIZER, opt.LR, opt.NUM_EPOCHS, opt.BATCH_SIZE_PER_GPU) == ("adam_onecycle", 0.003, 40, 4)
    backbone = CTBEVBackbone(model.BACKBONE_2D, input_channels=256)  # every stated key is a valid option
    assert _count(backbone) == OFFICIAL_PARAMETERS


def test_pair_differs_in_the_regression_loss_only_and_uses_the_shared_block():
    base, full = (load_config(MODELS / f"{n}.yaml").to_dict() for n in ("ct_stack", "ct_stack_gciou"))
    flat_base, flat_full = flatten(base), flatten(full)
    differing = {
        k for k in flat_base.keys() | flat_full.keys() if flat_base.get(k, "<none>") != flat_full.get(k, "<none>")
    }
    assert differing and all(k[:4] == ("MODEL", "DENSE_HEAD", "LOSS_CONFIG", "REG_LOSS") for k in differing)
    assert base["MODEL"]["DENSE_HEAD"]["LOSS_CONFIG"]["REG_LOSS"] == {"NAME": "log_iou"}
    shared = load_config(REPO / "cfgs" / "gciou" / "anchor_head_loss.yaml").to_dict()
    loss_cfg = full["MODEL"]["DENSE_HEAD"]["LOSS_CONFIG"]
    # the shared GCIoU loss, with the paper's full model on top: Eq. 18 as written (Table 1, row 6)
    assert loss_cfg["REG_LOSS"] == {**shared["REG_LOSS"], "grad_rescale": True, "rescale_normalize": False}
    # ct_stack.yaml restates the shared block's other settings; they must stay in step
    for key, value in flatten(shared).items():
        if key[0] != "REG_LOSS":
            assert flatten(loss_cfg)[key] == value, key


# ------------------------------------------------------------------------------ one step on real frames
PCDET = pytest.mark.pcdet


@pytest.fixture(scope="module")
def kitti_prepared(kitti_mini_tree):
    """The mini tree with OpenPCDet's infos (train, val) written once."""
    from pcdet_gciou.openpcdet.prepare import prepare_kitti

    if not (kitti_mini_tree / "kitti_infos_val.pkl").exists():
        cfg = load_config(REPO / "cfgs" / "dataset_configs" / "kitti_dataset.yaml")
        prepare_kitti(cfg, kitti_mini_tree, workers=1)
    return kitti_mini_tree


@PCDET
@pytest.mark.slow
def test_one_train_step_and_an_evaluation_on_real_frames(kitti_prepared, tmp_path):
    from pcdet_gciou.openpcdet import runtime
    from pcdet_gciou.training import build_optimizer

    cfg = load_config(MODELS / "ct_stack_gciou.yaml")
    cfg.DATA_CONFIG.DATA_PATH = str(kitti_prepared)
    # deterministic batch, no GT database; the full official range and voxel size (1408 x 1600 x 40 grid)
    cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST = [
        "gt_sampling",
        "random_world_flip",
        "random_world_rotation",
        "random_world_scaling",
    ]
    device = runtime.import_pcdet(cpu=True)
    torch.manual_seed(0)
    np.random.seed(0)  # the training-mode point shuffle
    dataset, _ = runtime.build_dataset(cfg, training=True, batch_size=1, workers=0)
    model = runtime.build_model(cfg, dataset, device)
    assert type(model.backbone_2d).__name__ == "CTBEVBackbone" and _count(model.backbone_2d) == OFFICIAL_PARAMETERS
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    before = {n: p.detach().clone() for n, p in model.backbone_2d.named_parameters()}
    model.train()
    start = time.perf_counter()
    loss, scalars = runtime.make_train_step(device)(model, dataset.collate_batch([dataset[0]]))
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - start
    assert math.isfinite(loss.item()) and math.isfinite(scalars["rpn_loss_loc"])
    changed = [n for n, p in model.backbone_2d.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "transformer.blocks.3.attn.relative_position_bias_table" in changed
    assert "deblock.0.weight" in changed and "conv_stage.1.weight" in changed

    _, loader = runtime.build_dataset(cfg, training=False, batch_size=1, workers=0)
    start = time.perf_counter()
    rows, _, _ = runtime.evaluate(model, loader, cfg, tmp_path / "eval", device, progress=False)
    eval_s = time.perf_counter() - start
    car = {(r["difficulty"]): r["ap"] for r in rows if (r["class"], r["metric"], r["recall"]) == ("Car", "3d", "R11")}
    assert set(car) == {"easy", "moderate", "hard"} and all(0.0 <= ap <= 100.0 for ap in car.values())
    assert (tmp_path / "eval" / "result.pkl").is_file()
    print(f"CT-Stack on CPU: one train step {step_s:.1f} s, evaluation of {len(loader.dataset)} frames {eval_s:.1f} s")

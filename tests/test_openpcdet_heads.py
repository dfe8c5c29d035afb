"""GCIoU heads inside real OpenPCDet (pcdet-marked) and their pure-torch helpers (always run).

The pcdet tests build PointPillars (batch 1) from our configs on a real KITTI frame processed by
OpenPCDet's own ``KittiDataset``/``collate_batch``; the backbone runs once and the head is re-run on
its (detached) BEV features, which keeps them to about a minute on 2 CPU cores.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from head_builder import build_dense_head

from pcdet_gciou.config import load_config
from pcdet_gciou.geometry import rotated_iou_3d
from pcdet_gciou.losses import build_loss
from pcdet_gciou.openpcdet.anchor_ops import (
    SIZE_LOG_CLAMP,
    clamp_encoded_sizes,
    enlarge_positives,
    quality_focal_loss,
    residual_space_boxes,
    shift_no_wrap,
)
from pcdet_gciou.openpcdet.loss_config import (
    CenterLossOptions,
    LossSpec,
    parse_center_loss_config,
    parse_dense_loss_config,
    parse_roi_loss_config,
)

MODELS_DIR = Path(__file__).resolve().parents[1] / "cfgs" / "kitti_models"
ALL_CONFIGS = sorted(MODELS_DIR.glob("*.yaml"))


# ------------------------------------------------------------------------ pure torch, always run
def _dense_cfg(**extra):
    cfg = {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 1.0, "dir_weight": 0.2, "code_weights": [1.0] * 7}}
    cfg.update(extra)
    return cfg


def test_unknown_loss_config_key_raises_naming_it():
    with pytest.raises(ValueError, match=r"'ENLARGE_POSITVES'.*allowed keys.*ENLARGE_POSITIVES"):
        parse_dense_loss_config(_dense_cfg(ENLARGE_POSITVES=True))
    with pytest.raises(ValueError, match=r"'loc_wieght'"):
        parse_dense_loss_config({"LOSS_WEIGHTS": {**_dense_cfg()["LOSS_WEIGHTS"], "loc_wieght": 1.0}})
    with pytest.raises(ValueError, match=r"SPACE.*\['decoded', 'residual'\].*'encoded'"):
        parse_dense_loss_config(_dense_cfg(SPACE="encoded"))
    with pytest.raises(ValueError, match=r"NAME.*'ciou'"):
        parse_dense_loss_config(_dense_cfg(REG_LOSS={"NAME": "ciou"}))
    with pytest.raises(TypeError, match="KEEP_SMOOTH_L1"):
        parse_dense_loss_config(_dense_cfg(KEEP_SMOOTH_L1="yes"))
    with pytest.raises(ValueError, match=r"'WEIGHT'.*allowed keys"):
        parse_roi_loss_config({"IOU_REG_LOSS": {"ENABLED": True, "WEIGHT": 2.0}})
    with pytest.raises(ValueError, match=r"MODE"):
        parse_roi_loss_config({"IOU_REG_LOSS": {"ENABLED": True, "MODE": "both"}})


def test_dense_loss_config_defaults_and_kwargs():
    opts = parse_dense_loss_config(_dense_cfg(REG_LOSS={"NAME": "gciou", "g": "exp"}, SPACE="residual"))
    assert (opts.reg_loss.name, opts.reg_loss.kwargs, opts.space) == ("gciou", {"g": "exp"}, "residual")
    assert not (opts.keep_smooth_l1 or opts.iou_quality_focal or opts.enlarge_positives)
    assert opts.smooth_l1_weight is None and opts.smooth_l1_scale == opts.loc_weight == 1.0
    assert parse_dense_loss_config(_dense_cfg()).reg_loss == LossSpec()  # the dataclass default
    # a loss option the loss does not take is caught when the config is parsed, naming the key
    with pytest.raises(ValueError, match=r"REG_LOSS.*'alhpa'"):
        parse_dense_loss_config(_dense_cfg(REG_LOSS={"NAME": "gciou", "alhpa": 2.0}))
    with pytest.raises(ValueError, match=r"LOSS_WEIGHTS.dir_weight is required"):
        parse_dense_loss_config({"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 1.0}})


def test_loss_names_come_from_the_registry():
    from pcdet_gciou.losses import LOSSES

    for name in LOSSES:
        assert parse_dense_loss_config(_dense_cfg(REG_LOSS={"NAME": name})).reg_loss.name == name
    with pytest.raises(ValueError, match=str(list(LOSSES)).replace("[", r"\[").replace("]", r"\]")):
        parse_roi_loss_config({"IOU_REG_LOSS": {"LOSS": {"NAME": "ciou"}}})


def test_center_loss_config_defaults_unknown_keys_and_host_weights():
    host = {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 0.25, "code_weights": [1.0] * 8}}
    opts = parse_center_loss_config(host)
    assert opts == CenterLossOptions()
    assert parse_center_loss_config({**host, "KEEP_L1": True}).keep_l1 is True
    with pytest.raises(ValueError, match=r"'KEEP_L2'.*allowed keys"):
        parse_center_loss_config({**host, "KEEP_L2": True})
    with pytest.raises(ValueError, match=r"'dir_weight'"):  # an anchor-head weight is not a centre-head key
        parse_center_loss_config({"LOSS_WEIGHTS": {**host["LOSS_WEIGHTS"], "dir_weight": 0.2}})
    with pytest.raises(ValueError, match=r"code_weights is required"):
        parse_center_loss_config({"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 0.25}})
    with pytest.raises(TypeError, match=r"iou_weight"):
        parse_center_loss_config({"LOSS_WEIGHTS": {**host["LOSS_WEIGHTS"], "iou_weight": "1"}})


def test_shift_no_wrap_matches_padded_slicing():
    x = torch.arange(1, 13).view(3, 4)
    assert torch.equal(shift_no_wrap(x, 1, 0), torch.cat([torch.zeros(1, 4, dtype=x.dtype), x[:2]]))
    assert torch.equal(shift_no_wrap(x, -1, 1), torch.cat([x[:, 1:], torch.zeros(3, 1, dtype=x.dtype)], dim=1))
    assert shift_no_wrap(x, 5, 0).abs().sum() == 0


def _residual_encode(boxes, anchors):
    """Independent ResidualCoder encode (OpenPCDet's formulas, written here from the paper of SECOND)."""
    diag = torch.sqrt(anchors[:, 3] ** 2 + anchors[:, 4] ** 2)
    return torch.stack(
        [
            (boxes[:, 0] - anchors[:, 0]) / diag,
            (boxes[:, 1] - anchors[:, 1]) / diag,
            (boxes[:, 2] - anchors[:, 2]) / anchors[:, 5],
            *(torch.log(boxes[:, i] / anchors[:, i]) for i in (3, 4, 5)),
            boxes[:, 6] - anchors[:, 6],
        ],
        dim=-1,
    )


def _residual_decode(enc, anchors):
    diag = torch.sqrt(anchors[:, 3] ** 2 + anchors[:, 4] ** 2)
    return torch.stack(
        [
            enc[:, 0] * diag + anchors[:, 0],
            enc[:, 1] * diag + anchors[:, 1],
            enc[:, 2] * anchors[:, 5] + anchors[:, 2],
            *(torch.exp(enc[:, i]) * anchors[:, i] for i in (3, 4, 5)),
            enc[:, 6] + anchors[:, 6],
        ],
        dim=-1,
    )


def test_mean_positive_iou_of_a_duck_typed_anchor_head():
    from types import SimpleNamespace

    from pcdet_gciou.openpcdet.anchor_ops import mean_positive_iou

    g = torch.Generator().manual_seed(0)
    anchors = [torch.tensor([1.0, 2.0, -1.0, 3.9, 1.6, 1.56, 0.0]).expand(1, 2, 3, 1, 2, 7).clone()]  # 12 anchors
    targets = torch.randn(1, 12, 7, generator=g) * 0.1
    preds = targets + torch.randn(1, 12, 7, generator=g) * 0.2
    labels = torch.zeros(1, 12, dtype=torch.long)
    labels[0, [1, 4, 9]] = 1
    labels[0, 5] = -1  # ignored
    coder = SimpleNamespace(code_size=7, decode_torch=_residual_decode)
    head = SimpleNamespace(
        anchors=anchors,
        box_coder=coder,
        use_multihead=False,
        forward_ret_dict={"box_preds": preds.view(1, 2, 3, 14), "box_cls_labels": labels, "box_reg_targets": targets},
    )
    flat = anchors[0].view(-1, 7)
    index = torch.tensor([1, 4, 9])
    expected = rotated_iou_3d(
        _residual_decode(preds[0, index], flat[index]), _residual_decode(targets[0, index], flat[index])
    )
    assert mean_positive_iou(head) == pytest.approx(float(expected.mean()), rel=1e-6)
    head.forward_ret_dict["box_cls_labels"] = torch.zeros_like(labels)
    assert mean_positive_iou(head) == 0.0
    assert mean_positive_iou(SimpleNamespace()) is None  # not an anchor head


def _toy_anchor_grid(ny=4, nx=5):
    """(ny, nx, A=4, 7): two classes x headings (0, pi/2), 1 m cells."""
    ys, xs = torch.meshgrid(torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32), indexing="ij")
    slots = torch.tensor(
        [[3.9, 1.6, 1.56, 0.0], [3.9, 1.6, 1.56, math.pi / 2], [0.8, 0.6, 1.73, 0.0], [0.8, 0.6, 1.73, 1.57]]
    )
    grid = torch.zeros(ny, nx, 4, 7)
    grid[..., 0] = xs[..., None]
    grid[..., 1] = ys[..., None]
    grid[..., 2] = -1.0
    grid[..., 3:7] = slots
    return grid


def test_enlarge_positives_axis_no_wrap_and_targets():
    anchors = _toy_anchor_grid()
    labels = torch.zeros(1, 4, 5, 4, dtype=torch.int32)
    labels[0, 0, 2, 0] = 1  # heading 0 at the top row: spreads along y, only to row 1 (no wrap to row 3)
    labels[0, 2, 4, 1] = 1  # heading pi/2 at the right edge: spreads along x, only to column 3
    labels[0, 1, 1, 2] = 2  # second class, heading 0: rows 0 and 2
    labels[0, 3, 0, 3] = -1  # an ignored anchor stays ignored unless enlarged into
    gt = {
        (0, 2, 0): torch.tensor([2.3, 0.4, -0.9, 4.2, 1.7, 1.5, 0.1]),
        (2, 4, 1): torch.tensor([4.1, 2.2, -1.1, 3.7, 1.5, 1.6, 1.4]),
        (1, 1, 2): torch.tensor([1.2, 0.8, -0.8, 0.7, 0.65, 1.8, -0.2]),
    }
    targets = torch.zeros(1, 4, 5, 4, 7)
    for (y, x, a), box in gt.items():
        targets[0, y, x, a] = _residual_encode(box[None], anchors[y, x, a][None])[0]
    new_labels, new_targets, added = enlarge_positives(labels, targets, anchors, _residual_encode, _residual_decode)
    expected = {(1, 2, 0): (0, 2, 0), (2, 3, 1): (2, 4, 1), (0, 1, 2): (1, 1, 2), (2, 1, 2): (1, 1, 2)}
    assert sorted(map(tuple, added[0].nonzero().tolist())) == sorted(expected)
    assert new_labels[0, 3, 2, 0] == 0 and new_labels[0, 2, 0, 1] == 0  # no wrap-around
    for cell, source in expected.items():
        assert new_labels[(0, *cell)] == labels[(0, *source)]
        decoded = _residual_decode(new_targets[(0, *cell)][None], anchors[cell][None])[0]
        torch.testing.assert_close(decoded, gt[source], rtol=0, atol=1e-5)
    assert torch.equal(new_targets[~added], targets[~added]) and torch.equal(new_labels[~added], labels[~added])
    assert new_labels[0, 3, 0, 3] == -1


def test_residual_space_boxes_and_size_clamp():
    enc = torch.tensor([[0.1, -0.2, 0.3, 0.5, -0.5, 100.0, 0.2]], requires_grad=True)
    boxes = residual_space_boxes(enc)
    torch.testing.assert_close(boxes[0, :3], torch.tensor([0.1, -0.4, 0.6]))
    torch.testing.assert_close(boxes[0, 3:6], torch.exp(torch.tensor([0.5, -0.5, SIZE_LOG_CLAMP])))
    assert boxes[0, 6] == enc[0, 6]
    boxes[0, 5].backward()
    assert enc.grad[0, 5] != 0  # straight-through: a runaway size still gets a gradient back
    clamped = clamp_encoded_sizes(torch.tensor([[0.0, 0, 0, -1e9, 1e11, 0.5, 0]]))
    assert clamped[0, 3] == -SIZE_LOG_CLAMP and clamped[0, 4] == SIZE_LOG_CLAMP and clamped[0, 5] == 0.5


def test_quality_focal_loss_matches_formula():
    logits = torch.tensor([[-2.0, 0.5], [1.0, 3.0]])
    targets = torch.tensor([[0.0, 0.7], [0.0, 0.0]])
    p = torch.sigmoid(logits)
    expected = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)) * (targets - p).abs() ** 2
    torch.testing.assert_close(quality_focal_loss(logits, targets), expected)


# ------------------------------------------------------------------------------- real OpenPCDet
PCDET = pytest.mark.pcdet
ALL_AUGS = ["gt_sampling", "random_world_flip", "random_world_rotation", "random_world_scaling"]


def _dataset_cfg(cfg, root):
    data_cfg = cfg.DATA_CONFIG
    data_cfg.DATA_PATH = str(root)
    data_cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = list(ALL_AUGS)  # deterministic batch; no gt database needed
    return data_cfg


@pytest.fixture(scope="module")
def kitti_root(kitti_mini_tree):
    """The mini tree with ``kitti_infos_train.pkl`` written by OpenPCDet's own ``KittiDataset.get_infos``."""
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset

    cfg = load_config(MODELS_DIR / "pointpillar.yaml")
    info_file = kitti_mini_tree / "kitti_infos_train.pkl"
    if not info_file.exists():
        dataset = KittiDataset(
            _dataset_cfg(cfg, kitti_mini_tree), cfg.CLASS_NAMES, root_path=kitti_mini_tree, training=False
        )
        dataset.set_split("train")
        infos = dataset.get_infos(num_workers=1, has_label=True, count_inside_pts=True)
        info_file.write_bytes(pickle.dumps(infos))
    return kitti_mini_tree


def _dataset(name, root):
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset

    cfg = load_config(MODELS_DIR / f"{name}.yaml")
    return cfg, KittiDataset(_dataset_cfg(cfg, root), cfg.CLASS_NAMES, root_path=root, training=True, logger=None)


@pytest.fixture(scope="module")
def registered():
    from pcdet_gciou.openpcdet import register

    register()
    return True


@pytest.fixture(scope="module")
def pointpillar_frame(kitti_root, registered):
    """A real frame through PointPillars' backbone: (cfg, dataset, batch, detached BEV features)."""
    from pcdet.models import build_network, load_data_to_gpu

    torch.manual_seed(0)
    np.random.seed(0)  # training mode shuffles the points (numpy): a fixed frame, whatever ran before
    cfg, dataset = _dataset("pointpillar_gciou", kitti_root)
    counts = [int((dataset[i]["gt_boxes"][:, 3] > 0).sum()) for i in range(len(dataset))]
    index = max(range(len(dataset)), key=lambda i: counts[i])
    batch = dataset.collate_batch([dataset[index]])
    load_data_to_gpu(batch)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    model.train()
    features = dict(batch)
    with torch.no_grad():
        for module in model.module_list[:-1]:  # everything before the dense head
            features = module(features)
    return cfg, dataset, batch, features["spatial_features_2d"].detach()


def _head(frame, **loss_overrides):
    """A fresh AnchorHeadSingleGCIoU from the frame's config, with LOSS_CONFIG overrides."""
    from pcdet_gciou.openpcdet import AnchorHeadSingleGCIoU

    cfg, dataset, _, features = frame
    head_cfg = load_config(MODELS_DIR / "pointpillar_gciou.yaml").MODEL.DENSE_HEAD
    head_cfg.LOSS_CONFIG.update(loss_overrides)
    return build_dense_head(AnchorHeadSingleGCIoU, head_cfg, cfg, dataset, features)


def _run_head(head, frame):
    _, _, batch, features = frame
    head.train()
    head({"spatial_features_2d": features, "gt_boxes": batch["gt_boxes"], "batch_size": 1})
    return head.get_loss()


def _gt_boxes(frame):
    gt = frame[2]["gt_boxes"][0]
    return gt[gt[:, 3] > 0, :7]


def _matched_gt_error(boxes, gt):
    """For each box, the max-abs difference to its nearest GT box (heading compared mod 2pi)."""
    diff = (boxes[:, None, :] - gt[None, :, :]).abs()
    diff[..., 6] = torch.remainder(diff[..., 6] + math.pi, 2 * math.pi) - math.pi
    return diff.abs().amax(-1).min(-1).values


@PCDET
def test_register_is_idempotent_refuses_conflicts_and_leaves_host_untouched():
    from pcdet.models import dense_heads, roi_heads
    from pcdet.models.dense_heads import AnchorHeadSingle
    from pcdet.models.roi_heads import PVRCNNHead

    from pcdet_gciou.openpcdet import AnchorHeadSingleGCIoU, PVRCNNHeadGCIoU, register

    host_before = (dict(vars(AnchorHeadSingle)), dict(vars(PVRCNNHead)))
    register()
    assert register() == []
    assert dense_heads.__all__["AnchorHeadSingleGCIoU"] is AnchorHeadSingleGCIoU
    assert roi_heads.__all__["PVRCNNHeadGCIoU"] is PVRCNNHeadGCIoU
    assert dense_heads.__all__["AnchorHeadSingle"] is AnchorHeadSingle
    assert (dict(vars(AnchorHeadSingle)), dict(vars(PVRCNNHead))) == host_before

    impostor = type("AnchorHeadSingleGCIoU", (AnchorHeadSingle,), {})
    dense_heads.__all__["AnchorHeadSingleGCIoU"] = impostor
    try:
        with pytest.raises(ValueError, match="refusing"):
            register()
        assert dense_heads.__all__["AnchorHeadSingleGCIoU"] is impostor
    finally:
        dense_heads.__all__["AnchorHeadSingleGCIoU"] = AnchorHeadSingleGCIoU
    del dense_heads.__all__["AnchorHeadSingleGCIoU"]
    assert register() == ["AnchorHeadSingleGCIoU"]


@PCDET
@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_names_registered_modules_and_builds(path, kitti_root, registered):
    from pcdet.models import backbones_2d, backbones_3d, build_network, dense_heads, detectors, roi_heads
    from pcdet.models.backbones_2d import map_to_bev
    from pcdet.models.backbones_3d import pfe, vfe

    cfg, dataset = _dataset(path.stem, kitti_root)
    registries = {
        "VFE": vfe,
        "BACKBONE_3D": backbones_3d,
        "MAP_TO_BEV": map_to_bev,
        "PFE": pfe,
        "BACKBONE_2D": backbones_2d,
        "DENSE_HEAD": dense_heads,
        "POINT_HEAD": dense_heads,
        "ROI_HEAD": roi_heads,
    }
    assert cfg.MODEL.NAME in detectors.__all__
    for section, module in registries.items():
        if cfg.MODEL.get(section):
            assert cfg.MODEL[section].NAME in module.__all__, f"{section}.NAME {cfg.MODEL[section].NAME}"
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    assert type(model.dense_head).__name__ == cfg.MODEL.DENSE_HEAD.NAME
    if cfg.MODEL.get("ROI_HEAD"):
        assert type(model.roi_head).__name__ == cfg.MODEL.ROI_HEAD.NAME


@PCDET
def test_head_construction_rejects_unknown_loss_key(pointpillar_frame):
    with pytest.raises(ValueError, match="'SPACES'"):
        _head(pointpillar_frame, SPACES="decoded")


@PCDET
@pytest.mark.parametrize("space", ["decoded", "residual"])
def test_dense_head_loss_finite_logged_and_reaches_conv_box(pointpillar_frame, space):
    head = _head(pointpillar_frame, SPACE=space)
    loss, tb = _run_head(head, pointpillar_frame)
    assert torch.isfinite(loss)
    assert {"rpn_loss_cls", "rpn_loss_loc", "rpn_loss_dir", "rpn_loss", "rpn_iou_pos"} <= set(tb)
    assert all(math.isfinite(v) for v in tb.values())
    loss.backward()
    assert head.conv_box.weight.grad is not None and head.conv_box.weight.grad.abs().sum() > 0

    # independent recomputation of rpn_loss_loc and rpn_iou_pos from the forward outputs
    ret = head.forward_ret_dict
    positives = ret["box_cls_labels"][0] > 0
    anchors = torch.cat(head.anchors, dim=-3).view(-1, 7)[positives]
    pred = ret["box_preds"].detach().view(-1, 7)[positives]
    target = ret["box_reg_targets"][0][positives]
    if space == "decoded":
        pred_boxes, target_boxes = _residual_decode(pred, anchors), _residual_decode(target, anchors)
    else:
        pred_boxes = torch.cat([pred[:, :1], 2 * pred[:, 1:3], pred[:, 3:6].exp(), pred[:, 6:]], dim=-1)
        target_boxes = torch.cat([target[:, :1], 2 * target[:, 1:3], target[:, 3:6].exp(), target[:, 6:]], dim=-1)
    reg_loss = dict(load_config(MODELS_DIR / "pointpillar_gciou.yaml").MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS)
    expected = build_loss(reg_loss.pop("NAME"), **reg_loss)(pred_boxes, target_boxes).mean() * 1.0
    assert tb["rpn_loss_loc"] == pytest.approx(float(expected), rel=1e-4)
    decoded_iou = rotated_iou_3d(_residual_decode(pred, anchors), _residual_decode(target, anchors))
    assert tb["rpn_iou_pos"] == pytest.approx(float(decoded_iou.mean()), rel=1e-4, abs=1e-6)


@PCDET
def test_stock_head_logs_the_same_positive_iou(pointpillar_frame):
    # The training step logs rpn_iou_pos for OpenPCDet's own AnchorHeadSingle too (mean_positive_iou), so a
    # baseline run and a GCIoU run plot the same quantity: with identical weights the two heads agree.
    from pcdet.models.dense_heads import AnchorHeadSingle

    from pcdet_gciou.openpcdet.anchor_ops import mean_positive_iou

    cfg, dataset, batch, features = pointpillar_frame
    ours = _head(pointpillar_frame)
    _, tb = _run_head(ours, pointpillar_frame)
    stock_cfg = load_config(MODELS_DIR / "pointpillar.yaml").MODEL.DENSE_HEAD
    stock = build_dense_head(AnchorHeadSingle, stock_cfg, cfg, dataset, features)
    assert mean_positive_iou(stock) is None  # no training forward yet
    stock.train()
    stock({"spatial_features_2d": features, "gt_boxes": batch["gt_boxes"], "batch_size": 1})
    torch.testing.assert_close(stock.conv_box.weight, ours.conv_box.weight)
    assert 0.0 < mean_positive_iou(stock) == pytest.approx(tb["rpn_iou_pos"], rel=1e-6)


@PCDET
def test_decoded_targets_equal_matched_gt(pointpillar_frame):
    head = _head(pointpillar_frame)
    _run_head(head, pointpillar_frame)
    decoded = head.positives().target
    gt = _gt_boxes(pointpillar_frame)
    assert decoded.shape[0] >= gt.shape[0] >= 1
    assert _matched_gt_error(decoded, gt).max() < 1e-4
    # every GT box is the target of at least one positive
    err = (decoded[:, None, :6] - gt[None, :, :6]).abs().amax(-1)
    assert bool((err.min(0).values < 1e-4).all())


@PCDET
def test_one_optimiser_step_lowers_regression_loss(pointpillar_frame):
    head = _head(pointpillar_frame)
    params = [head.conv_box.weight, head.conv_box.bias]
    _, before = _run_head(head, pointpillar_frame)
    box_loss, _ = head.get_box_reg_layer_loss()
    box_loss.backward()
    # a gradient step of fixed length 0.01 in parameter space: small enough for a smooth loss to descend
    grad_norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    torch.optim.SGD(params, lr=0.01 / float(grad_norm)).step()
    _, after = _run_head(head, pointpillar_frame)
    assert after["rpn_loss_loc"] < before["rpn_loss_loc"]


@PCDET
def test_keep_smooth_l1_adds_the_host_term(pointpillar_frame):
    plain = _head(pointpillar_frame)
    kept = _head(pointpillar_frame, KEEP_SMOOTH_L1=True)
    loss_plain, tb_plain = _run_head(plain, pointpillar_frame)
    loss_kept, tb_kept = _run_head(kept, pointpillar_frame)
    assert tb_kept["rpn_loss_loc_smooth_l1"] > 0
    assert float(loss_kept - loss_plain) == pytest.approx(tb_kept["rpn_loss_loc_smooth_l1"], rel=1e-4)


@PCDET
def test_positives_are_decoded_once_per_step(pointpillar_frame):
    from pcdet_gciou.openpcdet.anchor_ops import mean_positive_iou

    head = _head(pointpillar_frame, IOU_QUALITY_FOCAL=True)
    calls = []
    decode = head.box_coder.decode_torch
    head.box_coder.decode_torch = lambda *args: calls.append(1) or decode(*args)
    for step in range(2):
        _, tb = _run_head(head, pointpillar_frame)  # QFL, the IoU loss and rpn_iou_pos
        assert mean_positive_iou(head) == tb["rpn_iou_pos"]
        assert len(calls) == 2 * (step + 1)  # predictions and targets, once each per step
    assert head.positives() is head.positives()


@PCDET
def test_quality_focal_soft_targets_equal_detached_iou(pointpillar_frame):
    head = _head(pointpillar_frame, IOU_QUALITY_FOCAL=True)
    _, tb = _run_head(head, pointpillar_frame)
    soft = head.positives().loss_space_iou
    ret = head.forward_ret_dict
    mask = ret["box_cls_labels"][0] > 0
    anchors = torch.cat(head.anchors, dim=-3).view(-1, 7)[mask]
    pred = ret["box_preds"].detach().view(-1, 7)[mask]
    iou = rotated_iou_3d(_residual_decode(pred, anchors), _residual_decode(ret["box_reg_targets"][0][mask], anchors))
    torch.testing.assert_close(soft, iou, rtol=1e-5, atol=1e-6)
    assert not soft.requires_grad

    # the logged cls loss is the documented QFL: 0.25 * sum over cared anchors / #positives
    labels = ret["box_cls_labels"][0]
    logits = ret["cls_preds"].detach().view(-1, 3)
    targets = torch.zeros_like(logits)
    targets[mask.nonzero()[:, 0], (labels[mask] - 1).long()] = iou
    cared = (labels >= 0).float()
    expected = 0.25 * (quality_focal_loss(logits, targets).sum(-1) * cared).sum() / mask.sum()
    assert tb["rpn_loss_cls"] == pytest.approx(float(expected), rel=1e-4)


@PCDET
def test_enlarge_positives_on_real_frame(pointpillar_frame):
    plain = _head(pointpillar_frame)
    enlarged = _head(pointpillar_frame, ENLARGE_POSITIVES=True)
    _run_head(plain, pointpillar_frame)
    loss, tb = _run_head(enlarged, pointpillar_frame)
    assert torch.isfinite(loss)
    before = plain.forward_ret_dict["box_cls_labels"][0]
    after = enlarged.forward_ret_dict["box_cls_labels"][0]
    assert bool((after[before > 0] == before[before > 0]).all())
    added = (after > 0) & ~(before > 0)
    assert int(added.sum()) > 0
    grid = enlarged._anchor_grid()
    ny, nx, slots = grid.shape[:3]
    cells = added.view(ny, nx, slots).nonzero()
    pos = (before > 0).view(ny, nx, slots)
    for y, x, a in cells.tolist():  # each new positive neighbours an old one across its heading
        along_y = abs(math.cos(float(grid[0, 0, a, 6]))) >= abs(math.sin(float(grid[0, 0, a, 6])))
        neighbours = [(y - 1, x), (y + 1, x)] if along_y else [(y, x - 1), (y, x + 1)]
        assert any(0 <= j < ny and 0 <= i < nx and bool(pos[j, i, a]) for j, i in neighbours)
    # their regression targets decode to a GT box, and their anchors are the new cells' anchors
    targets = enlarged.forward_ret_dict["box_reg_targets"][0][added]
    decoded = _residual_decode(targets, grid.view(-1, 7)[added])
    assert _matched_gt_error(decoded, _gt_boxes(pointpillar_frame)).max() < 1e-4


# -------------------------------------------------------------------------------------- RoI head
def _synthetic_roi_batch(num_rois=16, seed=0):
    """A forward_ret_dict like PVRCNNHead's after assign_targets, built from random RoIs/GT."""
    from pcdet.utils import common_utils

    gen = torch.Generator().manual_seed(seed)
    rois = torch.cat(
        [
            torch.rand(1, num_rois, 3, generator=gen) * 20,
            torch.tensor([3.9, 1.6, 1.56]).expand(1, num_rois, 3)
            * (0.8 + 0.4 * torch.rand(1, num_rois, 3, generator=gen)),
            (torch.rand(1, num_rois, 1, generator=gen) - 0.5) * 2 * math.pi,
        ],
        dim=-1,
    )
    gt_src = rois.clone()
    gt_src[..., :3] += 0.3 * torch.randn(1, num_rois, 3, generator=gen)
    gt_src[..., 3:6] *= 1 + 0.1 * torch.randn(1, num_rois, 3, generator=gen)
    gt_src[..., 6] += 0.3 * torch.randn(1, num_rois, generator=gen)
    # the host's canonical transform (roi_head_template.assign_targets)
    gt_ct = gt_src.clone()
    gt_ct[..., :3] -= rois[..., :3]
    gt_ct[..., 6] -= rois[..., 6]
    gt_ct = common_utils.rotate_points_along_z(gt_ct.view(-1, 1, 7), -rois.view(-1, 7)[:, 6]).view(1, num_rois, 7)
    heading = gt_ct[..., 6] % (2 * math.pi)
    flip = (heading > math.pi / 2) & (heading < 3 * math.pi / 2)
    heading[flip] = (heading[flip] + math.pi) % (2 * math.pi)
    heading[heading > math.pi] -= 2 * math.pi
    gt_ct[..., 6] = heading
    valid = torch.zeros(1, num_rois, dtype=torch.long)
    valid[0, : num_rois // 2 + 1] = 1
    return {
        "rois": rois,
        "gt_of_rois": torch.cat([gt_ct, torch.ones(1, num_rois, 1)], -1),
        "gt_of_rois_src": torch.cat([gt_src, torch.ones(1, num_rois, 1)], -1),
        "reg_valid_mask": valid,
        "rcnn_reg": (0.05 * torch.randn(num_rois, 7, generator=gen)).requires_grad_(),
    }


def _roi_head(enabled, mode="add"):
    from pcdet_gciou.openpcdet import PVRCNNHeadGCIoU

    cfg = load_config(MODELS_DIR / "pv_rcnn_gciou.yaml").MODEL.ROI_HEAD
    cfg.LOSS_CONFIG.IOU_REG_LOSS.ENABLED = enabled
    cfg.LOSS_CONFIG.IOU_REG_LOSS.MODE = mode
    return PVRCNNHeadGCIoU(input_channels=128, model_cfg=cfg, num_class=1)


@PCDET
def test_roi_head_iou_loss_modes(registered):
    from pcdet.models.roi_heads import PVRCNNHead

    batch = _synthetic_roi_batch()
    stock_cfg = load_config(MODELS_DIR / "pv_rcnn.yaml").MODEL.ROI_HEAD
    stock_loss, stock_tb = PVRCNNHead(input_channels=128, model_cfg=stock_cfg, num_class=1).get_box_reg_layer_loss(
        batch
    )

    off_loss, off_tb = _roi_head(False).get_box_reg_layer_loss(batch)
    assert float(off_loss) == pytest.approx(float(stock_loss)) and off_tb == stock_tb

    fg = batch["reg_valid_mask"][0] > 0
    rois = batch["rois"][0][fg]
    local = rois.clone()
    local[:, [0, 1, 2, 6]] = 0
    pred = _residual_decode(batch["rcnn_reg"].detach()[fg], local)
    target = batch["gt_of_rois"][0][fg][:, :7]
    roi_loss = dict(load_config(MODELS_DIR / "pv_rcnn_gciou.yaml").MODEL.ROI_HEAD.LOSS_CONFIG.IOU_REG_LOSS.LOSS)
    expected_iou = build_loss(roi_loss.pop("NAME"), **roi_loss)(pred, target).sum() / fg.sum()
    # an IoU is frame-independent: the world-frame pair gives the same IoU as the canonical one
    from pcdet.utils import common_utils

    world = common_utils.rotate_points_along_z(pred.view(-1, 1, 7), rois[:, 6]).view(-1, 7).clone()
    world[:, :3] += rois[:, :3]
    world[:, 6] += rois[:, 6]
    torch.testing.assert_close(
        rotated_iou_3d(world, batch["gt_of_rois_src"][0][fg][:, :7]), rotated_iou_3d(pred, target), rtol=1e-4, atol=1e-5
    )

    add_loss, add_tb = _roi_head(True, "add").get_box_reg_layer_loss(batch)
    assert add_tb["rcnn_loss_iou"] == pytest.approx(float(expected_iou), rel=1e-4)
    assert float(add_loss) == pytest.approx(float(stock_loss) + float(expected_iou), rel=1e-4)
    assert add_tb["rcnn_loss_reg"] == stock_tb["rcnn_loss_reg"]

    replace_loss, replace_tb = _roi_head(True, "replace").get_box_reg_layer_loss(batch)
    assert "rcnn_loss_reg" not in replace_tb
    assert replace_tb["rcnn_loss_corner"] == pytest.approx(stock_tb["rcnn_loss_corner"], rel=1e-5)
    assert float(replace_loss) == pytest.approx(stock_tb["rcnn_loss_corner"] + float(expected_iou), rel=1e-4)
    replace_loss.backward()
    assert batch["rcnn_reg"].grad[fg].abs().sum() > 0 and batch["rcnn_reg"].grad[~fg].abs().sum() == 0

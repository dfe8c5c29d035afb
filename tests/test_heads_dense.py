"""The GCIoU centre and multi-head anchor heads on real KITTI frames (CPU, through the portable layer)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from head_builder import build_dense_head

from pcdet_gciou.config import load_config
from pcdet_gciou.losses import build_loss, gciou_loss, gciou_loss_and_iou
from pcdet_gciou.openpcdet.positives import (
    Positives,
    SharedGatherRegLoss,
    decode_center_boxes,
    gather_center_rows,
    grouped_box_loss,
    grouped_box_loss_and_iou,
)

PCDET = pytest.mark.pcdet
MODELS_DIR = Path(__file__).resolve().parents[1] / "cfgs" / "kitti_models"
ALL_AUGS = ["gt_sampling", "random_world_flip", "random_world_rotation", "random_world_scaling"]


def _dataset(name, root):
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset

    cfg = load_config(MODELS_DIR / f"{name}.yaml")
    cfg.DATA_CONFIG.DATA_PATH = str(root)
    cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST = list(ALL_AUGS)
    return cfg, KittiDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, root_path=root, training=True, logger=None)


@pytest.fixture(scope="module")
def kitti_root(kitti_mini_tree):
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset

    info_file = kitti_mini_tree / "kitti_infos_train.pkl"
    if not info_file.exists():
        cfg = load_config(MODELS_DIR / "second.yaml")
        cfg.DATA_CONFIG.DATA_PATH = str(kitti_mini_tree)
        dataset = KittiDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, root_path=kitti_mini_tree, training=False)
        dataset.set_split("train")
        info_file.write_bytes(pickle.dumps(dataset.get_infos(num_workers=1, has_label=True, count_inside_pts=True)))
    return kitti_mini_tree


@pytest.fixture(scope="module")
def second_features(kitti_root):
    """Two real frames through SECOND's backbone (shared by both KITTI heads): (dataset, batch, BEV features)."""
    from pcdet.models import build_network, load_data_to_gpu

    from pcdet_gciou.openpcdet import register

    register()
    torch.manual_seed(0)
    np.random.seed(0)  # training mode shuffles the points (numpy), which changes the voxels and so the features
    cfg, dataset = _dataset("centerpoint", kitti_root)
    counts = [int((dataset[i]["gt_boxes"][:, 3] > 0).sum()) for i in range(len(dataset))]
    order = sorted(range(len(dataset)), key=lambda i: -counts[i])[:2]
    batch = dataset.collate_batch([dataset[i] for i in order])
    load_data_to_gpu(batch)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    features = dict(batch)
    with torch.no_grad():
        for module in model.module_list[:-1]:
            features = module(features)
    return dataset, batch, features["spatial_features_2d"].detach()


def _head(name, frame, seed=0, **loss_overrides):
    from pcdet.models import dense_heads

    dataset, _, features = frame
    cfg = load_config(MODELS_DIR / f"{name}.yaml")
    head_cfg = cfg.MODEL.DENSE_HEAD
    head_cfg.LOSS_CONFIG.update(loss_overrides)
    return build_dense_head(dense_heads.__all__[head_cfg.NAME], head_cfg, cfg, dataset, features, seed)


def _run(head, frame):
    _, batch, features = frame
    head.train()
    # a copy: the host's CenterHead.assign_targets relabels the classes of the gt_boxes it is given, in place
    head({"spatial_features_2d": features, "gt_boxes": batch["gt_boxes"].clone(), "batch_size": features.shape[0]})
    return head.get_loss()


def _gt(frame):
    gt = frame[1]["gt_boxes"]
    return gt[gt[..., 3] > 0][:, :7]


def _nearest_gt_error(boxes, gt):
    diff = (boxes[:, None, :] - gt[None, :, :]).abs()
    diff[..., 6] = torch.remainder(diff[..., 6] + math.pi, 2 * math.pi) - math.pi
    return diff.abs().amax(-1).min(-1).values


def _heading_sensitivity(positives):
    """GCIoU on the GT vs the GT turned by 0.5 rad, and the host's axis-aligned DIoU on the same pairs."""
    from pcdet.utils.box_utils import bbox3d_overlaps_diou

    gt = positives.target
    turned = gt.clone()
    turned[:, 6] += 0.5
    gciou = build_loss("gciou", g="exp")
    return (gciou(gt, gt), gciou(turned, gt)), (bbox3d_overlaps_diou(gt, gt), bbox3d_overlaps_diou(turned, gt))


@PCDET
def test_centerpoint_gciou_step_on_real_frames(second_features):
    from pcdet.models.model_utils import centernet_utils

    head = _head("centerpoint_gciou", second_features)
    loss, tb = _run(head, second_features)
    assert torch.isfinite(loss) and 0.0 < tb["iou_pos"] < 1.0
    assert {"reg_iou_loss_head_0", "reg_iou_loss_head_1", "iou_pos_head_0", "iou_pos_head_1"} <= set(tb)
    assert tb["loc_loss_head_0"] == 0.0  # KEEP_L1 False: no velocity, so no L1 term left
    gt = _gt(second_features)
    targets = head.forward_ret_dict["target_dicts"]
    for idx, (positives, pred_dict) in enumerate(zip(head.positives(), head.forward_ret_dict["pred_dicts"])):
        mask = targets["masks"][idx] > 0
        batch, slot = mask.nonzero(as_tuple=True)
        cells = targets["inds"][idx][batch, slot]
        width = pred_dict["center"].shape[-1]
        cell_xy = torch.stack([cells % width, cells // width], -1)
        # the host's regression targets, decoded our way, are the GT boxes
        encoded = targets["target_boxes"][idx][batch, slot]
        decoded = decode_center_boxes(
            encoded[:, 0:2], encoded[:, 2:3], encoded[:, 3:6], encoded[:, 6:8], cell_xy, *head._geometry
        )
        assert _nearest_gt_error(decoded, gt).max() < 1e-4
        assert _nearest_gt_error(positives.target, gt).max() < 1e-6
        # our decoded predictions equal the host's own decoder read at the same cells
        host = centernet_utils.decode_bbox_from_pred_dicts(
            pred_dict, head.point_cloud_range, head.voxel_size, head.feature_map_stride
        )
        torch.testing.assert_close(positives.pred, host[batch, cell_xy[:, 1], cell_xy[:, 0]], rtol=1e-5, atol=1e-5)
    loss.backward()
    for task in head.heads_list:
        for name in ("dim", "rot"):
            assert float(getattr(task, name)[-1].weight.grad.abs().sum()) > 0, name
        # centre and z are in the graph, but a task's gradient may be exactly 0: -ln(IoU) does not move a box
        # nested in the other (at initialisation the 1 m predictions often sit inside a car, or around a
        # pedestrian), nor one that does not overlap at all; so the centre gradient is asserted over all tasks
        assert task.center[-1].weight.grad is not None and task.center_z[-1].weight.grad is not None
    assert sum(float(task.center[-1].weight.grad.abs().sum()) for task in head.heads_list) > 0
    (same, turned), (diou_same, diou_turned) = _heading_sensitivity(head.positives()[0])
    assert bool((turned > same + 0.1).all())
    torch.testing.assert_close(diou_turned, diou_same)


def _random_groups(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    groups = []
    for size in sizes:
        target = torch.rand(size, 7, generator=generator) * torch.tensor([10, 10, 1, 4, 2, 1.5, 3.0]) + 0.5
        pred = (target + 0.3 * torch.randn(size, 7, generator=generator)).requires_grad_()
        groups.append(Positives(pred=pred, target=target, weights=torch.rand(size, generator=generator)))
    return groups


@pytest.mark.parametrize("options", [{}, {"g": "exp", "grad_rescale": True}, {"alpha": 3.0, "p_form": "linear"}])
def test_gciou_loss_and_iou_is_the_loss_and_its_iou(options):
    from pcdet_gciou.geometry import rotated_iou_3d

    (group,) = _random_groups([6])
    for reduction in ("none", "mean", "sum"):
        loss, iou = gciou_loss_and_iou(group.pred, group.target, group.weights, reduction=reduction, **options)
        expected = gciou_loss(group.pred, group.target, group.weights, reduction=reduction, **options)
        assert torch.equal(loss, expected) and loss.requires_grad and not iou.requires_grad
        torch.testing.assert_close(iou, rotated_iou_3d(group.pred, group.target).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gciou", "log_iou"])
def test_grouped_box_loss_and_iou_equals_the_loss_and_the_logged_iou(name):
    groups = _random_groups([3, 0, 5])
    criterion = build_loss(name)
    terms, iou = grouped_box_loss_and_iou(groups, criterion, 2.0)
    expected = grouped_box_loss(groups, criterion, 2.0)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(terms, expected))
    assert torch.equal(iou, Positives.concat(groups).iou) and float(iou.min()) >= 0.0
    grads = torch.autograd.grad(sum(terms), [g.pred for g in groups if len(g.weights)])
    expected_grads = torch.autograd.grad(sum(expected), [g.pred for g in groups if len(g.weights)])
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(grads, expected_grads))
    empty_terms, empty_iou = grouped_box_loss_and_iou(_random_groups([0]), criterion, 2.0)
    assert float(empty_terms[0]) == 0.0 and empty_iou.shape == (0,)
    groups[0].loss_pred, groups[0].loss_target = groups[0].pred, groups[0].target
    with pytest.raises(ValueError, match="decoded-space"):
        grouped_box_loss_and_iou(groups, criterion, 2.0)


@PCDET
def test_shared_gather_reg_loss_equals_the_hosts_l1():
    from pcdet.utils.loss_utils import RegLossCenterNet, _transpose_and_gather_feat

    torch.manual_seed(0)
    maps = torch.randn(2, 10, 6, 7, requires_grad=True)
    inds = torch.randint(0, 42, (2, 9))
    mask = torch.rand(2, 9) > 0.4
    target = torch.randn(2, 9, 10)
    rows = gather_center_rows(maps, inds)
    assert torch.equal(rows, _transpose_and_gather_feat(maps, inds))
    keep = torch.tensor([0.0] * 8 + [1.0] * 2)
    for scale, expected_scale in ((None, torch.ones(10)), (keep, keep)):
        host = RegLossCenterNet()(maps, mask, inds, target) * expected_scale
        (host_grad,) = torch.autograd.grad(host.sum(), maps)
        shared = SharedGatherRegLoss(RegLossCenterNet(), scale)
        ours = shared(maps, mask, inds, target)
        (ours_grad,) = torch.autograd.grad(ours.sum(), maps)
        assert torch.equal(ours, host) and torch.equal(ours_grad, host_grad)
        assert shared.rows_for(inds) is shared.gathered[0][1] and shared.rows_for(inds.clone()) is None


@PCDET
def test_centerpoint_iou_term_reuses_the_hosts_gather(second_features):
    """The IoU term reads the rows the host's L1 gathered (one gather per task head): same boxes, same loss and
    same gradients to the maps as a gather of its own."""
    from pcdet_gciou.openpcdet.positives import grouped_box_loss

    head = _head("centerpoint_gciou", second_features, KEEP_L1=True)
    _run(head, second_features)
    targets, preds = head.forward_ret_dict["target_dicts"], head.forward_ret_dict["pred_dicts"]
    gathered = head.reg_loss_func.gathered
    assert len(gathered) == len(preds) and all(key is ind for (key, _), ind in zip(gathered, targets["inds"]))
    shared = head.positives()
    host_rows = [rows for _, rows in gathered]
    assert all(
        g is not None for g in torch.autograd.grad(sum(p.pred.sum() for p in shared), host_rows, retain_graph=True)
    )
    gathered.clear()
    head._positives_cache = None
    own = head.positives()  # nothing to reuse: gathered from the maps here
    assert own is not shared and own[0].pred.grad_fn is not shared[0].pred.grad_fn
    maps = [pred_dict[name] for pred_dict in preds for name in head.separate_head_cfg.HEAD_ORDER]
    results = []
    for positives in (shared, own):
        total = sum(grouped_box_loss(positives, head.iou_loss_func, head.loss_options.iou_weight))
        results.append((total, *torch.autograd.grad(total, maps, retain_graph=True)))
        assert torch.equal(positives[0].pred, own[0].pred) and torch.equal(positives[1].pred, own[1].pred)
    assert float(results[0][0].abs()) > 0
    for mine, theirs in zip(*results):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@PCDET
def test_centerpoint_keep_l1_adds_exactly_the_iou_terms_to_the_host(second_features):
    from pcdet.models import dense_heads

    ours = _head("centerpoint_gciou", second_features, KEEP_L1=True)
    host = _head("centerpoint", second_features)
    assert type(host) is dense_heads.CenterHead
    loss_ours, tb_ours = _run(ours, second_features)
    loss_host, tb_host = _run(host, second_features)
    assert tb_host["loc_loss_head_0"] > 0
    for key, value in tb_host.items():  # every host term is there, unchanged (float summation noise aside)
        if key == "rpn_loss":  # the total, ours includes the IoU terms
            continue
        assert tb_ours[key] == pytest.approx(value, rel=1e-6), key
    host_terms = sum(v for k, v in tb_ours.items() if k.startswith(("hm_loss_head", "loc_loss_head")))
    iou_terms = tb_ours["reg_iou_loss_head_0"] + tb_ours["reg_iou_loss_head_1"]
    assert float(loss_ours) == pytest.approx(host_terms + iou_terms, rel=1e-5)
    # normalised like the host's L1: sum over the positives / (their number + 1e-4), per task head
    for positives, mask in zip(ours.positives(), ours.forward_ret_dict["target_dicts"]["masks"]):
        torch.testing.assert_close(positives.weights, torch.full_like(positives.weights, 1 / (mask.sum() + 1e-4)))


@PCDET
def test_second_multihead_gciou_step_on_real_frames(second_features):
    from pcdet_gciou.openpcdet.anchor_ops import mean_positive_iou

    head = _head("second_multihead_gciou", second_features)
    loss, tb = _run(head, second_features)
    assert torch.isfinite(loss) and 0.0 < tb["rpn_iou_pos"] < 1.0 and tb["rpn_loss_dir"] > 0
    positives = head.positives()
    assert _nearest_gt_error(positives.target, _gt(second_features)).max() < 1e-4
    labels = head.forward_ret_dict["box_cls_labels"]
    per_sample = (labels > 0).sum(1).float()
    expected = (1.0 / (labels.shape[0] * per_sample))[(labels > 0).nonzero()[:, 0]]
    torch.testing.assert_close(positives.weights, expected)
    assert mean_positive_iou(head) == tb["rpn_iou_pos"]
    loss.backward()
    present = set(labels[labels > 0].tolist())
    assert len(present) >= 2
    for rpn_head in head.rpn_heads:  # one per class: a head's own box conv is trained iff its class has positives
        has_positives = bool(present & set(rpn_head.head_label_indices.tolist()))
        assert (float(rpn_head.conv_box.weight.grad.abs().sum()) > 0) == has_positives
    (same, turned), (diou_same, diou_turned) = _heading_sensitivity(positives)
    assert bool((turned > same + 0.1).all())
    torch.testing.assert_close(diou_turned, diou_same)

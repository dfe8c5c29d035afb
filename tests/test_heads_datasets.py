"""Waymo and nuScenes GCIoU models, built from their configs, train one step on a real KITTI frame expressed in
that dataset's point format (no Waymo or nuScenes data exists here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from head_builder import build_dense_head

from pcdet_gciou.config import load_config

CFGS = Path(__file__).resolve().parents[1] / "cfgs"
#: KITTI class -> (Waymo name, nuScenes name)
CLASS_MAP = {"Car": ("Vehicle", "car"), "Pedestrian": ("Pedestrian", "pedestrian"), "Cyclist": ("Cyclist", "bicycle")}
MODELS = [
    "waymo_models/centerpoint_gciou",
    "waymo_models/second_gciou",
    "waymo_models/pointpillar_1x_gciou",
    "waymo_models/pv_rcnn_gciou",
    "nuscenes_models/cbgs_voxel0075_res3d_centerpoint_gciou",
    "nuscenes_models/cbgs_pp_multihead_gciou",
    "nuscenes_models/cbgs_voxel0075_voxelnext_gciou",
    "nuscenes_models/transfusion_lidar_gciou",
]


@pytest.fixture(scope="module")
def kitti_frame(kitti_mini_tree):
    """(points (N, 4) x y z intensity, lidar boxes (M, 7), KITTI class names) of the first mini frame with cars."""
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset
    from pcdet.utils import box_utils

    cfg = load_config(CFGS / "kitti_models" / "second.yaml")
    cfg.DATA_CONFIG.DATA_PATH = str(kitti_mini_tree)
    dataset = KittiDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, root_path=kitti_mini_tree, training=False)
    dataset.set_split("train")
    for sample in dataset.sample_id_list:
        objects = [o for o in dataset.get_label(sample) if o.cls_type in CLASS_MAP]
        if any(o.cls_type == "Car" for o in objects):
            break
    camera = np.array([[*o.loc, o.l, o.h, o.w, o.ry] for o in objects], dtype=np.float32)
    boxes = box_utils.boxes3d_kitti_camera_to_lidar(camera, dataset.get_calib(sample))
    return dataset.get_lidar(sample), boxes, [o.cls_type for o in objects]


def _stub_dataset(cfg):
    """OpenPCDet's DatasetTemplate with the config's point features, voxeliser and no augmentation."""
    from pcdet.datasets.dataset import DatasetTemplate

    cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST = [a.NAME for a in cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST]
    return DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=True, logger=None)


def _frame_in_format(frame, dataset_name):
    """KITTI points and boxes as a Waymo (x y z intensity elongation) or nuScenes (x y z intensity time-lag) frame."""
    points, boxes, names = frame
    waymo = dataset_name == "WaymoDataset"
    extra = np.zeros((points.shape[0], 1), dtype=points.dtype)  # elongation 0 / time lag 0 (the key frame)
    points = np.concatenate([points, extra], axis=1)
    if not waymo:  # nuScenes boxes carry (vx, vy)
        boxes = np.concatenate([boxes, np.zeros((boxes.shape[0], 2), dtype=boxes.dtype)], axis=1)
    mapped = np.array([CLASS_MAP[name][0 if waymo else 1] for name in names])
    return {"points": points, "gt_boxes": boxes, "gt_names": mapped, "frame_id": "kitti"}


@pytest.mark.pcdet
@pytest.mark.parametrize("name", MODELS)
def test_model_trains_one_step_on_a_kitti_frame_in_its_dataset_format(name, kitti_frame, monkeypatch):
    from pcdet.models import build_network, load_data_to_gpu

    from pcdet_gciou.openpcdet import register

    register()
    # OpenPCDet's BaseBEVBackbone uses np.int (removed in numpy 1.24) for fractional UPSAMPLE_STRIDES (nuScenes
    # PointPillars' 0.5) and for stride 1 with USE_CONV_FOR_NO_STRIDE (TransFusion-L); restore the alias it expects
    # for this test only
    monkeypatch.setattr(np, "int", int, raising=False)
    cfg = load_config(CFGS / f"{name}.yaml")
    dataset = _stub_dataset(cfg)
    assert dataset.point_feature_encoder.num_point_features == 5
    np.random.seed(0)  # the point shuffle
    batch = dataset.collate_batch([dataset.prepare_data(_frame_in_format(kitti_frame, cfg.DATA_CONFIG.DATASET))])
    load_data_to_gpu(batch)
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    assert type(model.dense_head).__name__ == cfg.MODEL.DENSE_HEAD.NAME
    model.train()
    ret, tb, _ = model(batch)
    loss = ret["loss"]
    assert torch.isfinite(loss)
    iou_key = "rpn_iou_pos" if cfg.MODEL.DENSE_HEAD.NAME.startswith("Anchor") else "iou_pos"
    assert 0.0 <= tb[iou_key] <= 1.0  # nuScenes PointPillars' separate 3x3 reg convs can start at IoU 0
    loss.backward()
    positives = model.dense_head.positives()
    positives = positives if isinstance(positives, list) else [positives]
    pred, target = torch.cat([p.pred for p in positives]), torch.cat([p.target for p in positives])
    assert pred.shape[0] > 0 and pred.grad_fn is not None
    gt = batch["gt_boxes"][0][:, :7]
    error = (target[:, None, :6] - gt[None, :, :6]).abs().amax(-1).min(-1).values
    assert float(error.max()) < 1e-3  # the decoded targets are the frame's boxes
    grads = [p.grad for n, p in model.dense_head.named_parameters() if "box" in n or "center" in n or "dim" in n]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    if model.roi_head is not None:  # PV-RCNN: the second stage trains too
        roi_grads = [p.grad for n, p in model.roi_head.named_parameters() if n.startswith("reg_layers")]
        assert roi_grads and all(g is not None and bool(torch.isfinite(g).all()) for g in roi_grads)


@pytest.fixture(scope="module")
def transfusion_features(kitti_frame):
    """(config, batch, BEV features) of the KITTI frame in nuScenes format through TransFusion-L's backbone."""
    from pcdet.models import build_network, load_data_to_gpu

    from pcdet_gciou.openpcdet import register

    register()
    cfg = load_config(CFGS / "nuscenes_models" / "transfusion_lidar_gciou.yaml")
    dataset = _stub_dataset(cfg)
    np.random.seed(0)  # the point shuffle
    batch = dataset.collate_batch([dataset.prepare_data(_frame_in_format(kitti_frame, cfg.DATA_CONFIG.DATASET))])
    load_data_to_gpu(batch)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:  # np.int in OpenPCDet's BaseBEVBackbone (see the test above)
        patch.setattr(np, "int", int, raising=False)
        model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    features = dict(batch)
    with torch.no_grad():
        for module in model.module_list[:-1]:
            features = module(features)
    return cfg, dataset, batch, features["spatial_features_2d"]


def _transfusion_head(setup, gt_boxes=None, dropout=None, **loss_overrides):
    """A fresh TransFusionHeadGCIoU (seed 0) run on the fixture's features in training mode: (head, loss, tb).

    ``gt_boxes`` (B, M, 10) replaces the frame's boxes; the features are repeated to its batch size."""
    from pcdet.models.dense_heads import __all__ as dense_heads

    cfg, dataset, batch, features = setup
    gt_boxes = batch["gt_boxes"] if gt_boxes is None else gt_boxes
    features = features.expand(gt_boxes.shape[0], -1, -1, -1).contiguous()
    head_cfg = load_config(CFGS / "nuscenes_models" / "transfusion_lidar_gciou.yaml").MODEL.DENSE_HEAD
    head_cfg.LOSS_CONFIG.update(loss_overrides)
    if dropout is not None:
        head_cfg.DROPOUT = dropout
    head = build_dense_head(dense_heads[head_cfg.NAME], head_cfg, cfg, dataset, features)
    head.train()
    out = head({"spatial_features_2d": features, "gt_boxes": gt_boxes.clone(), "batch_size": gt_boxes.shape[0]})
    return head, out["loss"], out["tb_dict"]


@pytest.mark.pcdet
def test_transfusion_gciou_adds_the_iou_term_on_the_matched_queries(transfusion_features):
    from pcdet_gciou.losses import gciou_loss

    keep, keep_loss, keep_tb = _transfusion_head(transfusion_features, KEEP_L1=True)
    positives = keep.positives()
    gt = transfusion_features[2]["gt_boxes"][0]
    gt = gt[gt[:, 3] > 0][:, :7]
    assert positives.pred.shape[0] == gt.shape[0]  # one query per GT box (Hungarian matching)
    diff = (positives.target[:, None, :] - gt[None, :, :]).abs()
    diff[..., 6] = torch.remainder(diff[..., 6] + np.pi, 2 * np.pi) - np.pi  # headings equal modulo 2 pi
    assert float(diff.abs().amax(-1).min(-1).values.max()) < 1e-4  # the encoded targets decode to the frame's boxes
    options = {k: v for k, v in transfusion_features[0].MODEL.DENSE_HEAD.LOSS_CONFIG.REG_LOSS.items() if k != "NAME"}
    expected = gciou_loss(positives.pred, positives.target, reduction="sum", **options) / gt.shape[0]
    assert keep_tb["loss_iou_box"] == pytest.approx(float(expected), rel=1e-5)
    host = keep_tb["loss_heatmap"] + keep_tb["loss_cls"] + keep_tb["loss_bbox"]
    assert float(keep_loss) == pytest.approx(host + float(expected), rel=1e-5)
    assert 0.0 <= keep_tb["iou_pos"] <= 1.0 and keep_tb["loss_trans"] == pytest.approx(float(keep_loss))

    replace, _, replace_tb = _transfusion_head(transfusion_features, KEEP_L1=False)
    pred_dicts, targets, weights = replace._last_targets
    preds = torch.cat([pred_dicts[n] for n in ("center", "height", "dim", "rot", "vel")], dim=1).permute(0, 2, 1)
    code_weights = torch.tensor(replace.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS.code_weights)
    velocity_l1 = ((preds - targets).abs() * weights * code_weights)[..., 8:].sum() / gt.shape[0]
    assert replace_tb["loss_bbox"] == pytest.approx(0.25 * float(velocity_l1), rel=1e-5)  # bbox_weight 0.25
    assert replace_tb["loss_heatmap"] == pytest.approx(keep_tb["loss_heatmap"])
    assert replace_tb["loss_bbox"] < keep_tb["loss_bbox"]


@pytest.mark.pcdet
def test_transfusion_decoder_and_assigner_cost_match_the_hosts_on_cpu(transfusion_features, monkeypatch):
    shapely = pytest.importorskip("shapely.geometry", reason="the BEV reference needs shapely")
    from pcdet.models.dense_heads.target_assigner.hungarian_assigner import height_overlaps
    from pcdet.models.dense_heads.transfusion_head import TransFusionHead

    head, _, _ = _transfusion_head(transfusion_features)
    pred_dicts = head._last_targets[0]
    args = [pred_dicts[k].detach().clone() for k in ("heatmap", "rot", "dim", "center", "height", "vel")]
    ours = [head.decode_bbox(*[a.clone() for a in args], filter=flag) for flag in (False, True)]
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)  # the host's decoder hard-codes CUDA
    hosts = [TransFusionHead.decode_bbox(head, *[a.clone() for a in args], filter=flag) for flag in (False, True)]
    for mine, theirs in zip(ours, hosts):
        for key in ("pred_boxes", "pred_scores", "pred_labels"):
            torch.testing.assert_close(mine[0][key], theirs[0][key], rtol=1e-5, atol=1e-5)

    gt = transfusion_features[2]["gt_boxes"][0][:, :7]
    generator = torch.Generator().manual_seed(0)
    shifted = gt + torch.randn(gt.shape, generator=generator) * torch.tensor([0.5, 0.5, 0.3, 0.3, 0.3, 0.2, 0.4])
    boxes = torch.cat([shifted, ours[0][0]["pred_boxes"][:10, :7]])  # overlapping pairs and untrained queries
    cost, iou = head.bbox_assigner.iou3d_cost(boxes, gt)

    def bev(box):
        x, y, dx, dy, heading = (float(box[i]) for i in (0, 1, 3, 4, 6))
        c, s = np.cos(heading), np.sin(heading)
        half = ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2))
        return shapely.Polygon([(x + c * u - s * v, y + s * u + c * v) for u, v in half])

    areas = torch.tensor([[bev(a).intersection(bev(b)).area for b in gt] for a in boxes], dtype=boxes.dtype)
    overlap = areas * height_overlaps(boxes, gt)  # the host's height term (z read as the bottom)
    union = boxes[:, 3:6].prod(-1)[:, None] + gt[:, 3:6].prod(-1)[None, :] - overlap
    torch.testing.assert_close(iou, overlap / union.clamp_min(1e-8), rtol=1e-4, atol=1e-5)
    assert float(iou[: gt.shape[0]].diagonal().min()) > 0.05  # the reference is not all zeros
    torch.testing.assert_close(cost, -0.25 * iou)


@pytest.mark.pcdet
def test_transfusion_gciou_batch_with_a_sample_without_boxes(transfusion_features):
    gt = transfusion_features[2]["gt_boxes"]
    single, single_loss, single_tb = _transfusion_head(transfusion_features, dropout=0.0)
    pair, pair_loss, pair_tb = _transfusion_head(transfusion_features, torch.cat([gt, torch.zeros_like(gt)]), 0.0)
    assert torch.isfinite(pair_loss)
    count = int((gt[0, :, 3] > 0).sum())
    assert pair.positives().pred.shape[0] == count  # the empty sample adds no matched query
    # same features and the same matched queries: the IoU term is the single sample's (normalised by the same count)
    assert pair_tb["loss_iou_box"] == pytest.approx(single_tb["loss_iou_box"], rel=1e-3)
    torch.testing.assert_close(pair.positives().target, single.positives().target)
    pair_loss.backward()

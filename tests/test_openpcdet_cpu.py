"""The opt-in CPU layer for OpenPCDet (``pcdet_gciou.openpcdet.cpu``).

Unmarked tests check the CPU ops themselves against independent references (shapely polygons, brute-force
loops written here). ``pcdet``-marked tests run the real, unbuilt OpenPCDet through the layer: the KITTI
evaluator with our rotated IoU, and the stock SECOND, PointPillars and (slimmed) PV-RCNN KITTI models on real
KITTI frames (forward, backward, optimiser step). The stock YAMLs are read from an external OpenPCDet tree
(``$OPENPCDET_ROOT``, default: next to the imported ``pcdet`` package); those tests skip without it.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from pcdet_gciou.geometry import samples as box_samples
from pcdet_gciou.openpcdet.cpu import box_ops, placeholders, pointnet2_stack
from pcdet_gciou.openpcdet.cpu.kitti_rotate_iou import rotate_iou_gpu_eval

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from shapely_reference import iou_3d_pair, iou_bev_pair, iou_matrix  # noqa: E402

# ------------------------------------------------------------------------------------------------ helpers


def clustered_boxes(n: int, seed: int, extent: float = 12.0) -> torch.Tensor:
    """Boxes crowded enough that many pairs overlap (the shared sample generator), with an eighth far away."""
    boxes = box_samples.random_boxes(n, seed=seed, extent=extent, elongated_fraction=0.0)
    boxes[: n // 8, 0] += 500.0  # far apart from the rest
    return boxes


def brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, iou_fn) -> list[int]:
    """The textbook greedy NMS, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda k: -float(scores[k]))
    keep: list[int] = []
    for candidate in order:
        if all(iou_fn(boxes[candidate].tolist(), boxes[kept].tolist()) <= threshold for kept in keep):
            keep.append(candidate)
    return keep


def upright_iou_bev_pair(box1, box2) -> float:
    """Axis-aligned BEV IoU ignoring the heading (what OpenPCDet's nms_normal uses)."""
    return iou_bev_pair([*box1[:6], 0.0], [*box2[:6], 0.0])


# ---------------------------------------------------------------------------------- box ops, no pcdet needed


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_matrices_match_shapely(seed):
    boxes_a, boxes_b = clustered_boxes(40, seed), clustered_boxes(33, seed + 100)
    expected_bev = iou_matrix(iou_bev_pair, boxes_a, boxes_b)
    expected_3d = iou_matrix(iou_3d_pair, boxes_a, boxes_b)
    assert (expected_bev > 0).sum() > 20  # the sample really has overlaps
    torch.testing.assert_close(box_ops.boxes_iou_bev(boxes_a, boxes_b), expected_bev, atol=1e-9, rtol=0)
    torch.testing.assert_close(box_ops.boxes_iou3d_gpu(boxes_a, boxes_b), expected_3d, atol=1e-9, rtol=0)
    float_iou = box_ops.boxes_iou_bev(boxes_a.float(), boxes_b.float())
    assert float_iou.dtype == torch.float32
    torch.testing.assert_close(float_iou.double(), expected_bev, atol=2e-5, rtol=0)


def test_boxes_bev_iou_cpu_accepts_numpy_like_openpcdet():
    boxes_a, boxes_b = clustered_boxes(12, 3), clustered_boxes(9, 4)
    result = box_ops.boxes_bev_iou_cpu(boxes_a.float().numpy(), boxes_b.float().numpy())
    assert isinstance(result, np.ndarray) and result.shape == (12, 9)
    np.testing.assert_allclose(result, iou_matrix(iou_bev_pair, boxes_a.float(), boxes_b.float()).numpy(), atol=2e-5)


def test_paired_and_aligned_iou3d_match_shapely():
    boxes_a = clustered_boxes(30, 5)
    boxes_b = boxes_a + torch.randn(30, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.3
    expected = torch.tensor(
        [iou_3d_pair(p, q) for p, q in zip(boxes_a.tolist(), boxes_b.tolist())], dtype=torch.float64
    )
    torch.testing.assert_close(box_ops.paired_boxes_iou3d_gpu(boxes_a, boxes_b), expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(box_ops.boxes_aligned_iou3d_gpu(boxes_a, boxes_b), expected[:, None], atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="equal counts"):
        box_ops.paired_boxes_iou3d_gpu(boxes_a, boxes_b[:5])


def test_overlapping_pairs_cover_every_overlap_and_are_sorted():
    boxes_a, boxes_b = clustered_boxes(50, 7), clustered_boxes(45, 8)
    pair_i, pair_j = box_ops.overlapping_pairs(boxes_a, boxes_b)
    found = set(zip(pair_i.tolist(), pair_j.tolist()))
    overlapping = torch.nonzero(iou_matrix(iou_bev_pair, boxes_a, boxes_b) > 0).tolist()
    assert {tuple(p) for p in overlapping} <= found
    keys = pair_i * boxes_b.shape[0] + pair_j
    assert torch.all(keys[1:] > keys[:-1])
    assert len(found) < boxes_a.shape[0] * boxes_b.shape[0] // 3  # it is a real prefilter


def test_empty_inputs():
    none = torch.zeros(0, 7)
    some = clustered_boxes(4, 0).float()
    assert box_ops.boxes_iou_bev(none, some).shape == (0, 4)
    assert box_ops.boxes_iou3d_gpu(some, none).shape == (4, 0)
    keep, _ = box_ops.nms_gpu(none, torch.zeros(0), 0.5)
    assert keep.numel() == 0


def test_bad_box_shape_raises():
    with pytest.raises(ValueError, match=r"\(N, 7\)"):
        box_ops.boxes_iou_bev(torch.zeros(3, 5), torch.zeros(2, 7))
    with pytest.raises(TypeError, match="torch.Tensor"):
        box_ops.boxes_iou3d_gpu(np.zeros((3, 7)), torch.zeros(2, 7))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.01, 0.3, 0.7])
def test_nms_matches_brute_force_greedy(seed, threshold):
    base = clustered_boxes(24, seed, extent=5.0)
    jitter = torch.randn(12, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.1
    boxes = torch.cat([base, base[:12] + jitter]).float()  # near-duplicates: IoUs up to ~0.9
    scores = torch.rand(36, generator=torch.Generator().manual_seed(seed))
    keep, extra = box_ops.nms_gpu(boxes, scores, threshold)
    assert extra is None and keep.dtype == torch.long
    assert keep.tolist() == brute_force_nms(boxes.double(), scores, threshold, iou_bev_pair)
    assert 1 < keep.numel() < 36


def test_nms_pre_maxsize_keeps_only_top_scored_candidates():
    boxes = clustered_boxes(30, 11, extent=4.0).float()
    scores = torch.rand(30, generator=torch.Generator().manual_seed(11))
    keep, _ = box_ops.nms_gpu(boxes, scores, 0.2, pre_maxsize=10)
    top = scores.argsort(descending=True)[:10]
    expected = [int(top[k]) for k in brute_force_nms(boxes[top].double(), scores[top], 0.2, iou_bev_pair)]
    assert keep.tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_nms_normal_ignores_heading(seed):
    boxes = clustered_boxes(30, seed, extent=5.0).float()
    scores = torch.rand(30, generator=torch.Generator().manual_seed(seed + 50))
    keep, _ = box_ops.nms_normal_gpu(boxes, scores, 0.25)
    assert keep.tolist() == brute_force_nms(boxes.double(), scores, 0.25, upright_iou_bev_pair)


def local_coordinates(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Points in the box frame, by an explicit rotation by -heading (independent of pcdet_gciou.geometry)."""
    c, s = math.cos(box[6]), math.sin(box[6])
    shifted = points - box[:3]
    return np.stack([c * shifted[:, 0] + s * shifted[:, 1], -s * shifted[:, 0] + c * shifted[:, 1], shifted[:, 2]], 1)


def test_points_in_boxes_cpu_and_gpu_match_hand_rotation():
    rng = np.random.default_rng(0)
    boxes = clustered_boxes(6, 2, extent=3.0).float().numpy()
    boxes[:, 0] -= 0.0
    points = rng.uniform(-5, 5, size=(3000, 3)).astype(np.float32)
    points[:, 2] = rng.uniform(-1.5, 1.5, size=3000)
    expected = np.stack([np.all(np.abs(local_coordinates(points, b)) < b[3:6] / 2, axis=1) for b in boxes])
    assert expected.sum() > 50
    flags = box_ops.points_in_boxes_cpu(points, boxes)
    assert isinstance(flags, np.ndarray) and flags.dtype == np.int32 and flags.shape == (6, 3000)
    np.testing.assert_array_equal(flags.astype(bool), expected)

    first_box = np.where(expected.any(0), expected.argmax(0), -1)
    batched = box_ops.points_in_boxes_gpu(
        torch.from_numpy(points)[None].repeat(2, 1, 1), torch.from_numpy(boxes)[None].repeat(2, 1, 1)
    )
    assert batched.dtype == torch.int32 and batched.shape == (2, 3000)
    np.testing.assert_array_equal(batched[0].numpy(), first_box)
    np.testing.assert_array_equal(batched[1].numpy(), first_box)


# ----------------------------------------------------------------------------- KITTI eval's rotated IoU


def kitti_kernel_polygon(box) -> Polygon:
    """Corners exactly as the numba kernel builds them: local corners rotated by [[c, s], [-s, c]]."""
    x, y, length, width, angle = (float(v) for v in box)
    c, s = math.cos(angle), math.sin(angle)
    local = [(-length / 2, -width / 2), (-length / 2, width / 2), (length / 2, width / 2), (length / 2, -width / 2)]
    return Polygon([(c * u + s * v + x, -s * u + c * v + y) for u, v in local])


@pytest.mark.parametrize("criterion", [-1, 0, 1, 2])
def test_kitti_rotate_iou_matches_the_kernel_geometry(criterion):
    gen = np.random.default_rng(criterion + 5)
    boxes = np.column_stack(
        [
            gen.uniform(-6, 6, 25),
            gen.uniform(0, 12, 25),
            gen.uniform(0.5, 4.5, 25),
            gen.uniform(0.4, 2.0, 25),
            gen.uniform(-np.pi, np.pi, 25),
        ]
    )
    query = boxes[::2] + gen.normal(0, 0.4, size=(13, 5))
    query[:, 2:4] = np.abs(query[:, 2:4]) + 0.2
    result = rotate_iou_gpu_eval(boxes, query, criterion)
    expected = np.zeros((25, 13))
    for i, a in enumerate(boxes):
        for j, b in enumerate(query):
            pa, pb = kitti_kernel_polygon(a), kitti_kernel_polygon(b)
            inter = pa.intersection(pb).area
            expected[i, j] = {-1: inter / (pa.area + pb.area - inter), 0: inter / pa.area, 1: inter / pb.area}.get(
                criterion, inter
            )
    assert result.dtype == boxes.dtype and result.shape == (25, 13)
    assert (expected > 0.1).sum() >= 13
    np.testing.assert_allclose(result, expected, atol=1e-9)


def test_kitti_rotate_iou_heading_sign_matters():
    """A thin box rotated +/-30 degrees against a reference: only the kernel's sign convention matches."""
    reference = np.array([[0.0, 0.0, 4.0, 1.0, 0.0]])
    tilted = np.array([[1.0, 0.6, 4.0, 1.0, math.radians(30)]])
    expected = kitti_kernel_polygon(reference[0]).intersection(kitti_kernel_polygon(tilted[0])).area
    mirrored = (
        kitti_kernel_polygon(reference[0]).intersection(kitti_kernel_polygon([*tilted[0, :4], -tilted[0, 4]])).area
    )
    assert abs(expected - mirrored) > 0.1
    np.testing.assert_allclose(rotate_iou_gpu_eval(reference, tilted, 2), [[expected]], atol=1e-9)


# -------------------------------------------------------------------------- PointNet++ ops, brute force


def stacked_points(counts, seed, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(sum(counts), 3, generator=gen) * scale, torch.tensor(counts, dtype=torch.int32)


def test_ball_query_matches_brute_force():
    xyz, xyz_cnt = stacked_points([60, 45], 0)
    new_xyz, new_cnt = stacked_points([7, 5], 1, scale=2.6)  # some centres fall outside the cloud
    radius, nsample = 0.45, 6
    idx, empty = pointnet2_stack.ball_query(radius, nsample, xyz, xyz_cnt, new_xyz, new_cnt)
    starts, bounds = [0, 60], [60, 105]
    for m in range(12):
        sample = 0 if m < 7 else 1
        points = xyz[starts[sample] : bounds[sample]]
        hits = [k for k in range(points.shape[0]) if float(((points[k] - new_xyz[m]) ** 2).sum()) < radius**2]
        if not hits:
            assert bool(empty[m]) and idx[m].tolist() == [0] * nsample
            continue
        slots = hits[:nsample] + [hits[0]] * max(0, nsample - len(hits))
        assert not bool(empty[m]) and idx[m].tolist() == slots
    assert empty.any() and (~empty).any()


def test_grouping_operation_gathers_and_backpropagates():
    features = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    features_cnt = torch.tensor([5, 4], dtype=torch.int32)
    idx = torch.tensor([[0, 4, 4], [1, 2, 3], [3, 0, 1]], dtype=torch.int32)
    idx_cnt = torch.tensor([2, 1], dtype=torch.int32)
    out = pointnet2_stack.grouping_operation(features, features_cnt, idx, idx_cnt)
    assert out.shape == (3, 4, 3)
    torch.testing.assert_close(out[2, :, 0], features[5 + 3])  # third row belongs to sample 1 (offset 5)
    torch.testing.assert_close(out[0, :, 1], features[4])
    torch.autograd.gradcheck(lambda f: pointnet2_stack.grouping_operation(f, features_cnt, idx, idx_cnt), (features,))


def brute_force_fps(points: torch.Tensor, count: int) -> list[int]:
    chosen = [0]
    for _ in range(count - 1):
        best, best_distance = 0, -1.0
        for k in range(points.shape[0]):
            distance = min(float(((points[k] - points[c]) ** 2).sum()) for c in chosen)
            if distance > best_distance:
                best, best_distance = k, distance
        chosen.append(best)
    return chosen


def test_farthest_point_sampling_matches_brute_force():
    xyz, _ = stacked_points([40], 3)
    batched = pointnet2_stack.farthest_point_sample(torch.stack([xyz, xyz.flip(0)]), 8)
    assert batched.dtype == torch.int32 and batched.shape == (2, 8)
    assert batched[0].tolist() == brute_force_fps(xyz, 8)
    assert batched[1].tolist() == brute_force_fps(xyz.flip(0), 8)

    stacked, counts = stacked_points([30, 25], 4)
    sampled = pointnet2_stack.stack_farthest_point_sample(stacked, counts, torch.tensor([6, 4], dtype=torch.int32))
    assert sampled.tolist() == brute_force_fps(stacked[:30], 6) + [30 + k for k in brute_force_fps(stacked[30:], 4)]


def test_three_nn_and_interpolate_match_brute_force():
    known, known_cnt = stacked_points([10, 12], 5)
    unknown, unknown_cnt = stacked_points([6, 4], 6)
    dist, idx = pointnet2_stack.three_nn(unknown, unknown_cnt, known, known_cnt)
    for m in range(10):
        start, stop = (0, 10) if m < 6 else (10, 22)
        distances = ((known[start:stop] - unknown[m]) ** 2).sum(-1).sqrt()
        order = distances.argsort()[:3]
        assert idx[m].tolist() == (order + start).tolist()
        torch.testing.assert_close(dist[m], distances[order])
    features = torch.randn(22, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(10, 3, dtype=torch.float64)
    out = pointnet2_stack.three_interpolate(features, idx, weight)
    expected = sum(weight[:, k, None] * features[idx[:, k].long()] for k in range(3))
    torch.testing.assert_close(out, expected)
    torch.autograd.gradcheck(lambda f: pointnet2_stack.three_interpolate(f, idx, weight), (features,))


# --------------------------------------------------------------------------------- install / placeholders


def test_install_is_idempotent_and_uninstall_restores():
    from pcdet_gciou.openpcdet import cpu

    was_installed = cpu.is_installed()
    cpu.install()
    cpu.install()
    assert cpu.is_installed()
    finders = [f for f in sys.meta_path if type(f).__name__ == "_PortableFinder"]
    assert len(finders) == 1
    if not torch.cuda.is_available():
        tensor = torch.ones(2)
        assert tensor.cuda() is tensor
        assert torch.nn.Linear(2, 2).cuda().weight.device.type == "cpu"
    cpu.uninstall()
    assert not cpu.is_installed()
    assert not any(type(f).__name__ == "_PortableFinder" for f in sys.meta_path)
    assert "cuda" not in torch.Tensor.__dict__ or not torch.Tensor.__dict__["cuda"].__name__.startswith("_noop")
    if was_installed:
        cpu.install()


def test_spconv_backward_runs_on_cpu_after_install():
    spconv = pytest.importorskip("spconv.pytorch")
    from pcdet_gciou.openpcdet import cpu

    cpu.install()
    torch.manual_seed(0)
    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 1], [0, 2, 2, 2], [0, 3, 1, 2]], dtype=torch.int32)
    features = torch.randn(4, 3, requires_grad=True)
    tensor = spconv.SparseConvTensor(features, coords, [5, 5, 5], batch_size=1)
    conv = spconv.SubMConv3d(3, 4, 3, indice_key="subm")
    conv(tensor).features.square().sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- real OpenPCDet (pcdet)


@pytest.mark.pcdet
def test_pcdet_functions_are_replaced_and_missing_ops_raise_clearly():
    from pcdet.ops.iou3d_nms import iou3d_nms_utils
    from pcdet.ops.pointnet2.pointnet2_batch import pointnet2_batch_cuda
    from pcdet.ops.pointnet2.pointnet2_stack import pointnet2_utils
    from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils

    assert iou3d_nms_utils.nms_gpu is box_ops.nms_gpu
    assert iou3d_nms_utils.boxes_iou3d_gpu is box_ops.boxes_iou3d_gpu
    assert roiaware_pool3d_utils.points_in_boxes_cpu is box_ops.points_in_boxes_cpu
    assert pointnet2_utils.ball_query is pointnet2_stack.ball_query
    from pcdet.datasets.argo2 import argo2_dataset

    try:
        import av2  # noqa: F401
    except ImportError:
        pytest.fail("cpu.install() should make av2 importable (as a placeholder) when it is missing")
    if isinstance(sys.modules["av2"], placeholders.PackagePlaceholder):
        with pytest.raises(ImportError, match="Argo2Dataset is unavailable"):
            argo2_dataset.Argo2Dataset(dataset_cfg=None, class_names=[])
    if torch.cuda.is_available():
        pytest.skip("the placeholder extensions are only served when no built extension is found")
    with pytest.raises(NotImplementedError, match="pointnet2_batch_cuda.furthest_point_sampling_wrapper"):
        pointnet2_batch_cuda.furthest_point_sampling_wrapper(1, 2, 3)


def test_package_placeholder_imports_but_refuses_use():
    package = placeholders.PackagePlaceholder("somepackage", "ModuleNotFoundError: no module named somepackage")
    transform = package.transforms.Compose  # attribute chains resolve, like `torchvision.transforms.Compose`
    with pytest.raises(ImportError, match="somepackage.transforms.Compose is unavailable: ModuleNotFound"):
        transform([])
    with pytest.raises(AttributeError):
        _ = package.__wrapped__
    extension = placeholders.ExtensionPlaceholder("pkg.some_cuda")
    with pytest.raises(NotImplementedError, match="pkg.some_cuda.nms_gpu is not available"):
        extension.nms_gpu(1)


def openpcdet_tools_dir() -> pathlib.Path:
    import pcdet

    root = pathlib.Path(os.environ.get("OPENPCDET_ROOT", pathlib.Path(pcdet.__file__).resolve().parents[1]))
    tools = root / "tools"
    if not (tools / "cfgs" / "kitti_models").is_dir():
        pytest.skip(f"stock OpenPCDet configs not found at {tools}/cfgs (set OPENPCDET_ROOT to an OpenPCDet checkout)")
    return tools


def stock_config(model: str):
    """The stock KITTI config of ``model``, trimmed for these frames: no road planes, no Cyclist GT sampling."""
    from easydict import EasyDict
    from pcdet.config import cfg_from_yaml_file

    tools = openpcdet_tools_dir()
    cwd = os.getcwd()
    os.chdir(tools)  # the stock _BASE_CONFIG_ paths are relative to tools/
    try:
        cfg = cfg_from_yaml_file(str(tools / "cfgs" / "kitti_models" / f"{model}.yaml"), EasyDict())
    finally:
        os.chdir(cwd)
    for augmentation in cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST:
        if augmentation.NAME == "gt_sampling":
            augmentation.USE_ROAD_PLANE = False
            augmentation.SAMPLE_GROUPS = [g for g in augmentation.SAMPLE_GROUPS if not g.startswith("Cyclist")]
    return cfg


@pytest.fixture(scope="session")
def kitti_mini_infos(kitti_mini_tree):
    """kitti_mini_tree with OpenPCDet's infos and GT database, built by OpenPCDet itself."""
    from pcdet.datasets.kitti import kitti_dataset

    cfg = stock_config("second")
    kitti_dataset.Path = pathlib.Path  # create_kitti_infos uses Path, imported only under __main__
    kitti_dataset.create_kitti_infos(cfg.DATA_CONFIG, cfg.CLASS_NAMES, kitti_mini_tree, kitti_mini_tree, workers=1)
    return kitti_mini_tree


def kitti_dataset_for(cfg, root, training: bool):
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset

    cfg.DATA_CONFIG.DATA_PATH = str(root)
    return KittiDataset(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, root_path=pathlib.Path(root), training=training
    )


def frame_batch(dataset, frame_id: str):
    from pcdet.models import load_data_to_gpu

    np.random.seed(0)
    index = [info["point_cloud"]["lidar_idx"] for info in dataset.kitti_infos].index(frame_id)
    batch = dataset.collate_batch([dataset[index]])
    load_data_to_gpu(batch)
    return batch


@pytest.mark.pcdet
def test_kitti_eval_on_cpu_perfect_and_shifted_detections(kitti_mini_infos):
    """AP with our rotated IoU against the evaluator's own (numba CPU) image-box AP, on real KITTI labels.

    A perfect detector must score the same 3D/BEV AP as image AP. Shifting each Car/Pedestrian/Cyclist along its
    own length by l/4 makes its BEV and 3D IoU exactly 0.6: under the 0.7 Car threshold every Car is missed,
    under 0.5 every object still matches. A wrong heading convention would shift the boxes sideways instead.
    """
    from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval

    dataset = kitti_dataset_for(stock_config("second"), kitti_mini_infos, training=False)
    gt_annos = [copy.deepcopy(info["annos"]) for info in dataset.kitti_infos]
    classes = ["Car", "Pedestrian", "Cyclist"]
    perfect = []
    for anno in gt_annos:
        det = {k: v.copy() for k, v in anno.items()}
        det["score"] = np.linspace(0.9, 0.5, len(anno["name"]))
        perfect.append(det)
    details: dict = {}
    _, result = kitti_eval.get_official_eval_result(gt_annos, perfect, classes, PR_detail_dict=details)
    for metric in ("3d", "bev"):
        np.testing.assert_allclose(kitti_eval.get_mAP(details[metric]), kitti_eval.get_mAP(details["bbox"]))
    assert kitti_eval.get_mAP(details["3d"])[0, 1, 0] > 0  # Car moderate, strict overlaps
    assert result["Car_3d/moderate_R40"] == pytest.approx(result["Car_image/moderate_R40"])

    shifted = copy.deepcopy(perfect)
    for det in shifted:
        length, rotation = det["dimensions"][:, 0], det["rotation_y"]
        along = length / 4
        det["location"][:, 0] += along * np.cos(rotation)  # the length axis is (cos ry, -sin ry) in (x, z)
        det["location"][:, 2] -= along * np.sin(rotation)
    overlap_3d = kitti_eval.d3_box_overlap(
        np.concatenate([np.column_stack([a["location"], a["dimensions"], a["rotation_y"]]) for a in perfect]),
        np.concatenate([np.column_stack([a["location"], a["dimensions"], a["rotation_y"]]) for a in shifted]),
    )
    valid = np.concatenate([a["name"] != "DontCare" for a in perfect])
    np.testing.assert_allclose(np.diag(overlap_3d)[valid], 0.6, atol=1e-6)
    details_shifted: dict = {}
    kitti_eval.get_official_eval_result(gt_annos, shifted, classes, PR_detail_dict=details_shifted)
    car_ap = kitti_eval.get_mAP(details_shifted["3d"])[0]  # (difficulty, overlap set)
    np.testing.assert_allclose(car_ap[:, 0], 0.0)  # Car at 0.7
    np.testing.assert_allclose(car_ap[:, 1], kitti_eval.get_mAP(details["bbox"])[0, :, 1])  # Car at 0.5


def train_one_step(cfg, root, frame_id: str):
    """Build the stock network for ``cfg``, run forward + backward + one Adam step on a real frame."""
    from pcdet.models import build_network

    torch.manual_seed(0)
    dataset = kitti_dataset_for(cfg, root, training=True)
    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    model.train()
    batch = frame_batch(dataset, frame_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ret_dict, tb_dict, _ = model(batch)
    loss = ret_dict["loss"].mean()
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    return model, dataset, tb_dict, grads, changed


@pytest.mark.pcdet
@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["second", "pointpillar"])
def test_stock_kitti_model_trains_one_step_on_real_frame(kitti_mini_infos, model_name):
    cfg = stock_config(model_name)
    model, dataset, tb_dict, grads, changed = train_one_step(cfg, kitti_mini_infos, "000003")
    assert tb_dict["rpn_loss_loc"] > 0 and math.isfinite(tb_dict["rpn_loss_cls"])
    head = "dense_head.conv_box.weight"
    assert grads[head].abs().sum() > 0 and head in changed
    first_layer = "backbone_3d.conv_input.0.weight" if model_name == "second" else "vfe.pfn_layers.0.linear.weight"
    assert grads[first_layer].abs().sum() > 0  # gradients cross the spconv / pillar stages

    if model_name == "pointpillar":  # evaluation path: CPU NMS, recall with boxes_iou3d_gpu, KITTI eval
        model.eval()
        val = kitti_dataset_for(cfg, kitti_mini_infos, training=False)
        annos = []
        with torch.no_grad():
            for frame in [info["point_cloud"]["lidar_idx"] for info in val.kitti_infos]:
                batch = frame_batch(val, frame)
                predictions, recall = model(batch)
                annos += val.generate_prediction_dicts(batch, predictions, cfg.CLASS_NAMES)
        assert recall["gt"] > 0
        _, result = val.evaluation(annos, cfg.CLASS_NAMES)
        assert "Car_3d/moderate_R40" in result and all(np.isfinite(v) for v in result.values())


@pytest.mark.pcdet
@pytest.mark.slow
def test_stock_pv_rcnn_trains_one_step_on_real_frame(kitti_mini_infos):
    """PV-RCNN with the pure-torch FPS / ball query / grouping, slimmed (fewer keypoints, proposals, RoIs)."""
    cfg = stock_config("pv_rcnn")
    cfg.MODEL.PFE.NUM_KEYPOINTS = 512
    cfg.MODEL.ROI_HEAD.NMS_CONFIG.TRAIN.NMS_PRE_MAXSIZE = 1024
    cfg.MODEL.ROI_HEAD.NMS_CONFIG.TRAIN.NMS_POST_MAXSIZE = 64
    cfg.MODEL.ROI_HEAD.TARGET_CONFIG.ROI_PER_IMAGE = 32
    _, _, tb_dict, grads, changed = train_one_step(cfg, kitti_mini_infos, "000003")
    for key in ("rpn_loss", "point_loss_cls", "rcnn_loss_cls", "rcnn_loss_reg"):
        assert math.isfinite(float(tb_dict[key]))
    for layer in (
        "roi_head.shared_fc_layer.0.weight",
        "pfe.SA_layers.0.mlps.0.0.weight",
        "point_head.cls_layers.0.weight",
    ):
        assert grads[layer].abs().sum() > 0 and layer in changed

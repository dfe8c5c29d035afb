"""Building a dense head by hand, as OpenPCDet's Detector3DTemplate would, for the head tests."""

from __future__ import annotations

import torch


def build_dense_head(head_class, head_cfg, cfg, dataset, features: torch.Tensor, seed: int = 0):
    """``head_class`` on ``features``' channels with the config's classes and the dataset's grid, seeded."""
    torch.manual_seed(seed)
    return head_class(
        model_cfg=head_cfg,
        input_channels=features.shape[1],
        num_class=len(cfg.CLASS_NAMES),
        class_names=cfg.CLASS_NAMES,
        grid_size=dataset.grid_size,
        point_cloud_range=dataset.point_cloud_range,
        voxel_size=dataset.voxel_size,
        predict_boxes_when_training=False,
    )

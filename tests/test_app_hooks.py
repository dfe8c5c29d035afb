"""The config's HOOK section (OpenPCDet's DisableAugmentationHook): parsed strictly, applied at the right epoch."""

from pathlib import Path

import pytest

from pcdet_gciou.config import load_config
from pcdet_gciou.openpcdet.app.errors import UsageError
from pcdet_gciou.openpcdet.app.hooks import DisableAugmentationHook, parse_hooks, with_augmentation_hook

CFGS = Path(__file__).resolve().parents[1] / "cfgs"
HOOK = {"DisableAugmentationHook": {"DISABLE_AUG_LIST": ["gt_sampling"], "NUM_LAST_EPOCHS": 2}}


def test_parse_hooks_reads_the_stock_transfusion_hook():
    assert parse_hooks(load_config(CFGS / "nuscenes_models" / "transfusion_lidar.yaml")) == DisableAugmentationHook(
        ("gt_sampling",), 5
    )
    assert parse_hooks(load_config(CFGS / "kitti_models" / "pointpillar_gciou.yaml")) is None


@pytest.mark.parametrize(
    ("hooks", "fragment"),
    [
        ({"EarlyStopHook": {}}, "unknown hook HOOK.EarlyStopHook; supported: ['DisableAugmentationHook']"),
        ({"DisableAugmentationHook": {"NUM_LAST_EPOCHS": 5}}, "needs exactly the keys"),
        ({"DisableAugmentationHook": {**HOOK["DisableAugmentationHook"], "EXTRA": 1}}, "needs exactly the keys"),
        ({"DisableAugmentationHook": {"DISABLE_AUG_LIST": "gt_sampling", "NUM_LAST_EPOCHS": 5}}, "list of names"),
        ({"DisableAugmentationHook": {"DISABLE_AUG_LIST": [], "NUM_LAST_EPOCHS": -1}}, "integer >= 0, got -1"),
        ({"DisableAugmentationHook": {"DISABLE_AUG_LIST": [], "NUM_LAST_EPOCHS": True}}, "integer >= 0, got True"),
        (["DisableAugmentationHook"], "HOOK must be a mapping"),
    ],
)
def test_parse_hooks_rejects_what_it_cannot_honour(hooks, fragment):
    with pytest.raises(UsageError) as info:
        parse_hooks({"HOOK": hooks})
    assert fragment in str(info.value)


class _Augmentor:
    def __init__(self):
        self.calls = []

    def disable_augmentation(self, config):
        self.calls.append(config)


class _Dataset:
    def __init__(self):
        self.data_augmentor = _Augmentor()


def _hooked(total_epochs, num_last):
    dataset, loaded, logged = _Dataset(), [], []
    augmentor_cfg = {"DISABLE_AUG_LIST": ["placeholder"], "AUG_CONFIG_LIST": [{"NAME": "gt_sampling"}]}
    hook = DisableAugmentationHook(("gt_sampling",), num_last)
    loader = with_augmentation_hook(
        lambda epoch, skip: loaded.append((epoch, skip)) or [epoch],
        dataset,
        augmentor_cfg,
        hook,
        total_epochs,
        logged.append,
    )
    return loader, dataset.data_augmentor.calls, loaded, logged, augmentor_cfg


def test_hook_switches_augmentations_off_once_for_the_last_epochs():
    loader, calls, loaded, logged, augmentor_cfg = _hooked(total_epochs=5, num_last=2)
    for epoch in range(5):
        assert loader(epoch, 0) == [epoch]
        assert len(calls) == (1 if epoch >= 3 else 0)  # epochs 4 and 5 (0-based 3, 4) run without GT sampling
    # the run's own list stays off too (OpenPCDet's hook would replace it)
    assert calls[0]["DISABLE_AUG_LIST"] == ["placeholder", "gt_sampling"]
    assert calls[0]["AUG_CONFIG_LIST"] == [{"NAME": "gt_sampling"}]
    assert augmentor_cfg["DISABLE_AUG_LIST"] == ["placeholder"]  # the run's config is untouched
    assert loaded == [(e, 0) for e in range(5)] and logged == [
        "epoch 4: augmentations ['placeholder', 'gt_sampling'] off (HOOK.DisableAugmentationHook)"
    ]


def test_hook_applies_at_once_to_a_run_resumed_past_its_epoch():
    loader, calls, loaded, _, _ = _hooked(total_epochs=5, num_last=2)
    loader(4, 7)
    assert len(calls) == 1 and loaded == [(4, 7)]


def test_no_hook_returns_the_loader_itself():
    base = object()
    assert with_augmentation_hook(base, _Dataset(), {}, None, 5, print) is base


@pytest.mark.pcdet
def test_hook_drives_openpcdets_own_augmentor(tmp_path):
    from pcdet.datasets.augmentor.data_augmentor import DataAugmentor

    cfg = load_config(CFGS / "kitti_models" / "pointpillar.yaml")
    augmentor_cfg = cfg.DATA_CONFIG.DATA_AUGMENTOR
    augmentor_cfg.DISABLE_AUG_LIST = ["gt_sampling", "random_world_scaling"]  # no GT database here
    dataset = _Dataset()
    dataset.data_augmentor = DataAugmentor(tmp_path, augmentor_cfg, cfg.CLASS_NAMES, logger=None)
    names = lambda: [stage.func.__name__ for stage in dataset.data_augmentor.data_augmentor_queue]  # noqa: E731
    assert names() == ["random_world_flip", "random_world_rotation"]
    hook = DisableAugmentationHook(("gt_sampling", "random_world_flip"), 1)
    loader = with_augmentation_hook(lambda epoch, skip: [], dataset, augmentor_cfg, hook, 3, lambda message: None)
    loader(1, 0)
    assert names() == ["random_world_flip", "random_world_rotation"]
    loader(2, 0)
    assert names() == ["random_world_rotation"]  # scaling, off for the run, stays off
    assert augmentor_cfg.DISABLE_AUG_LIST == ["gt_sampling", "random_world_scaling"]

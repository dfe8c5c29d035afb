"""The config's ``HOOK`` section, as OpenPCDet's ``tools/train.py`` reads it (TransFusion-L's stock config sets it).

Only ``DisableAugmentationHook`` exists in OpenPCDet 0.6: from 0-based epoch ``NUM_EPOCHS - NUM_LAST_EPOCHS`` on,
the augmentations in ``DISABLE_AUG_LIST`` are switched off (e.g. GT sampling for the last 5 epochs). Another hook
name or key is an error naming it, not a silent no-op.

Example:
    >>> parse_hooks({"HOOK": {"DisableAugmentationHook": {"DISABLE_AUG_LIST": ["gt_sampling"], "NUM_LAST_EPOCHS": 5}}})
    DisableAugmentationHook(disable_aug_list=('gt_sampling',), num_last_epochs=5)
    >>> parse_hooks({}) is None
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from .errors import UsageError

__all__ = ["DisableAugmentationHook", "parse_hooks", "with_augmentation_hook"]

HOOK_KEYS = {"DisableAugmentationHook": ("DISABLE_AUG_LIST", "NUM_LAST_EPOCHS")}


@dataclass(frozen=True)
class DisableAugmentationHook:
    disable_aug_list: tuple[str, ...]
    num_last_epochs: int


def parse_hooks(cfg: Mapping) -> Optional[DisableAugmentationHook]:
    """The typed ``HOOK`` section, or None without one.

    Raises:
        UsageError: an unknown hook or key, or a value of the wrong type.
    """
    hooks = cfg.get("HOOK") or {}
    if not isinstance(hooks, Mapping):
        raise UsageError(f"HOOK must be a mapping of hook names, got {hooks!r}")
    for name, options in hooks.items():
        if name not in HOOK_KEYS:
            raise UsageError(f"unknown hook HOOK.{name}; supported: {list(HOOK_KEYS)}")
        if not isinstance(options, Mapping) or set(options) != set(HOOK_KEYS[name]):
            raise UsageError(f"HOOK.{name} needs exactly the keys {list(HOOK_KEYS[name])}, got {options!r}")
    if "DisableAugmentationHook" not in hooks:
        return None
    options = hooks["DisableAugmentationHook"]
    names, last = options["DISABLE_AUG_LIST"], options["NUM_LAST_EPOCHS"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"HOOK.DisableAugmentationHook.DISABLE_AUG_LIST must be a list of names, got {names!r}")
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise UsageError(f"HOOK.DisableAugmentationHook.NUM_LAST_EPOCHS must be an integer >= 0, got {last!r}")
    return DisableAugmentationHook(tuple(names), last)


def with_augmentation_hook(
    loader_for_epoch: Callable,
    dataset,
    augmentor_cfg: Mapping,
    hook: Optional[DisableAugmentationHook],
    total_epochs: int,
    log: Callable[[str], None],
) -> Callable:
    """``loader_for_epoch`` that first switches the hook's augmentations off once ``epoch`` (0-based) reaches
    ``total_epochs - num_last_epochs``; a resumed run past that point switches them off before its first epoch.

    The dataset is changed in this process before the epoch's loader (and its workers) is made. The run's config is
    not touched: the augmentor gets a copy whose ``DISABLE_AUG_LIST`` is the run's plus the hook's. (OpenPCDet's hook
    replaces the list, which switches back on an augmentation the run had switched off, e.g. by ``--set``.)
    """
    if hook is None:
        return loader_for_epoch
    first = total_epochs - hook.num_last_epochs
    switched = []

    def loader(epoch: int, skip: int):
        if epoch >= first and not switched:
            config = copy.deepcopy(augmentor_cfg)
            already_off = list(config.get("DISABLE_AUG_LIST") or [])
            config["DISABLE_AUG_LIST"] = already_off + [n for n in hook.disable_aug_list if n not in already_off]
            dataset.data_augmentor.disable_augmentation(config)
            switched.append(epoch)
            log(f"epoch {epoch + 1}: augmentations {config['DISABLE_AUG_LIST']} off (HOOK.DisableAugmentationHook)")
        return loader_for_epoch(epoch, skip)

    return loader

"""Deterministic, resumable sample order and per-sample augmentation seeds.

Exact resume needs two things a plain ``DataLoader(shuffle=True)`` cannot give:

1. the sample order of an epoch must be a function of ``(seed, epoch)`` only, so that a run resumed in the middle of
   an epoch sees the remaining samples of the *same* permutation: :class:`ResumableSampler`;
2. random augmentation (OpenPCDet draws from ``np.random`` inside ``__getitem__``, possibly in worker processes)
   must not depend on which worker or which point of the run loads a sample: :class:`SeededSampleDataset` seeds
   ``random``/``numpy``/``torch`` from ``(seed, epoch, index)`` before every item.

The sampler yields ``(epoch, index)`` pairs, which the wrapper unpacks. Under DDP the permutation is padded and
strided by rank exactly like ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .rng import seeded

__all__ = ["ResumableSampler", "SeededSampleDataset", "make_epoch_loader", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that differs for every (seed, epoch, index) triple; independent of workers and ranks."""
    mixed = np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0]
    return int(mixed)


class ResumableSampler(Sampler):
    """Yields ``(epoch, index)`` for one epoch of a seeded permutation, optionally skipping a prefix.

    Args:
        num_samples: dataset length.
        batch_size: per-process batch size (``skip_batches`` is counted in batches of this size).
        seed: base seed of the permutation.
        shuffle: permute (training) or keep dataset order.
        rank, world_size: DDP position; each rank gets every ``world_size``-th index of the padded permutation.

    Call :meth:`set_epoch` (and :meth:`skip_batches` when resuming mid-epoch) before creating the loader iterator.

    Example:
        >>> s = ResumableSampler(5, batch_size=2, seed=0)
        >>> s.set_epoch(1); full = [i for _, i in s]
        >>> s.skip_batches(1); [i for _, i in s] == full[2:]
        True
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(num_samples / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = int(epoch), 0

    def skip_batches(self, batches: int) -> None:
        """Start the current epoch after its first ``batches`` batches (of this rank)."""
        self.start = min(int(batches) * self.batch_size, self.per_rank)

    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, index) for index in self._indices()[self.start :]])

    def __len__(self) -> int:
        return self.per_rank - self.start


class SeededSampleDataset(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is loaded with RNGs seeded by :func:`sample_seed`.

    Attributes such as ``collate_batch`` are forwarded to the wrapped dataset.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"SeededSampleDataset expects (epoch, index) keys from ResumableSampler, got {key!r}")
        epoch, index = key
        # Seed for this item only, then put the caller's generators back: with workers=0 the loader runs in the
        # training process, whose RNG streams (dropout, ...) must not depend on data loading.
        with seeded(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]

    def __getattr__(self, name: str):
        if name in ("dataset", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def make_epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int = 0,
    workers: int = 0,
    collate_fn=None,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
):
    """``(loader_for_epoch, iters_per_epoch)`` for :class:`~pcdet_gciou.training.loop.Trainer`.

    ``loader_for_epoch(epoch, skip_batches)`` returns a ``DataLoader`` over the epoch's seeded permutation without
    its first ``skip_batches`` batches; every sample is loaded under :func:`sample_seed` (see module docstring).
    """
    sampler = ResumableSampler(
        len(dataset), batch_size=batch_size, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size
    )
    wrapped = SeededSampleDataset(dataset, seed=seed)

    def loader_for_epoch(epoch: int, skip_batches: int = 0):
        sampler.set_epoch(epoch)
        sampler.skip_batches(skip_batches)
        return torch.utils.data.DataLoader(
            wrapped,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=False,
            # its own generator: creating the iterator must not draw from the
            # global torch RNG, or a mid-epoch resume would shift that stream
            generator=torch.Generator().manual_seed(seed * 100003 + epoch),
        )

    return loader_for_epoch, sampler.batches_per_epoch()

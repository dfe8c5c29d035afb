"""Random-number state: capture, restore and seed python ``random``, numpy and torch together (written once here).

Used by checkpoints (the whole state travels with the training state) and by the data wrapper (each sample is
loaded under its own seed without disturbing the training process's streams).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything", "seeded"]


def capture_rng_state(*, cuda: bool = True) -> dict[str, Any]:
    """Python, numpy and torch generator states (CUDA too when ``cuda`` and available)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a CUDA state is restored only when CUDA is available."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under CPU generators seeded with ``seed``, then put the caller's states back.

    Example:
        >>> with seeded(3):
        ...     a = np.random.rand()
        >>> before = np.random.get_state()[1].copy()
        >>> with seeded(3):
        ...     b = np.random.rand()
        >>> a == b and bool((np.random.get_state()[1] == before).all())
        True
    """
    saved = capture_rng_state(cuda=False)
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)  # CPU only: the CUDA streams are not saved here
    try:
        yield
    finally:
        restore_rng_state(saved)

"""Process-group setup for ``torchrun`` (``--launcher pytorch``) and the device each process trains on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["ProcessInfo", "init_distributed", "shutdown_distributed"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    device: torch.device


def init_distributed(launcher: str, *, use_cuda: bool) -> ProcessInfo:
    """Rank, world size and device of this process.

    Args:
        launcher: ``none`` (one process) or ``pytorch`` (torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``).
        use_cuda: train on CUDA (NCCL between processes) or on CPU (gloo).

    Raises:
        ValueError: ``pytorch`` without torchrun's environment.
    """
    if launcher not in ("none", "pytorch"):
        raise ValueError(f"launcher must be 'none' or 'pytorch', got {launcher!r}")
    if launcher == "none":
        return ProcessInfo(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    if any(key not in os.environ for key in TORCHRUN_VARIABLES):
        raise ValueError(
            "--launcher pytorch expects torchrun's RANK/WORLD_SIZE/LOCAL_RANK environment: "
            "torchrun --nproc_per_node=N tools/train.py --launcher pytorch ..."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend=backend)
    return ProcessInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), device)


def shutdown_distributed(*, synchronize: bool = True) -> None:
    """Destroy the process group when one is initialised.

    With ``synchronize`` every rank first waits at a barrier, so no rank tears its gloo/NCCL connections down while a
    peer is still writing (an early teardown can abort the peer with SIGABRT). Pass ``False`` when unwinding from an
    error, where the other ranks may never reach the barrier.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if synchronize:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()

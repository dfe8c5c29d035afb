"""Model-agnostic training loop with exact resume (no OpenPCDet import).

The detector-specific parts come in as callables: ``train_step(model, batch) -> (loss, scalars)`` runs the forward
pass and returns the scalar loss plus a dict of floats to log (OpenPCDet's ``tb_dict``), and
``loader_for_epoch(epoch, skip_batches)`` returns an iterable over the remaining batches of an epoch.

One iteration: ``zero_grad -> train_step -> backward -> clip_grad_norm_(GRAD_NORM_CLIP) -> optimizer.step ->
scheduler.step``; the LR logged for step ``s`` is the LR that step ``s`` trained with. A checkpoint taken after ``k``
steps resumes at step ``k + 1`` with the same LR, optimiser moments, RNG states and sample order.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import tqdm

from .checkpoint import (
    CHECKPOINT_VERSION,
    ConfigMismatchError,
    atomic_torch_save,
    capture_rng_state,
    config_differences,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    to_plain,
    unwrap_model,
)
from .logs import MetricsLogger

__all__ = ["TrainState", "Trainer", "LATEST_CHECKPOINT"]

LATEST_CHECKPOINT = "latest_model.pth"

TrainStep = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, Mapping[str, float]]"]
LoaderForEpoch = Callable[[int, int], Iterable]
EvalHook = Callable[[int, Path], None]


@dataclass
class TrainState:
    """Progress counters: ``epoch`` = epochs completed, ``global_iter`` = optimiser steps completed."""

    epoch: int = 0
    global_iter: int = 0


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Trainer:
    """Runs epochs of ``train_step`` with clipping, per-iteration scheduling, logging and checkpoints.

    Args:
        model: the network (may be DDP-wrapped; checkpoints store the unwrapped state).
        optimizer, scheduler: from :mod:`pcdet_gciou.training.optim`; the scheduler is stepped every iteration.
        train_step: ``(model, batch) -> (loss, scalars)``.
        loader_for_epoch: ``(epoch, skip_batches) -> iterable of batches`` for 0-based ``epoch``.
        iters_per_epoch: batches per epoch (per process).
        total_epochs: epochs of the full run (the schedule is built for ``total_epochs * iters_per_epoch``).
        ckpt_dir: where ``checkpoint_epoch_<N>.pth`` and ``latest_model.pth`` go.
        config: the merged run config, stored in every checkpoint and compared on resume.
        grad_norm_clip: max total grad norm (``OPTIMIZATION.GRAD_NORM_CLIP``); ``<= 0`` disables clipping (the
            norm is still logged).
        metrics: logger for ``train/*`` scalars (rank 0 only; None elsewhere).
        ckpt_save_interval: save ``checkpoint_epoch_N`` every this many epochs (and always after the last).
        max_ckpt_save_num: keep at most this many epoch checkpoints.
        max_iters: stop after this many steps *of the whole run* (a smoke-test knob; the LR schedule still spans
            ``total_epochs``), writing ``latest_model.pth`` so a later run with a larger ``max_iters`` continues.
        ckpt_save_time_interval: also write ``latest_model.pth`` every this many seconds (0 disables).
        eval_hook, eval_interval: call ``eval_hook(epoch, ckpt_path)`` on rank 0 after every ``eval_interval``-th
            epoch checkpoint (0 disables).
        rank: process rank; only rank 0 writes files and shows the progress bar.
        logger: text logger.
        progress: show a tqdm bar (total iterations, ETA) on rank 0.
        extra_state: small picklable dict stored under ``"extra"`` in every checkpoint (e.g. the data seed).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        train_step: TrainStep,
        loader_for_epoch: LoaderForEpoch,
        iters_per_epoch: int,
        total_epochs: int,
        ckpt_dir: str | Path,
        config: Mapping[str, Any],
        grad_norm_clip: float = 10.0,
        metrics: MetricsLogger | None = None,
        ckpt_save_interval: int = 1,
        max_ckpt_save_num: int = 30,
        max_iters: int | None = None,
        ckpt_save_time_interval: float = 300.0,
        eval_hook: EvalHook | None = None,
        eval_interval: int = 0,
        rank: int = 0,
        logger: logging.Logger | None = None,
        progress: bool = True,
        extra_state: Mapping[str, Any] | None = None,
    ):
        if iters_per_epoch < 1 or total_epochs < 1:
            raise ValueError(f"iters_per_epoch and total_epochs must be >= 1, got {iters_per_epoch}, {total_epochs}")
        if ckpt_save_interval < 1:
            raise ValueError(f"ckpt_save_interval must be >= 1, got {ckpt_save_interval}")
        if max_iters is not None and max_iters < 1:
            raise ValueError(f"max_iters must be >= 1 or None, got {max_iters}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_step, self.loader_for_epoch = train_step, loader_for_epoch
        self.iters_per_epoch, self.total_epochs = iters_per_epoch, total_epochs
        self.ckpt_dir = Path(ckpt_dir)
        self.config = to_plain(config)
        self.grad_norm_clip = float(grad_norm_clip)
        self.metrics = metrics
        self.ckpt_save_interval, self.max_ckpt_save_num = ckpt_save_interval, max_ckpt_save_num
        self.max_iters = max_iters
        self.ckpt_save_time_interval = ckpt_save_time_interval
        self.eval_hook, self.eval_interval = eval_hook, eval_interval
        self.rank = rank
        self.logger = logger or logging.getLogger("pcdet_gciou")
        self.progress = progress
        self.extra_state = dict(extra_state or {})
        self.state = TrainState()
        self._saved_at_iter: int | None = None

    @property
    def total_iters(self) -> int:
        return self.iters_per_epoch * self.total_epochs

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        model_state = {k: v.detach().cpu() for k, v in unwrap_model(self.model).state_dict().items()}
        return {
            "version": CHECKPOINT_VERSION,
            "model_state": model_state,
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "epoch": self.state.epoch,
            "global_iter": self.state.global_iter,
            "iters_per_epoch": self.iters_per_epoch,
            "rng_state": capture_rng_state(),
            "config": self.config,
            "extra": self.extra_state,
        }

    def save(self, name: str) -> Path | None:
        """Write ``ckpt_dir/name`` atomically (rank 0 only)."""
        self._saved_at_iter = self.state.global_iter
        if self.rank != 0:
            return None
        return atomic_torch_save(self.state_dict(), self.ckpt_dir / name)

    def resume(self, checkpoint: str | Path | Mapping[str, Any], source: str | Path | None = None) -> TrainState:
        """Restore everything from a checkpoint (a path, or a dict from :func:`load_checkpoint`) of the same config.

        Raises:
            ConfigMismatchError: the checkpoint's config differs (see :func:`load_checkpoint`).
            ValueError: the checkpoint has another number of iterations per epoch.
        """
        if isinstance(checkpoint, Mapping):
            ckpt, path = checkpoint, source or "<checkpoint dict>"
            diffs = config_differences(ckpt.get("config", {}), self.config)
            if diffs:
                raise ConfigMismatchError(f"refusing to resume from {path}: different config:\n  " + "\n  ".join(diffs))
        else:
            ckpt, path = load_checkpoint(checkpoint, expected_config=self.config), checkpoint
        if ckpt.get("iters_per_epoch", self.iters_per_epoch) != self.iters_per_epoch:
            raise ValueError(
                f"{path} was written with {ckpt['iters_per_epoch']} iterations per epoch, this run has "
                f"{self.iters_per_epoch} (different batch size, GPU count or dataset): cannot resume exactly"
            )
        unwrap_model(self.model).load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        restore_rng_state(ckpt["rng_state"])
        self.state = TrainState(epoch=int(ckpt["epoch"]), global_iter=int(ckpt["global_iter"]))
        self._saved_at_iter = self.state.global_iter
        self.logger.info(
            f"resumed from {path}: epoch {self.state.epoch}, iteration {self.state.global_iter}, "
            f"next LR {self.optimizer.param_groups[0]['lr']:.6g}"
        )
        return self.state

    # ------------------------------------------------------------------ training
    def _one_step(self, batch: Any) -> dict[str, float]:
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, scalars = self.train_step(self.model, batch)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"non-finite loss {loss_value} at iteration {self.state.global_iter + 1} "
                f"(epoch {self.state.epoch + 1}); loss terms: {dict(scalars)}"
            )
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.grad_norm_clip if self.grad_norm_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        self.optimizer.step()
        self.scheduler.step()
        self.state.global_iter += 1
        logged = {"train/loss": loss_value, "train/lr": lr, "train/grad_norm": float(grad_norm)}
        logged.update({f"train/{k}": float(v) for k, v in scalars.items()})
        return logged

    def _stop_requested(self) -> bool:
        return self.max_iters is not None and self.state.global_iter >= self.max_iters

    def fit(self) -> TrainState:
        """Train from the current state to ``total_epochs`` (or ``max_iters``); returns the final state."""
        target = self.total_iters if self.max_iters is None else min(self.max_iters, self.total_iters)
        bar = None
        if self.rank == 0 and self.progress:
            bar = tqdm.tqdm(
                total=target,
                initial=min(self.state.global_iter, target),
                desc="train",
                dynamic_ncols=True,
                smoothing=0.1,
            )
        last_time_save = time.monotonic()
        try:
            while self.state.epoch < self.total_epochs and not self._stop_requested():
                epoch = self.state.epoch
                done_in_epoch = self.state.global_iter - epoch * self.iters_per_epoch
                if not 0 <= done_in_epoch <= self.iters_per_epoch:
                    raise ValueError(
                        f"inconsistent state: iteration {self.state.global_iter} in epoch {epoch} "
                        f"with {self.iters_per_epoch} iterations per epoch"
                    )
                for batch in self.loader_for_epoch(epoch, done_in_epoch):
                    if self.state.global_iter >= (epoch + 1) * self.iters_per_epoch:
                        break
                    logged = self._one_step(batch)
                    if self.metrics is not None:
                        self.metrics.log(self.state.global_iter, epoch + 1, logged)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            epoch=f"{epoch + 1}/{self.total_epochs}",
                            loss=f"{logged['train/loss']:.4g}",
                            lr=f"{logged['train/lr']:.3g}",
                        )
                    if self._stop_requested():
                        break
                    if (
                        self.ckpt_save_time_interval > 0
                        and time.monotonic() - last_time_save >= self.ckpt_save_time_interval
                    ):
                        self.save(LATEST_CHECKPOINT)
                        last_time_save = time.monotonic()
                if self.state.global_iter < (epoch + 1) * self.iters_per_epoch:
                    if not self._stop_requested():
                        raise RuntimeError(
                            f"the loader of epoch {epoch + 1} ended after {self.state.global_iter - epoch * self.iters_per_epoch}"
                            f" batches, expected {self.iters_per_epoch}"
                        )
                    break
                self.state.epoch = epoch + 1
                self._end_of_epoch()
            if self._saved_at_iter != self.state.global_iter:
                path = self.save(LATEST_CHECKPOINT)
                if path is not None:
                    self.logger.info(f"stopped at iteration {self.state.global_iter}; resume with --ckpt {path}")
        finally:
            if bar is not None:
                bar.close()
        return self.state

    def _end_of_epoch(self) -> None:
        epoch = self.state.epoch
        last = epoch == self.total_epochs
        if epoch % self.ckpt_save_interval != 0 and not last:
            return
        path = self.save(f"checkpoint_epoch_{epoch}.pth")
        if path is not None:
            # The epoch checkpoint supersedes any mid-epoch one.
            (self.ckpt_dir / LATEST_CHECKPOINT).unlink(missing_ok=True)
            deleted = prune_checkpoints(self.ckpt_dir, self.max_ckpt_save_num)
            self.logger.info(f"saved {path}" + (f"; pruned {[p.name for p in deleted]}" if deleted else ""))
        if self.eval_hook is not None and self.eval_interval > 0 and (epoch % self.eval_interval == 0 or last):
            if self.rank == 0:
                self.eval_hook(epoch, self.ckpt_dir / f"checkpoint_epoch_{epoch}.pth")
            if _is_distributed():
                torch.distributed.barrier()

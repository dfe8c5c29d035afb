"""Model-agnostic training loop with exact resume and safe interrupts (no OpenPCDet import).

The detector-specific parts come in as callables: ``train_step(model, batch) -> (loss, scalars)`` runs the forward
pass and returns the scalar loss plus a dict of floats to log (OpenPCDet's ``tb_dict``), and
``loader_for_epoch(epoch, skip_batches)`` returns an iterable over the remaining batches of an epoch.

One iteration: ``zero_grad -> train_step -> backward -> clip_grad_norm_(GRAD_NORM_CLIP) -> optimizer.step ->
scheduler.step``; the LR logged for step ``s`` is the LR that step ``s`` trained with. A checkpoint taken after ``k``
steps resumes at step ``k + 1`` with the same LR, optimiser moments, RNG states and sample order.

Checkpoints (names from :mod:`pcdet_gciou.training.rundir`): ``checkpoint_epoch_N.pth`` after epoch ``N``;
``checkpoint_iter_K.pth`` when ``max_iters = K`` ends the run at an iteration without an epoch checkpoint;
``latest_model.pth`` at timed saves and on SIGINT/SIGTERM, after which :meth:`Trainer.fit` raises
:class:`TrainingInterrupted`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
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
    config_differences,
    load_checkpoint,
    prune_checkpoints,
    to_plain,
    unwrap_model,
)
from .logs import MetricsLogger
from .options import RunOptions
from .rng import capture_rng_state, restore_rng_state
from .rundir import LATEST_CHECKPOINT

__all__ = ["TrainState", "Trainer", "TrainingInterrupted", "LATEST_CHECKPOINT"]

TrainStep = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, Mapping[str, float]]"]
LoaderForEpoch = Callable[[int, int], Iterable]
EvalHook = Callable[[int, Path], None]
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class TrainState:
    """Progress counters: ``epoch`` = epochs completed, ``global_iter`` = optimiser steps completed."""

    epoch: int = 0
    global_iter: int = 0


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a complete step; ``checkpoint`` holds that iteration."""

    def __init__(self, signal_name: str, checkpoint: Path, global_iter: int):
        super().__init__(f"training interrupted by {signal_name} at iteration {global_iter}; saved {checkpoint}")
        self.signal_name, self.checkpoint, self.global_iter = signal_name, checkpoint, global_iter


class _SignalGuard:
    """While active (main thread only), SIGINT/SIGTERM set :attr:`received` instead of killing the step;
    a second signal raises KeyboardInterrupt at once."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> _SignalGuard:
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
        ckpt_dir: where the checkpoints go.
        config: the merged run config, stored in every checkpoint and compared on resume.
        grad_norm_clip: max total grad norm (``OptimizationOptions.GRAD_NORM_CLIP``); ``<= 0`` disables clipping
            (the norm is still logged).
        options: checkpoint cadence, ``max_iters``, evaluation cadence, progress bar, signal handling.
        metrics: logger for ``train/*`` scalars (rank 0 only; None elsewhere).
        eval_hook: ``eval_hook(epoch, ckpt_path)``, called on rank 0 after every ``options.eval_interval``-th epoch
            checkpoint and after the run's last checkpoint.
        rank: process rank; only rank 0 writes files and shows the progress bar.
        logger: text logger.
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
        grad_norm_clip: float,
        options: RunOptions | None = None,
        metrics: MetricsLogger | None = None,
        eval_hook: EvalHook | None = None,
        rank: int = 0,
        logger: logging.Logger | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ):
        if iters_per_epoch < 1 or total_epochs < 1:
            raise ValueError(f"iters_per_epoch and total_epochs must be >= 1, got {iters_per_epoch}, {total_epochs}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_step, self.loader_for_epoch = train_step, loader_for_epoch
        self.iters_per_epoch, self.total_epochs = iters_per_epoch, total_epochs
        self.ckpt_dir = Path(ckpt_dir)
        self.config = to_plain(config)
        self.grad_norm_clip = float(grad_norm_clip)
        self.options = options or RunOptions()
        self.metrics, self.eval_hook, self.rank = metrics, eval_hook, rank
        self.logger = logger or logging.getLogger("pcdet_gciou")
        self.extra_state = dict(extra_state or {})
        self.state = TrainState()
        self._saved: tuple[int, Path] | None = None  # (iteration, file) of the newest checkpoint
        self._evaluated_iter: int | None = None
        self._guard = _SignalGuard(False)

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

    def save(self, name: str) -> Path:
        """Write ``ckpt_dir/name`` atomically (rank 0 only; every rank returns the path)."""
        path = self.ckpt_dir / name
        self._saved = (self.state.global_iter, path)
        if self.rank == 0:
            atomic_torch_save(self.state_dict(), path)
        return path

    def resume(self, checkpoint: str | Path | Mapping[str, Any], source: str | Path | None = None) -> TrainState:
        """Restore everything from a checkpoint (a path, or a dict from :func:`load_checkpoint`) of the same config.

        Raises:
            ConfigMismatchError: the checkpoint's config differs (see :func:`load_checkpoint`).
            ValueError: the checkpoint has another number of iterations per epoch.
        """
        if isinstance(checkpoint, Mapping):
            ckpt, path = checkpoint, Path(source or "<checkpoint dict>")
            diffs = config_differences(ckpt.get("config", {}), self.config)
            if diffs:
                raise ConfigMismatchError(f"refusing to resume from {path}: different config: " + "; ".join(diffs))
        else:
            ckpt, path = load_checkpoint(checkpoint, expected_config=self.config), Path(checkpoint)
        if ckpt.get("iters_per_epoch", self.iters_per_epoch) != self.iters_per_epoch:
            raise ConfigMismatchError(
                f"{path} was written with {ckpt['iters_per_epoch']} iterations per epoch, this run has "
                f"{self.iters_per_epoch} (different batch size, GPU count or dataset): cannot resume exactly"
            )
        unwrap_model(self.model).load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        restore_rng_state(ckpt["rng_state"])
        self.state = TrainState(epoch=int(ckpt["epoch"]), global_iter=int(ckpt["global_iter"]))
        self._saved = (self.state.global_iter, path)
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

    def _max_iters_reached(self) -> bool:
        return self.options.max_iters is not None and self.state.global_iter >= self.options.max_iters

    def _interrupted(self) -> bool:
        """Whether a signal arrived, agreed over all ranks (each must stop after the same step)."""
        flag = self._guard.received is not None
        if _is_distributed():
            device = next(unwrap_model(self.model).parameters()).device
            shared = torch.tensor([int(flag)], device=device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            flag = bool(shared.item())
        if flag and self._guard.received is None:  # another rank got the signal: stop here too
            self._guard.received = signal.SIGTERM
        return flag

    def fit(self) -> TrainState:
        """Train from the current state to ``total_epochs`` (or ``options.max_iters``); returns the final state.

        Raises:
            TrainingInterrupted: after SIGINT/SIGTERM, once the current step is done and ``latest_model.pth`` (or
                the epoch checkpoint of that very iteration) is written.
        """
        target = self.total_iters if self.options.max_iters is None else min(self.options.max_iters, self.total_iters)
        bar = None
        if self.rank == 0 and self.options.progress:
            bar = tqdm.tqdm(total=target, initial=min(self.state.global_iter, target), desc="train", dynamic_ncols=True)
        try:
            with _SignalGuard(self.options.handle_signals) as self._guard:
                while self.state.epoch < self.total_epochs and not self._max_iters_reached():
                    if self._interrupted() or not self._run_epoch(bar):
                        break
                self._finish()
        finally:
            if bar is not None:
                bar.close()
            self._guard = _SignalGuard(False)
        return self.state

    def _batches(self, epoch: int, skip: int):
        """The epoch's remaining batches; a loader that fails after a signal (its workers got SIGINT too) ends."""
        iterator = iter(self.loader_for_epoch(epoch, skip))
        while True:
            try:
                yield next(iterator)
            except StopIteration:
                return
            except Exception:
                if self._guard.received is None:
                    raise
                return

    def _run_epoch(self, bar) -> bool:
        """Train the rest of the current epoch; False when stopped early (signal or ``max_iters``)."""
        epoch = self.state.epoch
        done_in_epoch = self.state.global_iter - epoch * self.iters_per_epoch
        if not 0 <= done_in_epoch <= self.iters_per_epoch:
            raise ValueError(
                f"inconsistent state: iteration {self.state.global_iter} in epoch {epoch} "
                f"with {self.iters_per_epoch} iterations per epoch"
            )
        last_time_save = time.monotonic()
        interval = self.options.ckpt_save_time_interval
        for batch in self._batches(epoch, done_in_epoch):
            if self.state.global_iter >= (epoch + 1) * self.iters_per_epoch:
                break
            logged = self._one_step(batch)
            if self.metrics is not None:
                self.metrics.log(self.state.global_iter, epoch + 1, logged)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{self.total_epochs}", loss=f"{logged['train/loss']:.4g}")
            if self._interrupted() or self._max_iters_reached():
                break
            if interval > 0 and time.monotonic() - last_time_save >= interval:
                self.save(LATEST_CHECKPOINT)
                last_time_save = time.monotonic()
        done = self.state.global_iter - epoch * self.iters_per_epoch
        stopping = self._guard.received is not None or self._max_iters_reached()
        if done < self.iters_per_epoch:
            if stopping:
                return False
            raise RuntimeError(
                f"the loader of epoch {epoch + 1} ended after {done} batches, expected {self.iters_per_epoch}"
            )
        self.state.epoch = epoch + 1
        self._end_of_epoch()
        return not stopping

    def _finish(self) -> None:
        """After the loop: checkpoint (and evaluate) where ``max_iters`` ended the run; raise on a signal."""
        at_this_iter = self._saved is not None and self._saved[0] == self.state.global_iter
        if self._guard.received is not None:
            path = self._saved[1] if at_this_iter else self.save(LATEST_CHECKPOINT)
            raise TrainingInterrupted(signal.Signals(self._guard.received).name, path, self.state.global_iter)
        if not self._max_iters_reached() or self.state.global_iter == 0:
            return
        path = self._saved[1] if at_this_iter else self.save(f"checkpoint_iter_{self.state.global_iter}.pth")
        if not at_this_iter and self.rank == 0:
            (self.ckpt_dir / LATEST_CHECKPOINT).unlink(missing_ok=True)
            self.logger.info(f"max_iters reached: saved {path}; a larger --max_iters continues from it")
        epoch_of_step = math.ceil(self.state.global_iter / self.iters_per_epoch)
        if self._evaluated_iter != self.state.global_iter:
            self._evaluate(epoch_of_step, path)

    def _evaluate(self, epoch: int, path: Path) -> None:
        """Rank 0 evaluates while the others wait; a failure there stops every rank (none waits forever)."""
        if self.eval_hook is None or self.options.eval_interval <= 0:
            return
        failure = None
        if self.rank == 0:
            try:
                self.eval_hook(epoch, path)
            except Exception as exc:  # re-raised below, after the other ranks have been told
                failure = exc
        self._evaluated_iter = self.state.global_iter
        if _is_distributed():
            device = next(unwrap_model(self.model).parameters()).device
            failed = torch.tensor([int(failure is not None)], device=device)
            torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)  # also the ranks' barrier
            if failed.item() and failure is None:
                raise RuntimeError(f"the evaluation of {path.name} failed on rank 0; see its log")
        if failure is not None:
            raise failure

    def _end_of_epoch(self) -> None:
        epoch = self.state.epoch
        last = epoch == self.total_epochs
        if epoch % self.options.ckpt_save_interval != 0 and not last:
            return
        path = self.save(f"checkpoint_epoch_{epoch}.pth")
        if self.rank == 0:
            # The epoch checkpoint supersedes any mid-epoch one.
            (self.ckpt_dir / LATEST_CHECKPOINT).unlink(missing_ok=True)
            deleted = prune_checkpoints(self.ckpt_dir, self.options.max_ckpt_save_num)
            self.logger.info(f"saved {path}" + (f"; pruned {[p.name for p in deleted]}" if deleted else ""))
        if last or epoch % max(self.options.eval_interval, 1) == 0:
            self._evaluate(epoch, path)

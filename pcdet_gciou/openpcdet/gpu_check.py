"""Time training steps of an OpenPCDet config: step time, the box loss's share of it, and peak memory.

``python -m pcdet_gciou.openpcdet.gpu_check --cfg_file CFG --data_path KITTI_ROOT [--steps 50] [--warmup 5]``
(``scripts/gpu_check.sh`` runs it for the PointPillars pair). The KITTI root must be prepared
(``tools/prepare_kitti.py``). Steps run as in ``tools/train.py`` (forward, backward, gradient clipping, optimizer step)
at a constant learning rate; the first ``--warmup`` steps (cuDNN autotuning, allocator growth) are not timed.

What is timed, with the device synchronised around each interval:

- **step**: from the batch being moved to the device to the end of the optimizer step (data loading excluded);
- **box loss**: the dense head's ``get_box_reg_layer_loss`` (box regression + direction terms), forward plus the
  backward from its output to the head's ``box_preds``, found with tensor hooks. The synchronisations add a little
  to the step time they are part of;
- **peak memory**: ``torch.cuda.max_memory_allocated`` over the timed steps (CUDA only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["BoxLossTimer", "measure", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BoxLossTimer:
    """Wraps ``head.get_box_reg_layer_loss`` (an instance attribute shadowing the method) to time it.

    ``forward_s`` / ``backward_s`` accumulate seconds; :meth:`reset` zeroes them, :meth:`remove` unwraps.
    """

    def __init__(self, head: torch.nn.Module, device: torch.device):
        self._head = head
        self._device = device
        self._original = head.get_box_reg_layer_loss
        self._backward_start = None
        self.forward_s = 0.0
        self.backward_s = 0.0
        head.get_box_reg_layer_loss = self._timed

    def reset(self) -> None:
        self.forward_s = self.backward_s = 0.0

    def remove(self) -> None:
        del self._head.get_box_reg_layer_loss

    def _timed(self, *args, **kwargs):
        _sync(self._device)
        start = time.perf_counter()
        box_loss, tb_dict = self._original(*args, **kwargs)
        _sync(self._device)
        self.forward_s += time.perf_counter() - start
        box_preds = self._head.forward_ret_dict.get("box_preds")
        if box_loss.requires_grad and isinstance(box_preds, torch.Tensor) and box_preds.requires_grad:
            box_loss.register_hook(self._backward_started)
            box_preds.register_hook(self._backward_finished)
        return box_loss, tb_dict

    def _backward_started(self, grad):
        _sync(self._device)
        self._backward_start = time.perf_counter()

    def _backward_finished(self, grad):
        if self._backward_start is not None:
            _sync(self._device)
            self.backward_s += time.perf_counter() - self._backward_start
            self._backward_start = None


def _train_steps(model, loader, train_step, optimizer, grad_clip: float, device: torch.device):
    """Yields the seconds of each step, cycling through the loader."""
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = train_step(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        _sync(device)
        yield time.perf_counter() - start


def measure(
    cfg_file: str,
    data_path: str,
    *,
    steps: int,
    warmup: int,
    device: str,
    batch_size: int | None = None,
    set_cfgs: Sequence[str] = (),
):
    """Build the model of ``cfg_file`` (with ``--set``-style overrides ``set_cfgs``) on the prepared KITTI root
    ``data_path`` and time ``steps`` steps after ``warmup`` untimed ones. Returns the measurements (seconds, bytes)."""
    from pcdet_gciou.config import apply_set_args, load_config
    from pcdet_gciou.training.optim import build_optimizer

    from . import runtime

    cfg = apply_set_args(load_config(cfg_file), list(set_cfgs))
    cfg.DATA_CONFIG.DATA_PATH = str(Path(data_path).expanduser().resolve())
    batch = int(batch_size or cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU)
    run_device = runtime.import_pcdet(cpu=device == "cpu")
    torch.manual_seed(0)
    dataset, _ = runtime.build_dataset(cfg, training=True, batch_size=batch, workers=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, collate_fn=dataset.collate_batch, drop_last=len(dataset) >= batch
    )
    model = runtime.build_model(cfg, dataset, run_device).train()
    timer = BoxLossTimer(model.dense_head, run_device)
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    grad_clip = float(cfg.OPTIMIZATION.get("GRAD_NORM_CLIP", 10.0))
    step_times = _train_steps(model, loader, runtime.make_train_step(run_device), optimizer, grad_clip, run_device)
    for _ in range(warmup):
        next(step_times)
    timer.reset()
    if run_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run_device)
    timed = [next(step_times) for _ in range(steps)]
    timer.remove()
    total = sum(timed)
    return {
        "cfg_file": str(cfg_file),
        "device": str(run_device),
        "batch_size": batch,
        "steps": steps,
        "warmup": warmup,
        "step_s_mean": total / steps,
        "step_s_median": statistics.median(timed),
        "box_loss_forward_s_mean": timer.forward_s / steps,
        "box_loss_backward_s_mean": timer.backward_s / steps,
        "box_loss_share": (timer.forward_s + timer.backward_s) / total,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(run_device) if run_device.type == "cuda" else None,
    }


def summary_line(result: dict) -> str:
    """One human-readable line per measured config."""
    memory = result["peak_memory_bytes"]
    memory_text = "n/a (CPU)" if memory is None else f"{memory / 2**20:.0f} MiB"
    box_ms = 1000 * (result["box_loss_forward_s_mean"] + result["box_loss_backward_s_mean"])
    return (
        f"{Path(result['cfg_file']).name}: step {1000 * result['step_s_mean']:.1f} ms mean "
        f"({1000 * result['step_s_median']:.1f} median, {result['steps']} steps, batch {result['batch_size']}, "
        f"{result['device']}); box loss {box_ms:.1f} ms = {100 * result['box_loss_share']:.1f}% of the step "
        f"(fwd {1000 * result['box_loss_forward_s_mean']:.1f} + bwd {1000 * result['box_loss_backward_s_mean']:.1f}); "
        f"peak memory {memory_text}"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pcdet_gciou.openpcdet.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cfg_file", required=True, nargs="+", help="one or more model configs")
    parser.add_argument("--data_path", required=True, help="prepared KITTI root (tools/prepare_kitti.py)")
    parser.add_argument("--steps", type=_positive_int, default=50, help="timed steps (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch_size", type=_positive_int, default=None, help="default: the config's")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the portable layer on CPU")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    parser.add_argument("--set", dest="set_cfgs", nargs="+", default=[], help="KEY VALUE ... config overrides (last)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu", file=sys.stderr
        )
        return 2
    results = []
    for cfg_file in args.cfg_file:
        result = measure(
            cfg_file,
            args.data_path,
            steps=args.steps,
            warmup=args.warmup,
            device=args.device,
            batch_size=args.batch_size,
        )
        print(summary_line(result), flush=True)
        results.append(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time training steps of an OpenPCDet config: step time, the box loss's share of it, and peak memory.

``python -m pcdet_gciou.openpcdet.gpu_check --cfg_file CFG --data_path KITTI_ROOT [--steps 50] [--warmup 5]``
(``scripts/gpu_check.sh`` runs it for the PointPillars pair). The KITTI root must be prepared
(``tools/prepare_kitti.py``). Steps run as in ``tools/train.py`` (forward, backward, gradient clipping, optimizer step)
at a constant learning rate; the first ``--warmup`` steps (cuDNN autotuning, allocator growth) are not timed.

What is timed, with the device synchronised around each interval:

- **step**: from the batch being moved to the device to the end of the optimizer step (data loading excluded);
- **box loss**: after each step, the dense head's ``get_box_reg_layer_loss`` (box regression + direction terms) is
  re-run alone on that step's head outputs, forward and backward to those outputs (:func:`box_loss_seconds`); its
  share is that time over the step time (the step itself ran the same computation once);
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

__all__ = ["box_loss_seconds", "measure", "main", "summary_line"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def box_loss_seconds(head: torch.nn.Module, device: torch.device) -> tuple[float, float]:
    """``(forward, backward)`` seconds of ``head.get_box_reg_layer_loss`` re-run alone on the last training forward.

    The head's differentiable outputs in ``forward_ret_dict`` are swapped for detached copies for the duration, so
    the backward runs from the box loss to those outputs only; the dict is restored afterwards.
    """
    saved = dict(head.forward_ret_dict)
    outputs = {
        key: value.detach().requires_grad_()
        for key, value in saved.items()
        if isinstance(value, torch.Tensor) and value.requires_grad
    }
    head.forward_ret_dict.update(outputs)
    try:
        _sync(device)
        start = time.perf_counter()
        box_loss, _ = head.get_box_reg_layer_loss()
        _sync(device)
        middle = time.perf_counter()
        torch.autograd.grad(box_loss, list(outputs.values()), allow_unused=True)
        _sync(device)
        end = time.perf_counter()
    finally:
        head.forward_ret_dict.update(saved)
    return middle - start, end - middle


def _train_steps(model, loader, train_step, optimizer, grad_clip: float, device: torch.device):
    """Yields ``(step seconds, box-loss forward seconds, box-loss backward seconds)``, cycling through the loader."""
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
        step = time.perf_counter() - start
        yield (step, *box_loss_seconds(model.dense_head, device))


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
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    grad_clip = float(cfg.OPTIMIZATION.get("GRAD_NORM_CLIP", 10.0))
    steps_run = _train_steps(model, loader, runtime.make_train_step(run_device), optimizer, grad_clip, run_device)
    for _ in range(warmup):
        next(steps_run)
    if run_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run_device)
    step_s, forward_s, backward_s = zip(*(next(steps_run) for _ in range(steps)))
    total = sum(step_s)
    return {
        "cfg_file": str(cfg_file),
        "device": str(run_device),
        "batch_size": batch,
        "steps": steps,
        "warmup": warmup,
        "step_s_mean": total / steps,
        "step_s_median": statistics.median(step_s),
        "box_loss_forward_s_mean": sum(forward_s) / steps,
        "box_loss_backward_s_mean": sum(backward_s) / steps,
        "box_loss_share": (sum(forward_s) + sum(backward_s)) / total,
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
            set_cfgs=args.set_cfgs,
        )
        print(summary_line(result), flush=True)
        results.append(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tools/test.py``: evaluate one checkpoint, or every checkpoint of a run (``--eval_all``, optionally ``--wait``)."""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ...training import (
    append_eval_rows,
    checkpoint_epoch,
    create_logger,
    evaluated_checkpoints,
    iter_new_checkpoints,
    list_run_checkpoints,
    load_checkpoint,
    run_dir_for,
)
from ...training.checkpoint import config_differences, to_plain, unwrap_model
from ...training.rundir import RunDir
from .args import add_model_run_arguments, add_set_argument, base_parser
from .checks import check_data_files
from .errors import UsageError
from .run_config import EVALUATED_SECTIONS, load_run_config, parse_optimization

__all__ = ["parse_test_args", "record_evaluation", "test_main"]


def parse_test_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = base_parser("Evaluate checkpoints: KITTI AP at R11 and R40, or the dataset's own evaluation.")
    add_model_run_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", default=None, help="one checkpoint to evaluate")
    source.add_argument(
        "--eval_all",
        action="store_true",
        help="every checkpoint_epoch_N / checkpoint_iter_K of --ckpt_dir in order, skipping evaluated ones",
    )
    parser.add_argument("--ckpt_dir", default=None, help="with --eval_all (default: <run_dir>/ckpt)")
    parser.add_argument("--wait", action="store_true", help="with --eval_all: keep polling for new checkpoints")
    parser.add_argument("--max_waiting_mins", type=float, default=30.0, help="with --wait: stop after this idle time")
    parser.add_argument("--wait_interval", type=float, default=30.0, help="with --wait: seconds between polls")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    if args.ckpt_dir and not args.eval_all:
        parser.error("--ckpt_dir needs --eval_all")
    if args.wait and not args.eval_all:
        parser.error("--wait needs --eval_all")
    return args


def _eval_epoch(path: Path, ckpt: dict[str, Any]) -> int:
    epoch = checkpoint_epoch(path)
    if epoch is not None:
        return epoch
    per_epoch = int(ckpt.get("iters_per_epoch") or 0)
    step = int(ckpt.get("global_iter") or 0)
    return -(-step // per_epoch) if per_epoch and step else int(ckpt.get("epoch") or 0)


def record_evaluation(
    model, loader, cfg, run_dir: RunDir, device, *, ckpt_path: Path, epoch: int, step: int, logger, progress: bool
) -> Any:
    """Evaluate ``model``; KITTI rows go to eval_results.csv, every number to TensorBoard (tensorboard/eval) and the
    log. Returns the results (rows or the dataset's metric dict)."""
    from torch.utils.tensorboard import SummaryWriter

    from .. import runtime

    split = cfg["DATA_CONFIG"]["DATA_SPLIT"]["test"]
    start = time.time()
    results, recall, text = runtime.evaluate(
        model, loader, cfg, run_dir.eval_output(ckpt_path, split), device, progress=progress
    )
    logger.info(
        f"evaluation of {ckpt_path.name} (epoch {epoch}) on {split} ({len(loader.dataset)} frames) "
        f"took {time.time() - start:.1f} s\n{text}"
    )
    with SummaryWriter(log_dir=str(run_dir.eval_tensorboard)) as writer:
        if isinstance(results, list):
            rows = [{"epoch": epoch, "checkpoint": ckpt_path.name, **row} for row in results]
            append_eval_rows(run_dir.eval_csv, rows)
            for row in rows:
                writer.add_scalar(
                    f"eval/{row['class']}_{row['metric']}_{row['difficulty']}_{row['recall']}", row["ap"], step
                )
        else:
            for key, value in results.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"eval/{key}", float(value), step)
        for key, value in recall.items():
            writer.add_scalar(f"eval/{key}", value, step)
    return results


def _check_evaluation_package(cfg) -> None:
    from ..evaluation import DATASET_METRICS, required_package

    name = cfg["DATA_CONFIG"]["DATASET"]
    if name not in DATASET_METRICS:
        raise UsageError(f"tools/test.py cannot evaluate a {name}; supported: {sorted(DATASET_METRICS)}")
    metric = cfg["MODEL"]["POST_PROCESSING"].get("EVAL_METRIC") or DATASET_METRICS[name][1]
    needed = required_package(name, metric)
    if needed is not None:
        import importlib.util

        if importlib.util.find_spec(needed[0]) is None:
            raise UsageError(
                f"{name} evaluation ({metric!r} metric) needs the {needed[1]!r} package, which is not installed: "
                f"pip install {needed[1]}"
            )


def _checkpoints(args, run_dir: RunDir, logger):
    if not args.eval_all:
        return [Path(args.ckpt)]
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else run_dir.ckpt_dir
    if not ckpt_dir.is_dir() and not args.wait:
        raise UsageError(f"checkpoint folder {ckpt_dir} does not exist; train first, or pass --ckpt_dir")
    if not args.wait and not list_run_checkpoints(ckpt_dir):
        raise UsageError(f"no checkpoint to evaluate in {ckpt_dir}; train first, or pass --ckpt_dir")
    return iter_new_checkpoints(
        ckpt_dir,
        lambda: evaluated_checkpoints(run_dir.eval_csv),
        wait=args.wait,
        max_waiting_s=args.max_waiting_mins * 60,
        poll_s=args.wait_interval,
        on_idle=lambda: logger.info(f"waiting for new checkpoints in {ckpt_dir} ..."),
    )


def _load_for_evaluation(path: Path, cfg, logger) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if "config" in ckpt:
        diffs = config_differences(ckpt["config"], to_plain(cfg), sections=EVALUATED_SECTIONS)
        if diffs:
            logger.warning(
                f"{path.name} was trained with a different model/data config; evaluating with the current one:"
                "\n  " + "\n  ".join(diffs[:20])
            )
    return ckpt


def test_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``tools/test.py``; returns ``{"run_dir", "evaluated": [checkpoint names]}``."""
    from .. import runtime

    args = parse_test_args(argv)
    cfg = load_run_config(args)
    batch_size = args.batch_size or parse_optimization(cfg).BATCH_SIZE_PER_GPU
    check_data_files(cfg, training=False)
    _check_evaluation_package(cfg)
    if args.ckpt is not None:
        load_checkpoint(args.ckpt)  # unreadable or foreign: fail before OpenPCDet and the model
    run_dir = run_dir_for(args.cfg_file, args.extra_tag, args.output_dir)
    logger = create_logger(run_dir.log_file("eval", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
    checkpoints = _checkpoints(args, run_dir, logger)
    device = runtime.import_pcdet(cpu=args.cpu)
    _, loader = runtime.build_dataset(cfg, training=False, batch_size=batch_size, workers=args.workers, logger=logger)
    model = runtime.build_model(cfg, loader.dataset, device)
    evaluated: list[str] = []
    for path in checkpoints:
        ckpt = _load_for_evaluation(path, cfg, logger)
        unwrap_model(model).load_state_dict(ckpt["model_state"])
        with torch.no_grad():
            record_evaluation(
                model,
                loader,
                cfg,
                run_dir,
                device,
                ckpt_path=path,
                epoch=_eval_epoch(path, ckpt),
                step=int(ckpt.get("global_iter") or 0),
                logger=logger,
                progress=not args.no_progress,
            )
        evaluated.append(path.name)
    if not evaluated:
        logger.info(
            f"no new checkpoint to evaluate (already evaluated: {sorted(evaluated_checkpoints(run_dir.eval_csv))})"
        )
    return {"run_dir": run_dir.root, "evaluated": evaluated}

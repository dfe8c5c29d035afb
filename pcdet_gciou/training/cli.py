"""Command-line logic of ``tools/train.py``, ``tools/test.py`` and ``tools/prepare_kitti.py``.

The run directory (a contract with :mod:`pcdet_gciou.analysis`)::

    <output_dir>/<cfg_tag>/<extra_tag>/           default <repo>/output/<cfg_tag>/default/
        config.yaml                               merged config (after --set, --batch_size, --epochs)
        log_train_<timestamp>.txt, log_eval_<timestamp>.txt
        tensorboard/                              train/* scalars; tensorboard/eval/: eval/* scalars
        ckpt/checkpoint_epoch_<N>.pth             + latest_model.pth for a run stopped mid-epoch
        metrics.csv                               step,epoch,tag,value
        eval_results.csv                          epoch,checkpoint,class,metric,difficulty,recall,ap
        eval/epoch_<N>/<split>/result.pkl         detections (OpenPCDet's annos format)

OpenPCDet is imported only through :mod:`pcdet_gciou.openpcdet.runtime`, inside the ``main`` functions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from ..config import apply_set_args, config_tag, load_config, project_root
from .checkpoint import (
    ConfigMismatchError,
    checkpoint_epoch,
    config_differences,
    list_epoch_checkpoints,
    load_checkpoint,
    load_pretrained,
    to_plain,
    unwrap_model,
)
from .data import make_epoch_loader
from .logs import MetricsLogger, append_eval_rows, create_logger, evaluated_checkpoints
from .loop import LATEST_CHECKPOINT, Trainer
from .optim import build_optimizer, build_scheduler

__all__ = [
    "iter_new_checkpoints",
    "parse_test_args",
    "parse_train_args",
    "prepare_kitti_main",
    "run_dir_for",
    "test_main",
    "train_main",
]

FIXED_SEED = 666  # OpenPCDet's --fix_random_seed value


# ---------------------------------------------------------------------------------------------------- shared
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg_file", required=True, help="model config, e.g. cfgs/kitti_models/second_gciou.yaml")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="total batch size over all GPUs (default: OPTIMIZATION.BATCH_SIZE_PER_GPU per GPU)",
    )
    parser.add_argument("--workers", type=int, default=4, help="dataloader worker processes")
    parser.add_argument("--extra_tag", default="default", help="run name under output/<cfg_tag>/")
    parser.add_argument("--data_path", default=None, help="KITTI root (overrides DATA_CONFIG.DATA_PATH)")
    parser.add_argument("--output_dir", default=None, help="root of run directories (default: <repo>/output)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="run OpenPCDet through pcdet_gciou's CPU compatibility layer (smoke tests only)",
    )


def _load_run_config(args: argparse.Namespace):
    cfg = load_config(args.cfg_file)
    if args.set_cfgs:
        apply_set_args(cfg, list(args.set_cfgs))
    if args.data_path is not None:
        cfg.DATA_CONFIG.DATA_PATH = str(Path(args.data_path).expanduser().resolve())
    return cfg


def run_dir_for(cfg_file: str, extra_tag: str, output_dir: str | None) -> Path:
    """``<output_dir or <repo>/output>/<cfg_tag>/<extra_tag>``."""
    root = Path(output_dir).expanduser() if output_dir else project_root() / "output"
    return (root / config_tag(cfg_file) / extra_tag).resolve()


def _init_distributed(launcher: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); ``pytorch`` reads torchrun's environment variables."""
    if launcher == "none":
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "--launcher pytorch expects torchrun's RANK/WORLD_SIZE/LOCAL_RANK environment: "
            "torchrun --nproc_per_node=N tools/train.py --launcher pytorch ..."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_config(cfg, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
    os.replace(tmp, path)


def _newest_checkpoint(ckpt_dir: Path) -> Path | None:
    candidates = list_epoch_checkpoints(ckpt_dir)
    if (ckpt_dir / LATEST_CHECKPOINT).is_file():
        candidates.append(ckpt_dir / LATEST_CHECKPOINT)
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _record_evaluation(
    model, loader, cfg, run_dir: Path, *, epoch: int, ckpt_name: str, step: int, logger, progress: bool
) -> list[dict]:
    """Evaluate ``model`` and append to eval_results.csv, TensorBoard (tensorboard/eval) and the log."""
    from ..openpcdet.runtime import evaluate_kitti

    split = cfg.DATA_CONFIG.DATA_SPLIT["test"]
    start = time.time()
    rows, recall, text = evaluate_kitti(
        model, loader, cfg, run_dir / "eval" / f"epoch_{epoch}" / split, progress=progress
    )
    logger.info(
        f"evaluation of {ckpt_name} (epoch {epoch}) on {split} ({len(loader.dataset)} frames) "
        f"took {time.time() - start:.1f} s\n{text}"
    )
    full_rows = [{"epoch": epoch, "checkpoint": ckpt_name, **row} for row in rows]
    append_eval_rows(run_dir / "eval_results.csv", full_rows)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run_dir / "tensorboard" / "eval")) as writer:
        for row in full_rows:
            tag = f"eval/{row['class']}_{row['metric']}_{row['difficulty']}_{row['recall']}"
            writer.add_scalar(tag, row["ap"], step)
        for key, value in recall.items():
            writer.add_scalar(f"eval/{key}", value, step)
    return full_rows


# ---------------------------------------------------------------------------------------------------- train
def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train an OpenPCDet detector (GCIoU or baseline config).")
    _add_common(parser)
    parser.add_argument("--epochs", type=int, default=None, help="default: OPTIMIZATION.NUM_EPOCHS")
    parser.add_argument(
        "--ckpt", default=None, help="checkpoint to resume from (default: the newest in <run_dir>/ckpt, if any)"
    )
    parser.add_argument("--pretrained_model", default=None, help="initialise the weights only (shape-matched)")
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm under --launcher pytorch")
    parser.add_argument("--fix_random_seed", action="store_true", help=f"seed everything with {FIXED_SEED}")
    parser.add_argument("--ckpt_save_interval", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--max_ckpt_save_num", type=int, default=30, help="epoch checkpoints kept")
    parser.add_argument(
        "--ckpt_save_time_interval",
        type=int,
        default=300,
        help="seconds between mid-epoch latest_model.pth saves (0: off)",
    )
    parser.add_argument(
        "--max_iters",
        type=int,
        default=None,
        help="stop after this many iterations of the whole run (smoke tests); the LR schedule "
        "still spans --epochs, and a later run with a larger value resumes exactly",
    )
    parser.add_argument(
        "--eval_interval",
        type=int,
        default=0,
        help="evaluate on the val split every K epochs and after the last (0: never)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bars (log files only)")
    parser.add_argument(
        "--set",
        dest="set_cfgs",
        default=None,
        nargs=argparse.REMAINDER,
        help="override config keys: --set KEY.SUB VALUE ... (must come last)",
    )
    return parser.parse_args(argv)


def train_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``tools/train.py``; returns a summary (run_dir, epoch, global_iter) for scripts and tests."""
    args = parse_train_args(argv)
    rank, world_size, device = _init_distributed(args.launcher)
    cfg = _load_run_config(args)
    if args.batch_size is not None:
        if args.batch_size % world_size:
            raise ValueError(f"--batch_size {args.batch_size} is not divisible by the {world_size} processes")
        cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU = args.batch_size // world_size
    if args.epochs is not None:
        cfg.OPTIMIZATION.NUM_EPOCHS = args.epochs
    batch_size, epochs = int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU), int(cfg.OPTIMIZATION.NUM_EPOCHS)

    run_dir = run_dir_for(args.cfg_file, args.extra_tag, args.output_dir)
    ckpt_dir = run_dir / "ckpt"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logger = create_logger(run_dir / f"log_train_{stamp}.txt", rank=rank)
    logger.info(f"run directory {run_dir}; {world_size} process(es), {batch_size} frames per process, device {device}")
    plain_cfg = to_plain(cfg)

    resume_path = Path(args.ckpt) if args.ckpt else _newest_checkpoint(ckpt_dir)
    resume_ckpt = None
    if resume_path is not None:
        try:
            resume_ckpt = load_checkpoint(resume_path, expected_config=plain_cfg)
        except ConfigMismatchError as exc:
            raise SystemExit(f"error: {exc}") from None
    extra = (resume_ckpt or {}).get("extra", {})
    data_seed = int(
        extra.get("data_seed", FIXED_SEED if args.fix_random_seed else random.SystemRandom().randrange(2**31))
    )
    if world_size > 1:  # every rank must shard the same permutation
        shared = [data_seed]
        torch.distributed.broadcast_object_list(shared, src=0)
        data_seed = int(shared[0])
    if args.fix_random_seed:
        _seed_everything(FIXED_SEED)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False

    from ..openpcdet import runtime

    runtime.import_pcdet(cpu=args.cpu)
    dataset, _ = runtime.build_dataset(cfg, training=True, batch_size=batch_size, workers=args.workers, logger=logger)
    model = runtime.build_model(cfg, dataset, device)
    if args.sync_bn and world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.pretrained_model and resume_ckpt is not None:
        logger.info(f"--pretrained_model ignored: resuming from {resume_path}")
    if args.pretrained_model and resume_ckpt is None:
        loaded, skipped = load_pretrained(model, args.pretrained_model)
        logger.info(
            f"pretrained weights from {args.pretrained_model}: {len(loaded)} tensors loaded, "
            f"{len(skipped)} left at init" + (f" ({skipped[:10]}...)" if skipped else "")
        )
    loader_for_epoch, iters_per_epoch = make_epoch_loader(
        dataset,
        batch_size=batch_size,
        seed=data_seed,
        workers=args.workers,
        collate_fn=dataset.collate_batch,
        shuffle=True,
        rank=rank,
        world_size=world_size,
        pin_memory=device.type == "cuda",
    )
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    scheduler = build_scheduler(
        optimizer, cfg.OPTIMIZATION, total_iters=iters_per_epoch * epochs, iters_per_epoch=iters_per_epoch
    )
    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    eval_hook = None
    if args.eval_interval > 0 and rank == 0:
        _, test_loader = runtime.build_dataset(
            cfg, training=False, batch_size=batch_size, workers=args.workers, logger=logger
        )

        def eval_hook(epoch: int, ckpt_path: Path) -> None:
            _record_evaluation(
                model,
                test_loader,
                cfg,
                run_dir,
                epoch=epoch,
                ckpt_name=ckpt_path.name,
                step=trainer.state.global_iter,
                logger=logger,
                progress=not args.no_progress,
            )

    metrics = None
    if rank == 0:
        _write_config(cfg, run_dir / "config.yaml")
        metrics = MetricsLogger(run_dir, resume_step=None if resume_ckpt is None else int(resume_ckpt["global_iter"]))
    trainer = Trainer(
        train_model,
        optimizer,
        scheduler,
        train_step=runtime.make_train_step(),
        loader_for_epoch=loader_for_epoch,
        iters_per_epoch=iters_per_epoch,
        total_epochs=epochs,
        ckpt_dir=ckpt_dir,
        config=plain_cfg,
        grad_norm_clip=float(cfg.OPTIMIZATION.get("GRAD_NORM_CLIP", 10.0)),
        metrics=metrics,
        ckpt_save_interval=args.ckpt_save_interval,
        max_ckpt_save_num=args.max_ckpt_save_num,
        max_iters=args.max_iters,
        ckpt_save_time_interval=args.ckpt_save_time_interval,
        eval_hook=eval_hook,
        eval_interval=args.eval_interval,
        rank=rank,
        logger=logger,
        progress=not args.no_progress,
        extra_state={"data_seed": data_seed},
    )
    if resume_ckpt is not None:
        trainer.resume(resume_ckpt, source=resume_path)
    logger.info(
        f"training {type(unwrap_model(model)).__name__}: {epochs} epochs x {iters_per_epoch} iterations, "
        f"optimizer {cfg.OPTIMIZATION.OPTIMIZER}, LR {cfg.OPTIMIZATION.LR}, "
        f"clip {cfg.OPTIMIZATION.get('GRAD_NORM_CLIP', 10.0)}; starting at iteration "
        f"{trainer.state.global_iter}"
    )
    start = time.time()
    try:
        state = trainer.fit()
    finally:
        if metrics is not None:
            metrics.close()
        if world_size > 1:
            torch.distributed.destroy_process_group()
    logger.info(f"done: epoch {state.epoch}, iteration {state.global_iter}, {time.time() - start:.1f} s")
    return {"run_dir": run_dir, "epoch": state.epoch, "global_iter": state.global_iter}


# ---------------------------------------------------------------------------------------------------- test
def parse_test_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate checkpoints on KITTI val (AP at R11 and R40).")
    _add_common(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", default=None, help="one checkpoint to evaluate")
    source.add_argument(
        "--eval_all",
        action="store_true",
        help="every checkpoint_epoch_N.pth of --ckpt_dir in epoch order, skipping evaluated ones",
    )
    parser.add_argument("--ckpt_dir", default=None, help="with --eval_all (default: <run_dir>/ckpt)")
    parser.add_argument("--wait", action="store_true", help="with --eval_all: keep polling for new checkpoints")
    parser.add_argument(
        "--max_waiting_mins",
        type=float,
        default=30.0,
        help="with --wait: stop after this long without a new checkpoint",
    )
    parser.add_argument("--wait_interval", type=float, default=30.0, help="with --wait: seconds between polls")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bars")
    parser.add_argument(
        "--set",
        dest="set_cfgs",
        default=None,
        nargs=argparse.REMAINDER,
        help="override config keys: --set KEY.SUB VALUE ... (must come last)",
    )
    return parser.parse_args(argv)


def test_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``tools/test.py``; returns ``{"run_dir", "evaluated": [checkpoint names]}``."""
    args = parse_test_args(argv)
    if args.ckpt_dir and not args.eval_all:
        raise SystemExit("error: --ckpt_dir needs --eval_all")
    if args.wait and not args.eval_all:
        raise SystemExit("error: --wait needs --eval_all")
    cfg = _load_run_config(args)
    batch_size = args.batch_size or int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU)
    run_dir = run_dir_for(args.cfg_file, args.extra_tag, args.output_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logger = create_logger(run_dir / f"log_eval_{stamp}.txt")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")

    from ..openpcdet import runtime

    runtime.import_pcdet(cpu=args.cpu)
    _, loader = runtime.build_dataset(cfg, training=False, batch_size=batch_size, workers=args.workers, logger=logger)
    model = runtime.build_model(cfg, loader.dataset, device)
    plain_cfg = to_plain(cfg)

    def evaluate(path: Path) -> None:
        ckpt = load_checkpoint(path)
        if "config" in ckpt:
            diffs = config_differences(ckpt["config"], plain_cfg)
            if diffs:
                logger.warning(
                    f"{path.name} was trained with a different config; evaluating with the current one:"
                    "\n  " + "\n  ".join(diffs[:20])
                )
        unwrap_model(model).load_state_dict(ckpt["model_state"])
        epoch = checkpoint_epoch(path)
        epoch = int(ckpt.get("epoch", 0)) if epoch is None else epoch
        step = int(ckpt.get("global_iter", epoch))
        _record_evaluation(
            model,
            loader,
            cfg,
            run_dir,
            epoch=epoch,
            ckpt_name=path.name,
            step=step,
            logger=logger,
            progress=not args.no_progress,
        )

    evaluated: list[str] = []
    if not args.eval_all:
        path = Path(args.ckpt)
        evaluate(path)
        return {"run_dir": run_dir, "evaluated": [path.name]}

    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else run_dir / "ckpt"
    if not ckpt_dir.is_dir() and not args.wait:
        raise SystemExit(f"error: checkpoint folder {ckpt_dir} does not exist")
    eval_csv = run_dir / "eval_results.csv"
    for path in iter_new_checkpoints(
        ckpt_dir,
        lambda: evaluated_checkpoints(eval_csv),
        wait=args.wait,
        max_waiting_s=args.max_waiting_mins * 60,
        poll_s=args.wait_interval,
        on_idle=lambda: logger.info(f"waiting for new checkpoints in {ckpt_dir} ..."),
    ):
        evaluate(path)
        evaluated.append(path.name)
    if not evaluated:
        logger.info(
            f"no new checkpoint to evaluate in {ckpt_dir} (already evaluated: "
            f"{sorted(evaluated_checkpoints(eval_csv))})"
        )
    return {"run_dir": run_dir, "evaluated": evaluated}


def iter_new_checkpoints(
    ckpt_dir: Path,
    already_done: Callable[[], set[str]],
    *,
    wait: bool,
    max_waiting_s: float,
    poll_s: float,
    on_idle: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
):
    """Yield ``checkpoint_epoch_N.pth`` files of ``ckpt_dir`` in epoch order whose names ``already_done()`` lacks.

    Without ``wait`` one pass is made. With ``wait`` the folder is polled every ``poll_s`` seconds until
    ``max_waiting_s`` pass without a new checkpoint (checkpoints are written atomically, so a listed file is
    complete).
    """
    last_new = clock()
    yielded: set[str] = set()
    while True:
        done = already_done() | yielded
        pending = [p for p in list_epoch_checkpoints(ckpt_dir) if p.name not in done]
        for path in pending:
            yield path
            yielded.add(path.name)
            last_new = clock()
        if not wait or clock() - last_new > max_waiting_s:
            return
        if not pending:
            on_idle()
            sleep(poll_s)


# ---------------------------------------------------------------------------------------------------- prepare
def prepare_kitti_main(argv: Sequence[str] | None = None) -> list[Path]:
    """Entry point of ``tools/prepare_kitti.py``."""
    parser = argparse.ArgumentParser(description="Check a KITTI folder and build OpenPCDet's infos + GT database.")
    parser.add_argument(
        "--data_path",
        default=str(project_root() / "data" / "kitti"),
        help="KITTI root with ImageSets/, training/, testing/ (default: <repo>/data/kitti)",
    )
    parser.add_argument(
        "--cfg_file",
        default=str(project_root() / "cfgs" / "dataset_configs" / "kitti_dataset.yaml"),
        help="dataset config, or a model config (its DATA_CONFIG is used)",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--cpu", action="store_true", help="use the CPU compatibility layer (no CUDA needed)")
    args = parser.parse_args(argv)
    from ..openpcdet import prepare, runtime

    root = Path(args.data_path).expanduser().resolve()
    counts = prepare.check_kitti_layout(root)
    print(f"KITTI layout OK at {root}: " + ", ".join(f"{k} {v} frames" for k, v in counts.items()))
    cfg = load_config(args.cfg_file)
    dataset_cfg = cfg.get("DATA_CONFIG", cfg)
    runtime.import_pcdet(cpu=args.cpu or not torch.cuda.is_available())
    outputs = prepare.prepare_kitti(dataset_cfg, root, workers=args.workers)
    print("wrote " + ", ".join(str(p) for p in outputs))
    return outputs

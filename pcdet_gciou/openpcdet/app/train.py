"""``tools/train.py``: train an OpenPCDet detector with the engine of :mod:`pcdet_gciou.training`.

Order of work: arguments, device and processes, config, input files, the checkpoint to resume, then OpenPCDet, the
dataset and the model, so a careless input fails in one line before anything heavy is built.
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...config import AttrDict, save_config
from ...training import (
    MetricsLogger,
    OptimizationOptions,
    RunOptions,
    Trainer,
    TrainingInterrupted,
    build_optimizer,
    build_scheduler,
    create_logger,
    find_resume_checkpoint,
    load_checkpoint,
    load_pretrained,
    make_epoch_loader,
    run_dir_for,
)
from ...training.checkpoint import to_plain, unwrap_model
from ...training.distributed import ProcessInfo, init_distributed, shutdown_distributed
from ...training.rng import seed_everything
from ...training.rundir import RunDir
from .args import FIXED_SEED, add_model_run_arguments, add_set_argument, base_parser
from .checks import check_data_files, check_gt_sampler
from .errors import UsageError
from .hooks import DisableAugmentationHook, parse_hooks, with_augmentation_hook
from .run_config import load_run_config, parse_optimization

__all__ = ["parse_train_args", "train_main"]


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = base_parser("Train an OpenPCDet detector (GCIoU or baseline config).")
    add_model_run_arguments(parser)
    parser.add_argument("--epochs", type=int, default=None, help="default: OPTIMIZATION.NUM_EPOCHS")
    parser.add_argument("--ckpt", default=None, help="checkpoint to resume from (default: the newest of the run)")
    parser.add_argument("--pretrained_model", default=None, help="initialise the weights only (shape-matched)")
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm under --launcher pytorch")
    parser.add_argument("--fix_random_seed", action="store_true", help=f"seed everything with {FIXED_SEED}")
    parser.add_argument("--ckpt_save_interval", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--max_ckpt_save_num", type=int, default=30, help="epoch checkpoints kept")
    parser.add_argument(
        "--ckpt_save_time_interval", type=int, default=300, help="seconds between latest_model.pth saves (0: off)"
    )
    parser.add_argument(
        "--max_iters",
        type=int,
        default=None,
        help="end the run after this many iterations of the whole run, writing checkpoint_iter_<K>.pth (and "
        "evaluating it with --eval_interval); the LR schedule still spans --epochs, and a larger value resumes",
    )
    parser.add_argument(
        "--eval_interval", type=int, default=0, help="evaluate every K epochs and the run's last checkpoint (0: never)"
    )
    add_set_argument(parser)
    args = parser.parse_args(argv)
    try:
        args.run_options = RunOptions(
            ckpt_save_interval=args.ckpt_save_interval,
            max_ckpt_save_num=args.max_ckpt_save_num,
            max_iters=args.max_iters,
            ckpt_save_time_interval=args.ckpt_save_time_interval,
            eval_interval=args.eval_interval,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args


@dataclass
class _Run:
    """What the steps of :func:`train_main` hand each other."""

    args: argparse.Namespace
    proc: ProcessInfo
    cfg: AttrDict
    optim: OptimizationOptions
    run_dir: RunDir
    logger: Any
    hook: DisableAugmentationHook | None = None
    resume_path: Path | None = None
    resume_ckpt: dict | None = None
    data_seed: int = 0


def _configure(args: argparse.Namespace, proc: ProcessInfo) -> tuple[AttrDict, OptimizationOptions]:
    """Config with ``--set``/``--data_path``, then ``--batch_size``/``--epochs`` written into OPTIMIZATION."""
    cfg = load_run_config(args)
    if args.batch_size is not None and args.batch_size % proc.world_size:
        raise UsageError(f"--batch_size {args.batch_size} is not divisible by the {proc.world_size} processes")
    per_process = None if args.batch_size is None else args.batch_size // proc.world_size
    optim = parse_optimization(cfg).with_run_overrides(batch_size_per_gpu=per_process, epochs=args.epochs)
    cfg["OPTIMIZATION"]["BATCH_SIZE_PER_GPU"] = optim.BATCH_SIZE_PER_GPU
    cfg["OPTIMIZATION"]["NUM_EPOCHS"] = optim.NUM_EPOCHS
    return cfg, optim


def _find_resume(run: _Run) -> None:
    """The checkpoint to resume (``--ckpt`` or the newest of the run), loaded and checked against the config."""
    args = run.args
    run.resume_path = Path(args.ckpt) if args.ckpt else find_resume_checkpoint(run.run_dir.ckpt_dir)
    if run.resume_path is not None:
        run.resume_ckpt = load_checkpoint(run.resume_path, expected_config=to_plain(run.cfg))
    if args.pretrained_model and run.resume_ckpt is None and not Path(args.pretrained_model).is_file():
        raise UsageError(f"--pretrained_model {args.pretrained_model} not found; pass an existing .pth file")


def _seed(run: _Run) -> None:
    """The data seed (kept across resumes, shared by all ranks) and, with --fix_random_seed, every generator."""
    extra = (run.resume_ckpt or {}).get("extra", {})
    if "data_seed" in extra:
        seed = int(extra["data_seed"])
    else:
        seed = FIXED_SEED if run.args.fix_random_seed else random.SystemRandom().randrange(2**31)
    if run.proc.world_size > 1:
        shared = [seed]
        torch.distributed.broadcast_object_list(shared, src=0)
        seed = int(shared[0])
    run.data_seed = seed
    if run.args.fix_random_seed:
        seed_everything(FIXED_SEED)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _build_model(run: _Run, dataset) -> torch.nn.Module:
    from .. import runtime

    model = runtime.build_model(run.cfg, dataset, run.proc.device)
    if run.args.sync_bn and run.proc.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if run.args.pretrained_model and run.resume_ckpt is not None:
        run.logger.info(f"--pretrained_model ignored: resuming from {run.resume_path}")
    elif run.args.pretrained_model:
        loaded, skipped = load_pretrained(model, run.args.pretrained_model)
        run.logger.info(
            f"pretrained weights from {run.args.pretrained_model}: {len(loaded)} tensors loaded, "
            f"{len(skipped)} left at init" + (f" ({skipped[:10]}...)" if skipped else "")
        )
    return model


def _eval_hook(run: _Run, model, trainer_ref: list):
    """``eval_hook(epoch, ckpt_path)`` for the Trainer, or None without --eval_interval (or off rank 0)."""
    if run.args.eval_interval <= 0 or run.proc.rank != 0:
        return None
    from .. import runtime
    from .evaluate import record_evaluation

    _, test_loader = runtime.build_dataset(
        run.cfg, training=False, batch_size=run.optim.BATCH_SIZE_PER_GPU, workers=run.args.workers, logger=run.logger
    )

    def eval_hook(epoch: int, ckpt_path: Path) -> None:
        record_evaluation(
            model,
            test_loader,
            run.cfg,
            run.run_dir,
            run.proc.device,
            ckpt_path=ckpt_path,
            epoch=epoch,
            step=trainer_ref[0].state.global_iter,
            logger=run.logger,
            progress=run.args.run_options.progress,
        )

    return eval_hook


def _build_trainer(run: _Run, dataset, model, metrics) -> Trainer:
    from .. import runtime

    loader_for_epoch, iters_per_epoch = make_epoch_loader(
        dataset,
        batch_size=run.optim.BATCH_SIZE_PER_GPU,
        seed=run.data_seed,
        workers=run.args.workers,
        collate_fn=dataset.collate_batch,
        shuffle=True,
        rank=run.proc.rank,
        world_size=run.proc.world_size,
        pin_memory=run.proc.device.type == "cuda",
    )
    augmentor_cfg = run.cfg.DATA_CONFIG.get("DATA_AUGMENTOR", {})
    loader_for_epoch = with_augmentation_hook(
        loader_for_epoch, dataset, augmentor_cfg, run.hook, run.optim.NUM_EPOCHS, run.logger.info
    )
    optimizer = build_optimizer(model, run.optim)
    total_iters = iters_per_epoch * run.optim.NUM_EPOCHS
    scheduler = build_scheduler(optimizer, run.optim, total_iters=total_iters, iters_per_epoch=iters_per_epoch)
    train_model = model
    if run.proc.world_size > 1:
        device_ids = [run.proc.device.index] if run.proc.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    trainer_ref: list = []
    trainer = Trainer(
        train_model,
        optimizer,
        scheduler,
        train_step=runtime.make_train_step(run.proc.device),
        loader_for_epoch=loader_for_epoch,
        iters_per_epoch=iters_per_epoch,
        total_epochs=run.optim.NUM_EPOCHS,
        ckpt_dir=run.run_dir.ckpt_dir,
        config=to_plain(run.cfg),
        grad_norm_clip=run.optim.GRAD_NORM_CLIP,
        options=run.args.run_options,
        metrics=metrics,
        eval_hook=_eval_hook(run, model, trainer_ref),
        rank=run.proc.rank,
        logger=run.logger,
        extra_state={"data_seed": run.data_seed},
    )
    trainer_ref.append(trainer)
    if run.resume_ckpt is not None:
        trainer.resume(run.resume_ckpt, source=run.resume_path)
    return trainer


def _prepare(args: argparse.Namespace) -> _Run:
    """Everything that can fail on the user's input, before OpenPCDet is imported."""
    from .. import runtime

    runtime.require_device(cpu=args.cpu)
    try:
        proc = init_distributed(args.launcher, use_cuda=not args.cpu)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    cfg, optim = _configure(args, proc)
    hook = parse_hooks(cfg)
    check_data_files(cfg, training=True)
    run_dir = run_dir_for(args.cfg_file, args.extra_tag, args.output_dir)
    logger = create_logger(run_dir.log_file("train", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")), rank=proc.rank)
    run = _Run(args, proc, cfg, optim, run_dir, logger, hook)
    _find_resume(run)
    return run


def train_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``tools/train.py``; returns a summary (run_dir, epoch, global_iter) for scripts and tests."""
    from .. import runtime

    run = _prepare(parse_train_args(argv))
    metrics, finished = None, False
    try:
        _seed(run)
        runtime.import_pcdet(cpu=run.args.cpu)
        dataset, _ = runtime.build_dataset(
            run.cfg,
            training=True,
            batch_size=run.optim.BATCH_SIZE_PER_GPU,
            workers=run.args.workers,
            logger=run.logger,
        )
        check_gt_sampler(dataset)
        model = _build_model(run, dataset)
        if run.proc.rank == 0:
            save_config(run.cfg, run.run_dir.config_yaml)
            resume_step = None if run.resume_ckpt is None else int(run.resume_ckpt["global_iter"])
            metrics = MetricsLogger(run.run_dir.root, resume_step=resume_step)
        trainer = _build_trainer(run, dataset, model, metrics)
        run.logger.info(
            f"run directory {run.run_dir.root}; {run.proc.world_size} process(es), {run.optim.BATCH_SIZE_PER_GPU} "
            f"frames per process, device {run.proc.device}; training {type(unwrap_model(model)).__name__}: "
            f"{run.optim.NUM_EPOCHS} epochs x {trainer.iters_per_epoch} iterations, {run.optim.OPTIMIZER}, "
            f"LR {run.optim.LR}, clip {run.optim.GRAD_NORM_CLIP}; starting at iteration {trainer.state.global_iter}"
        )
        start = time.time()
        try:
            state = trainer.fit()
        except TrainingInterrupted:
            finished = True  # every rank stops after the same step (agreed in the loop): they can meet at the barrier
            raise
        finished = True
    finally:
        try:
            if metrics is not None:
                metrics.close()
        finally:
            shutdown_distributed(synchronize=finished)
    run.logger.info(f"done: epoch {state.epoch}, iteration {state.global_iter}, {time.time() - start:.1f} s")
    return {"run_dir": run.run_dir.root, "epoch": state.epoch, "global_iter": state.global_iter}

"""Engine pieces behind the tools, without OpenPCDet: run directories, checkpoint polling for --eval_all --wait,
resume lookup, and DDP sharding of the Trainer (gloo, 2 processes)."""

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from pcdet_gciou.training import find_resume_checkpoint, iter_new_checkpoints, read_metrics, run_dir_for

REPO = Path(__file__).resolve().parents[1]


def test_run_dir_layout(tmp_path):
    run = run_dir_for("cfgs/kitti_models/second_gciou.yaml", "default", str(tmp_path))
    assert run.root == tmp_path.resolve() / "second_gciou" / "default"
    assert run_dir_for("x/pointpillar.yaml", "paper", None).root.parts[-3:] == ("output", "pointpillar", "paper")
    assert (run.metrics_csv.name, run.eval_csv.name, run.ckpt_dir.name) == ("metrics.csv", "eval_results.csv", "ckpt")
    assert run.eval_output("checkpoint_epoch_3.pth", "val") == run.root / "eval" / "epoch_3" / "val"
    assert run.eval_output("checkpoint_iter_7.pth", "val") == run.root / "eval" / "checkpoint_iter_7" / "val"


def test_resume_lookup_takes_the_newest_checkpoint(tmp_path):
    assert find_resume_checkpoint(tmp_path / "none") is None
    for i, name in enumerate(("checkpoint_epoch_2.pth", "latest_model.pth", "checkpoint_iter_9.pth")):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_iter_9.pth"
    os.utime(tmp_path / "latest_model.pth", (2000, 2000))
    assert find_resume_checkpoint(tmp_path).name == "latest_model.pth"


def test_iter_new_checkpoints_polls_in_epoch_order(tmp_path):
    for epoch in (2, 10, 1):
        (tmp_path / f"checkpoint_epoch_{epoch}.pth").write_bytes(b"x")
    (tmp_path / "latest_model.pth").write_bytes(b"x")
    now = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 2:  # a new checkpoint appears while waiting
            (tmp_path / "checkpoint_epoch_11.pth").write_bytes(b"x")

    seen = [
        p.name
        for p in iter_new_checkpoints(
            tmp_path,
            lambda: {"checkpoint_epoch_2.pth"},
            wait=True,
            max_waiting_s=100,
            poll_s=30,
            clock=lambda: now[0],
            sleep=sleep,
        )
    ]
    assert seen == ["checkpoint_epoch_1.pth", "checkpoint_epoch_10.pth", "checkpoint_epoch_11.pth"]
    # after epoch 11 (found at t=60) it waits until more than 100 s pass without a new one: t = 90, 120, 150, 180
    assert now[0] == 180 and len(sleeps) == 6
    once = list(
        iter_new_checkpoints(
            tmp_path,
            lambda: set(),
            wait=False,
            max_waiting_s=0,
            poll_s=1,
            sleep=lambda s: pytest.fail("must not sleep without wait"),
        )
    )
    assert [p.name for p in once] == [
        "checkpoint_epoch_1.pth",
        "checkpoint_epoch_2.pth",
        "checkpoint_epoch_10.pth",
        "checkpoint_epoch_11.pth",
    ]
    (tmp_path / "checkpoint_iter_5.pth").write_bytes(b"x")  # a run ended by --max_iters: evaluated after the epochs
    again = iter_new_checkpoints(tmp_path, lambda: {p.name for p in once}, wait=False, max_waiting_s=0, poll_s=1)
    assert [p.name for p in again] == ["checkpoint_iter_5.pth"]


def _ddp_worker(rank, world_size, run_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training_loop import CONFIG, NoisyDataset, TinyNet, mse_step

    from pcdet_gciou.training import (
        MetricsLogger,
        RunOptions,
        Trainer,
        build_optimizer,
        build_scheduler,
        make_epoch_loader,
    )
    from pcdet_gciou.training.distributed import shutdown_distributed

    torch.manual_seed(0)
    model = TinyNet()
    seen = []
    dataset = NoisyDataset()
    loader_for_epoch, iters = make_epoch_loader(dataset, batch_size=2, seed=3, rank=rank, world_size=world_size)

    def recording_loader(epoch, skip):
        seen.extend(index for _, index in loader_for_epoch(epoch, skip).sampler)
        return loader_for_epoch(epoch, skip)

    opt = build_optimizer(model, CONFIG["OPTIMIZATION"])
    sched = build_scheduler(opt, CONFIG["OPTIMIZATION"], total_iters=iters, iters_per_epoch=iters)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    metrics = MetricsLogger(run_dir, tensorboard=False) if rank == 0 else None
    Trainer(
        ddp,
        opt,
        sched,
        train_step=mse_step,
        loader_for_epoch=recording_loader,
        iters_per_epoch=iters,
        total_epochs=1,
        ckpt_dir=Path(run_dir) / "ckpt",
        config=CONFIG,
        grad_norm_clip=10.0,
        options=RunOptions(progress=False),
        metrics=metrics,
        rank=rank,
    ).fit()
    if metrics is not None:
        metrics.close()
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, (seen, [p.detach().clone() for p in model.parameters()]))
    if rank == 0:
        torch.save(gathered, Path(run_dir) / "gathered.pt")
    del ddp  # the DDP reducer holds the process group: release it before the teardown, not at interpreter exit
    shutdown_distributed()


@pytest.mark.slow
def test_ddp_shards_data_and_only_rank0_writes(tmp_path):
    with socket.socket() as probe:  # a port the OS says is free, not one derived from the pid
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    (seen0, params0), (seen1, params1) = torch.load(tmp_path / "gathered.pt", weights_only=False)
    # 8 samples over 2 ranks: 4 each, disjoint, together the whole dataset
    assert len(seen0) == len(seen1) == 4 and sorted(seen0 + seen1) == list(range(8))
    for a, b in zip(params0, params1):  # DDP keeps replicas identical
        assert torch.equal(a, b)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["checkpoint_epoch_1.pth"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv") if r["tag"] == "train/loss"] == [1, 2]


def _failing_eval_worker(rank, world_size, run_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training_loop import CONFIG, NoisyDataset, TinyNet, mse_step

    from pcdet_gciou.training import RunOptions, Trainer, build_optimizer, build_scheduler, make_epoch_loader
    from pcdet_gciou.training.distributed import shutdown_distributed

    def eval_hook(epoch, path):
        raise ValueError("evaluation broke")

    model = torch.nn.parallel.DistributedDataParallel(TinyNet())
    loader, iters = make_epoch_loader(NoisyDataset(), batch_size=2, seed=3, rank=rank, world_size=world_size)
    opt = build_optimizer(model, CONFIG["OPTIMIZATION"])
    sched = build_scheduler(opt, CONFIG["OPTIMIZATION"], total_iters=2 * iters, iters_per_epoch=iters)
    trainer = Trainer(
        model,
        opt,
        sched,
        train_step=mse_step,
        loader_for_epoch=loader,
        iters_per_epoch=iters,
        total_epochs=2,
        ckpt_dir=Path(run_dir) / "ckpt",
        config=CONFIG,
        grad_norm_clip=10.0,
        options=RunOptions(progress=False, eval_interval=1),
        eval_hook=eval_hook,
        rank=rank,
    )
    try:
        trainer.fit()
        outcome = "finished"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    (Path(run_dir) / f"rank{rank}.txt").write_text(f"{outcome} at iteration {trainer.state.global_iter}")
    del model, trainer
    shutdown_distributed(synchronize=False)


@pytest.mark.slow
def test_ddp_evaluation_failure_on_rank0_stops_every_rank(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = torch.multiprocessing.spawn(_failing_eval_worker, args=(2, str(tmp_path), port), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # before the fix rank 1 waited at a barrier forever
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank is still waiting 120 s after rank 0's evaluation failed")
    assert (tmp_path / "rank0.txt").read_text() == "ValueError: evaluation broke at iteration 2"
    assert (tmp_path / "rank1.txt").read_text().startswith("RuntimeError: the evaluation of checkpoint_epoch_1.pth")

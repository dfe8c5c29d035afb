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


def _free_port() -> int:
    with socket.socket() as probe:  # a port the OS says is free, not one derived from the pid
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tiny_ddp_trainer(rank, world_size, run_dir, port, *, epochs, wrap_loader=lambda loader: loader, **trainer_kwargs):
    """Joins the gloo group and returns a Trainer of test_training_loop's TinyNet, wrapped in DDP."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training_loop import CONFIG, NoisyDataset, TinyNet, mse_step

    from pcdet_gciou.training import Trainer, build_optimizer, build_scheduler, make_epoch_loader

    torch.manual_seed(0)
    model = TinyNet()
    loader, iters = make_epoch_loader(NoisyDataset(), batch_size=2, seed=3, rank=rank, world_size=world_size)
    opt = build_optimizer(model, CONFIG["OPTIMIZATION"])
    sched = build_scheduler(opt, CONFIG["OPTIMIZATION"], total_iters=epochs * iters, iters_per_epoch=iters)
    return Trainer(
        torch.nn.parallel.DistributedDataParallel(model),
        opt,
        sched,
        train_step=mse_step,
        loader_for_epoch=wrap_loader(loader),
        iters_per_epoch=iters,
        total_epochs=epochs,
        ckpt_dir=Path(run_dir) / "ckpt",
        config=CONFIG,
        grad_norm_clip=10.0,
        rank=rank,
        **trainer_kwargs,
    )


def _ddp_worker(rank, world_size, run_dir, port):
    from pcdet_gciou.training import MetricsLogger, RunOptions
    from pcdet_gciou.training.distributed import shutdown_distributed

    seen = []

    def recording(loader_for_epoch):
        def loader(epoch, skip):
            seen.extend(index for _, index in loader_for_epoch(epoch, skip).sampler)
            return loader_for_epoch(epoch, skip)

        return loader

    metrics = MetricsLogger(run_dir, tensorboard=False) if rank == 0 else None
    trainer = _tiny_ddp_trainer(
        rank,
        world_size,
        run_dir,
        port,
        epochs=1,
        wrap_loader=recording,
        options=RunOptions(progress=False),
        metrics=metrics,
    )
    trainer.fit()
    if metrics is not None:
        metrics.close()
    gathered = [None] * world_size
    params = [p.detach().clone() for p in trainer.model.module.parameters()]
    torch.distributed.all_gather_object(gathered, (seen, params))
    if rank == 0:
        torch.save(gathered, Path(run_dir) / "gathered.pt")
    del trainer  # the DDP reducer holds the process group: release it before the teardown, not at interpreter exit
    shutdown_distributed()


@pytest.mark.slow
def test_ddp_shards_data_and_only_rank0_writes(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    (seen0, params0), (seen1, params1) = torch.load(tmp_path / "gathered.pt", weights_only=False)
    # 8 samples over 2 ranks: 4 each, disjoint, together the whole dataset
    assert len(seen0) == len(seen1) == 4 and sorted(seen0 + seen1) == list(range(8))
    for a, b in zip(params0, params1):  # DDP keeps replicas identical
        assert torch.equal(a, b)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["checkpoint_epoch_1.pth"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv") if r["tag"] == "train/loss"] == [1, 2]


def _failing_eval_worker(rank, world_size, run_dir, port):
    from pcdet_gciou.training import RunOptions
    from pcdet_gciou.training.distributed import shutdown_distributed

    def eval_hook(epoch, path):
        raise ValueError("evaluation broke")

    options = RunOptions(progress=False, eval_interval=1)
    trainer = _tiny_ddp_trainer(rank, world_size, run_dir, port, epochs=2, options=options, eval_hook=eval_hook)
    try:
        trainer.fit()
        outcome = "finished"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    (Path(run_dir) / f"rank{rank}.txt").write_text(f"{outcome} at iteration {trainer.state.global_iter}")
    del trainer
    shutdown_distributed(synchronize=False)


@pytest.mark.slow
def test_ddp_evaluation_failure_on_rank0_stops_every_rank(tmp_path):
    worker_args = (2, str(tmp_path), _free_port())
    context = torch.multiprocessing.spawn(_failing_eval_worker, args=worker_args, nprocs=2, join=False)
    deadline = time.monotonic() + 120
    # before the fix rank 1 waited at a barrier for rank 0 (with NCCL until the collective timeout; with gloo it
    # failed on the closed connection instead, with a message that did not say why)
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank is still waiting 120 s after rank 0's evaluation failed")
    assert (tmp_path / "rank0.txt").read_text() == "ValueError: evaluation broke at iteration 2"
    assert (tmp_path / "rank1.txt").read_text().startswith("RuntimeError: the evaluation of checkpoint_epoch_1.pth")

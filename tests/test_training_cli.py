"""CLI logic that needs no OpenPCDet: run directories, argument parsing, refusal before any model is built,
checkpoint polling for --eval_all --wait, import isolation, and DDP sharding of the Trainer (gloo, 2 processes)."""

import os
import sys
from pathlib import Path

import pytest
import torch

from pcdet_gciou.config import apply_set_args, load_config
from pcdet_gciou.training import atomic_torch_save, read_metrics
from pcdet_gciou.training.checkpoint import to_plain
from pcdet_gciou.training.cli import iter_new_checkpoints, parse_test_args, parse_train_args, run_dir_for, train_main

REPO = Path(__file__).resolve().parents[1]
PP_CFG = REPO / "cfgs" / "kitti_models" / "pointpillar_gciou.yaml"


def test_run_dir_layout_and_parsing(tmp_path):
    assert (
        run_dir_for("cfgs/kitti_models/second_gciou.yaml", "default", str(tmp_path))
        == tmp_path.resolve() / "second_gciou" / "default"
    )
    assert run_dir_for("x/pointpillar.yaml", "paper", None).parts[-3:] == ("output", "pointpillar", "paper")
    args = parse_train_args(
        [
            "--cfg_file",
            "a.yaml",
            "--batch_size",
            "4",
            "--epochs",
            "40",
            "--set",
            "OPTIMIZATION.LR",
            "0.003",
            "MODEL.X",
            "1",
        ]
    )
    assert (args.batch_size, args.epochs, args.launcher, args.extra_tag) == (4, 40, "none", "default")
    assert args.set_cfgs == ["OPTIMIZATION.LR", "0.003", "MODEL.X", "1"]
    assert (args.max_ckpt_save_num, args.ckpt_save_interval, args.max_iters) == (30, 1, None)
    test_args = parse_test_args(["--cfg_file", "a.yaml", "--eval_all", "--wait"])
    assert test_args.eval_all and test_args.wait and test_args.ckpt is None
    with pytest.raises(SystemExit):  # --ckpt and --eval_all are exclusive
        parse_test_args(["--cfg_file", "a.yaml", "--eval_all", "--ckpt", "x.pth"])


def test_train_refuses_foreign_checkpoint_before_building_anything(tmp_path, monkeypatch):
    from pcdet_gciou.openpcdet import runtime

    monkeypatch.setattr(runtime, "import_pcdet", lambda cpu: pytest.fail("refusal must come before OpenPCDet"))
    cfg = load_config(PP_CFG)
    apply_set_args(cfg, ["DATA_CONFIG.DATA_PATH", str(tmp_path / "kitti")])
    run_dir = run_dir_for(str(PP_CFG), "default", str(tmp_path))
    atomic_torch_save(
        {"model_state": {}, "config": to_plain(cfg), "epoch": 1, "global_iter": 3},
        run_dir / "ckpt" / "checkpoint_epoch_1.pth",
    )
    # No --ckpt: the newest checkpoint of the run directory is picked up and checked.
    with pytest.raises(
        SystemExit,
        match=r"(?s)refusing to resume .*checkpoint_epoch_1\.pth.*"
        r"OPTIMIZATION\.LR: checkpoint=0\.003 current=0\.002.*--extra_tag",
    ):
        train_main(
            [
                "--cfg_file",
                str(PP_CFG),
                "--output_dir",
                str(tmp_path),
                "--data_path",
                str(tmp_path / "k2"),
                "--set",
                "OPTIMIZATION.LR",
                "0.002",
            ]
        )


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


def _ddp_worker(rank, world_size, run_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training_loop import CONFIG, NoisyDataset, TinyNet, mse_step

    from pcdet_gciou.training import MetricsLogger, Trainer, build_optimizer, build_scheduler, make_epoch_loader

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
        metrics=metrics,
        rank=rank,
        progress=False,
    ).fit()
    if metrics is not None:
        metrics.close()
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, (seen, [p.detach().clone() for p in model.parameters()]))
    if rank == 0:
        torch.save(gathered, Path(run_dir) / "gathered.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_shards_data_and_only_rank0_writes(tmp_path):
    port = 29500 + os.getpid() % 1000
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    (seen0, params0), (seen1, params1) = torch.load(tmp_path / "gathered.pt", weights_only=False)
    # 8 samples over 2 ranks: 4 each, disjoint, together the whole dataset
    assert len(seen0) == len(seen1) == 4 and sorted(seen0 + seen1) == list(range(8))
    for a, b in zip(params0, params1):  # DDP keeps replicas identical
        assert torch.equal(a, b)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["checkpoint_epoch_1.pth"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv") if r["tag"] == "train/loss"] == [1, 2]

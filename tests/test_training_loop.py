"""Trainer: exact resume, clipping, config refusal, atomic checkpoints, pruning, metrics.csv (no OpenPCDet)."""

import csv
import os

import numpy as np
import pytest
import torch

from pcdet_gciou.training import (
    LATEST_CHECKPOINT,
    ConfigMismatchError,
    MetricsLogger,
    Trainer,
    append_eval_rows,
    atomic_torch_save,
    build_optimizer,
    build_scheduler,
    evaluated_checkpoints,
    list_epoch_checkpoints,
    load_checkpoint,
    make_epoch_loader,
    prune_checkpoints,
    read_metrics,
)
from pcdet_gciou.training.checkpoint import load_pretrained
from pcdet_gciou.training.options import RunOptions

CONFIG = {
    "MODEL": {"NAME": "Tiny"},
    "DATA_CONFIG": {"DATA_PATH": "/somewhere"},
    "OPTIMIZATION": {
        "OPTIMIZER": "adam_onecycle",
        "LR": 0.01,
        "WEIGHT_DECAY": 0.01,
        "MOMS": [0.95, 0.85],
        "DIV_FACTOR": 10,
        "PCT_START": 0.4,
        "GRAD_NORM_CLIP": 10,
        "NUM_EPOCHS": 3,
        "BATCH_SIZE_PER_GPU": 3,
    },
}


class NoisyDataset(torch.utils.data.Dataset):
    """Fixed inputs plus np.random 'augmentation' noise, as OpenPCDet's augmentors draw from np.random."""

    def __init__(self, n=8):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = torch.randn(n, 1, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(size=4).astype(np.float32)) * 0.1
        return self.x[i] + noise, self.y[i]


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8),
            torch.nn.BatchNorm1d(8),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(8, 1),
        )

    def forward(self, x):
        return self.net(x)


def mse_step(model, batch):
    device = next(model.parameters()).device
    x, y = (t.to(device) for t in batch)
    loss = torch.nn.functional.mse_loss(model(x), y)
    return loss, {"loss_mse": loss.item()}


def make_trainer(run_dir, config=CONFIG, max_iters=None, epochs=3, seed_model=0, device="cpu", **kwargs):
    resume_step = kwargs.pop("resume_step", None)
    options = RunOptions(max_iters=max_iters, progress=False, **kwargs)
    torch.manual_seed(seed_model)
    model = TinyNet().to(device)
    loader_for_epoch, iters = make_epoch_loader(NoisyDataset(), batch_size=3, seed=7)  # 3 + 3 + 2
    opt = build_optimizer(model, config["OPTIMIZATION"])
    sched = build_scheduler(opt, config["OPTIMIZATION"], total_iters=iters * epochs, iters_per_epoch=iters)
    metrics = MetricsLogger(run_dir, tensorboard=False, resume_step=resume_step)
    trainer = Trainer(
        model,
        opt,
        sched,
        train_step=mse_step,
        loader_for_epoch=loader_for_epoch,
        iters_per_epoch=iters,
        total_epochs=epochs,
        ckpt_dir=run_dir / "ckpt",
        config=config,
        grad_norm_clip=config["OPTIMIZATION"]["GRAD_NORM_CLIP"],
        metrics=metrics,
        options=options,
    )
    return trainer, metrics


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_resume_is_identical_to_uninterrupted_run(tmp_path, device):
    full, full_metrics = make_trainer(tmp_path / "full", device=device)
    full.fit()
    full_metrics.close()

    # Interrupted twice: mid-epoch (iteration 4 of 9, epoch 2 of 3) and at an epoch boundary (iteration 6).
    part, metrics = make_trainer(tmp_path / "part", max_iters=4, device=device)
    state = part.fit()
    metrics.close()
    assert (state.epoch, state.global_iter) == (1, 4)
    # max_iters ended the run inside epoch 2: a checkpoint of that iteration, evaluable and resumable
    assert sorted(p.name for p in (tmp_path / "part" / "ckpt").iterdir()) == [
        "checkpoint_epoch_1.pth",
        "checkpoint_iter_4.pth",
    ]
    # Pretend the interrupted run logged two more iterations after its checkpoint: resume must drop them.
    with open(tmp_path / "part" / "metrics.csv", "a") as handle:
        handle.write("5,2,train/loss,123.0\n6,2,train/loss,456.0\n")

    torch.manual_seed(1234)  # scramble the RNGs: resume must restore them
    np.random.seed(1234)
    part, metrics = make_trainer(tmp_path / "part", max_iters=6, seed_model=99, resume_step=4, device=device)
    part.resume(tmp_path / "part" / "ckpt" / "checkpoint_iter_4.pth")
    assert part.optimizer.param_groups[0]["lr"] == pytest.approx(read_lr(tmp_path / "full", step=5))
    state = part.fit()
    metrics.close()
    assert (state.epoch, state.global_iter) == (2, 6)
    assert not (tmp_path / "part" / "ckpt" / "checkpoint_iter_6.pth").exists()  # checkpoint_epoch_2 is that one

    part, metrics = make_trainer(tmp_path / "part", seed_model=5, resume_step=6, device=device)
    part.resume(tmp_path / "part" / "ckpt" / "checkpoint_epoch_2.pth")
    part.fit()
    metrics.close()

    for key, value in full.model.state_dict().items():
        assert torch.equal(value, part.model.state_dict()[key]), key
    full_rows = read_metrics(tmp_path / "full" / "metrics.csv")
    part_rows = read_metrics(tmp_path / "part" / "metrics.csv")
    steps = [r["step"] for r in part_rows if r["tag"] == "train/loss"]
    assert steps == list(range(1, 10))  # every iteration exactly once
    assert {(r["step"], r["tag"]): r["value"] for r in part_rows} == {
        (r["step"], r["tag"]): r["value"] for r in full_rows
    }
    assert [r["epoch"] for r in part_rows if r["tag"] == "train/lr"] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [p.name for p in list_epoch_checkpoints(tmp_path / "part" / "ckpt")] == [
        "checkpoint_epoch_1.pth",
        "checkpoint_epoch_2.pth",
        "checkpoint_epoch_3.pth",
    ]
    ckpt = load_checkpoint(tmp_path / "part" / "ckpt" / "checkpoint_epoch_3.pth")
    assert (ckpt["epoch"], ckpt["global_iter"]) == (3, 9)
    assert set(ckpt["rng_state"]) >= {"python", "numpy", "torch"}
    assert ckpt["config"] == CONFIG


def read_lr(run_dir, step):
    return next(
        r["value"] for r in read_metrics(run_dir / "metrics.csv") if r["step"] == step and r["tag"] == "train/lr"
    )


def test_checkpoint_from_other_config_is_refused(tmp_path):
    trainer, metrics = make_trainer(tmp_path, max_iters=1)
    trainer.fit()
    metrics.close()
    other = {**CONFIG, "OPTIMIZATION": {**CONFIG["OPTIMIZATION"], "LR": 0.003}}
    other["DATA_CONFIG"] = {"DATA_PATH": "/elsewhere"}  # a different data location alone is allowed
    trainer, metrics = make_trainer(tmp_path, config=other)
    with pytest.raises(ConfigMismatchError, match=r"OPTIMIZATION\.LR: checkpoint=0\.01 current=0\.003"):
        trainer.resume(tmp_path / "ckpt" / "checkpoint_iter_1.pth")
    metrics.close()
    moved = {**CONFIG, "DATA_CONFIG": {"DATA_PATH": "/elsewhere"}}
    trainer, metrics = make_trainer(tmp_path, config=moved)
    assert trainer.resume(tmp_path / "ckpt" / "checkpoint_iter_1.pth").global_iter == 1
    metrics.close()


def test_grad_norm_clipping_and_logged_norm(tmp_path):
    cfg = {"OPTIMIZER": "sgd", "LR": 0.1, "MOMENTUM": 0.0, "DECAY_STEP_LIST": [], "LR_DECAY": 0.1}
    cfg.update(BATCH_SIZE_PER_GPU=1, NUM_EPOCHS=1)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[30.0, 40.0]])  # d(w.x)/dw = x, |x| = 50

    def step(m, batch):
        return m(batch).sum(), {}

    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_iters=1, iters_per_epoch=1)
    metrics = MetricsLogger(tmp_path, tensorboard=False)
    trainer = Trainer(
        model,
        opt,
        sched,
        train_step=step,
        loader_for_epoch=lambda e, s: [x],
        iters_per_epoch=1,
        total_epochs=1,
        ckpt_dir=tmp_path / "ckpt",
        config={},
        grad_norm_clip=10.0,
        metrics=metrics,
        options=RunOptions(progress=False),
    )
    trainer.fit()
    metrics.close()
    # clipped gradient = x * 10 / 50 -> w = w0 - 0.1 * (6, 8)
    assert torch.allclose(model.weight, torch.tensor([[1.0 - 0.6, -1.0 - 0.8]]))
    rows = {r["tag"]: r["value"] for r in read_metrics(tmp_path / "metrics.csv")}
    assert rows["train/grad_norm"] == pytest.approx(50.0)  # the norm before clipping
    assert rows["train/lr"] == pytest.approx(0.1)


def test_non_finite_loss_stops_with_context(tmp_path):
    model = torch.nn.Linear(1, 1)
    cfg = {
        "OPTIMIZER": "adam",
        "LR": 0.1,
        "DECAY_STEP_LIST": [],
        "LR_DECAY": 0.1,
        "BATCH_SIZE_PER_GPU": 1,
        "NUM_EPOCHS": 1,
    }
    opt = build_optimizer(model, cfg)
    trainer = Trainer(
        model,
        opt,
        build_scheduler(opt, cfg, total_iters=1, iters_per_epoch=1),
        train_step=lambda m, b: (m(b).sum() * float("nan"), {"rpn_loss_loc": float("nan")}),
        loader_for_epoch=lambda e, s: [torch.ones(1, 1)],
        iters_per_epoch=1,
        total_epochs=1,
        ckpt_dir=tmp_path,
        config={},
        grad_norm_clip=10.0,
        options=RunOptions(progress=False),
    )
    with pytest.raises(FloatingPointError, match="iteration 1.*rpn_loss_loc"):
        trainer.fit()


def test_atomic_save_leaves_old_file_intact_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "checkpoint_epoch_1.pth"
    atomic_torch_save({"model_state": {"w": torch.ones(2)}}, path)

    def exploding_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"model_state": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(2))
    assert os.listdir(path.parent) == ["checkpoint_epoch_1.pth"]  # no temp files left behind


def test_prune_keeps_newest_epochs_numerically(tmp_path):
    for epoch in (1, 2, 9, 10, 11):
        (tmp_path / f"checkpoint_epoch_{epoch}.pth").write_bytes(b"x")
    (tmp_path / LATEST_CHECKPOINT).write_bytes(b"x")
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth", "checkpoint_epoch_9.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch_10.pth",
        "checkpoint_epoch_11.pth",
        LATEST_CHECKPOINT,
    ]
    with pytest.raises(ValueError, match="max_ckpt_save_num"):
        prune_checkpoints(tmp_path, keep=0)


def test_trainer_prunes_with_max_ckpt_save_num(tmp_path):
    trainer, metrics = make_trainer(tmp_path, max_ckpt_save_num=1)
    trainer.fit()
    metrics.close()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["checkpoint_epoch_3.pth"]


def test_metrics_csv_format(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as metrics:
        metrics.log(1, 1, {"train/loss": 2.5, "train/lr": 0.001})
        metrics.log(2, 1, {"train/loss": torch.tensor(1.25)})
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["step", "epoch", "tag", "value"],
        ["1", "1", "train/loss", "2.5"],
        ["1", "1", "train/lr", "0.001"],
        ["2", "1", "train/loss", "1.25"],
    ]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))


def test_eval_rows_replace_per_checkpoint(tmp_path):
    path = tmp_path / "eval_results.csv"
    row = {
        "epoch": 1,
        "checkpoint": "checkpoint_epoch_1.pth",
        "class": "Car",
        "metric": "3d",
        "difficulty": "moderate",
        "recall": "R11",
        "ap": 12.5,
    }
    append_eval_rows(path, [row])
    append_eval_rows(path, [dict(row, ap=13.0), dict(row, checkpoint="checkpoint_epoch_2.pth", epoch=2)])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["checkpoint"], r["ap"]) for r in rows] == [
        ("checkpoint_epoch_1.pth", "13.0"),
        ("checkpoint_epoch_2.pth", "12.5"),
    ]
    assert evaluated_checkpoints(path) == {"checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"}
    with pytest.raises(ValueError, match="missing"):
        append_eval_rows(path, [{"epoch": 1}])


def test_load_pretrained_keeps_matching_shapes(tmp_path):
    source = TinyNet()
    atomic_torch_save({"model_state": source.state_dict()}, tmp_path / "pre.pth")
    target = torch.nn.Sequential()
    target.net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3)
    )
    loaded, skipped = load_pretrained(target, tmp_path / "pre.pth")
    assert skipped == ["net.4.bias", "net.4.weight"]
    assert torch.equal(target.net[0].weight, source.net[0].weight)

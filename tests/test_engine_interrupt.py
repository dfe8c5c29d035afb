"""SIGINT/SIGTERM during training: the step finishes, a checkpoint of that iteration is written, the process exits,
and rerunning resumes bit-exactly (a tiny torch model through the engine alone, in subprocesses)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = r"""
import os, sys, time
from pathlib import Path

import numpy as np
import torch

from pcdet_gciou.training import (RunOptions, Trainer, TrainingInterrupted, build_optimizer, build_scheduler,
                                  find_resume_checkpoint, load_checkpoint, make_epoch_loader)

run = Path(sys.argv[1])
pause_at = int(os.environ.get("PAUSE_AT", "0"))
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):  # np.random "augmentation", as OpenPCDet's augmentors
        x = torch.full((4,), float(i)) + torch.from_numpy(np.random.normal(size=4).astype(np.float32))
        return x, x.sum(0, keepdim=True) * 0.1


optim_cfg = {"OPTIMIZER": "adam_onecycle", "LR": 0.01, "WEIGHT_DECAY": 0.01, "BATCH_SIZE_PER_GPU": 3, "NUM_EPOCHS": 3}
loader_for_epoch, iters = make_epoch_loader(Data(), batch_size=3, seed=7)
opt = build_optimizer(model, optim_cfg)
sched = build_scheduler(opt, optim_cfg, total_iters=3 * iters, iters_per_epoch=iters)
state = {}


def step(m, batch):
    if state["trainer"].state.global_iter + 1 == pause_at:
        (run / "paused").touch()
        deadline = time.monotonic() + 60
        while not (run / "signalled").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # hold this step until the test has sent its signal: the step must still complete
    x, y = batch
    loss = torch.nn.functional.mse_loss(m(x), y)
    return loss, {}


trainer = Trainer(model, opt, sched, train_step=step, loader_for_epoch=loader_for_epoch, iters_per_epoch=iters,
                  total_epochs=3, ckpt_dir=run / "ckpt", config={"OPTIMIZATION": optim_cfg}, grad_norm_clip=10.0,
                  options=RunOptions(progress=False, ckpt_save_time_interval=0))
state["trainer"] = trainer
resume = find_resume_checkpoint(run / "ckpt")
if resume is not None:
    trainer.resume(resume)
try:
    trainer.fit()
except TrainingInterrupted as exc:
    print(f"STOPPED {exc.signal_name} {exc.global_iter} {load_checkpoint(exc.checkpoint)['global_iter']}", flush=True)
    sys.exit(130)
torch.save({k: v for k, v in model.state_dict().items()}, run / "final.pt")
"""


def _run(script, run_dir, env=None):
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_the_step_and_rerun_resumes_bit_exactly(tmp_path, sig):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    full = _run(script, tmp_path / "full")
    part = _run(script, tmp_path / "part", env={"PAUSE_AT": "5"})  # iteration 5 of 9: inside epoch 2
    deadline = time.monotonic() + 60
    while not (tmp_path / "part" / "paused").exists():
        assert part.poll() is None, part.communicate()
        assert time.monotonic() < deadline, "the training script never reached iteration 5"
        time.sleep(0.05)
    part.send_signal(sig)
    (tmp_path / "part" / "signalled").touch()
    out, err = part.communicate(timeout=60)
    assert part.returncode == 130, out + err
    assert out.strip() == f"STOPPED {sig.name} 5 5"  # the interrupted step completed and was checkpointed
    assert sorted(p.name for p in (tmp_path / "part" / "ckpt").iterdir()) == [
        "checkpoint_epoch_1.pth",
        "latest_model.pth",
    ]
    rerun = _run(script, tmp_path / "part")  # the same command again
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    full_out, full_err = full.communicate(timeout=120)
    assert full.returncode == 0, full_out + full_err
    expected = torch.load(tmp_path / "full" / "final.pt")
    resumed = torch.load(tmp_path / "part" / "final.pt")
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    assert not Path(tmp_path / "part" / "ckpt" / "latest_model.pth").exists()  # superseded by the epoch checkpoints

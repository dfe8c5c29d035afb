"""Optimiser/scheduler semantics against hand-derived values of OpenPCDet's adam_onecycle and step decay."""

import math

import pytest
import torch

from pcdet_gciou.training import build_optimizer, build_scheduler, onecycle_reference_lr

ONECYCLE = {
    "OPTIMIZER": "adam_onecycle",
    "LR": 0.003,
    "WEIGHT_DECAY": 0.01,
    "MOMS": [0.95, 0.85],
    "DIV_FACTOR": 10,
    "PCT_START": 0.4,
    "BATCH_SIZE_PER_GPU": 4,
    "NUM_EPOCHS": 10,
}


def _run_schedule(cfg, total_iters, iters_per_epoch=1):
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_iters=total_iters, iters_per_epoch=iters_per_epoch)
    lrs, beta1s = [], []
    for _ in range(total_iters):
        lrs.append(opt.param_groups[0]["lr"])
        beta1s.append(opt.param_groups[0].get("betas", (None,))[0])
        opt.step()
        sched.step()
    return lrs, beta1s


def test_onecycle_hand_computed_values():
    # T = 10, a = int(10 * 0.4) = 4; phase 1 anneals 3e-4 -> 3e-3 over i / 4, phase 2 3e-3 -> 3e-8 over (i - 4) / 6.
    lrs, beta1s = _run_schedule(ONECYCLE, 10)
    expected = {
        0: 3e-4,
        2: 3e-3 - (3e-3 - 3e-4) / 2,  # cos(pi/2) = 0: midpoint
        4: 3e-3,  # peak exactly at a
        7: 3e-8 + (3e-3 - 3e-8) / 2,  # (7 - 4) / 6 = 0.5: midpoint of phase 2
        9: 3e-8 + (3e-3 - 3e-8) * (1 + math.cos(math.pi * 5 / 6)) / 2,
    }
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9, abs=1e-15), step
    # beta1 follows MOMS: 0.95 -> 0.85 over phase 1, back to 0.95 over phase 2.
    assert beta1s[0] == pytest.approx(0.95)
    assert beta1s[2] == pytest.approx(0.90)
    assert beta1s[4] == pytest.approx(0.85)
    assert beta1s[7] == pytest.approx(0.90)


@pytest.mark.parametrize("total", [2, 3, 7, 41, 250])
def test_onecycle_matches_closed_form_everywhere(total):
    lrs, _ = _run_schedule(ONECYCLE, total)
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(onecycle_reference_lr(step, total, 0.003, 10.0, 0.4), rel=1e-9, abs=1e-15)


def test_onecycle_weight_decay_is_decoupled_and_beta2_is_stock():
    # fastai OptimWrapper(true_wd=True): p <- p * (1 - lr * wd), then Adam(betas=(beta1, 0.99)) without L2.
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = build_optimizer(model, ONECYCLE)
    build_scheduler(opt, ONECYCLE, total_iters=10, iters_per_epoch=10)
    assert opt.param_groups[0]["betas"][1] == 0.99
    lr = opt.param_groups[0]["lr"]
    model.weight.grad = torch.full_like(model.weight, 2.0)
    opt.step()
    # First Adam step: m_hat = g, v_hat = g^2, so the Adam update is lr * g / (|g| + eps).
    expected = 1.0 * (1 - lr * 0.01) - lr * 2.0 / (2.0 + 1e-8)
    assert model.weight.item() == pytest.approx(expected, rel=1e-7)


def test_step_decay_with_clip_and_warmup():
    cfg = {
        "OPTIMIZER": "adam",
        "LR": 0.01,
        "WEIGHT_DECAY": 0.0,
        "DECAY_STEP_LIST": [2, 3],
        "LR_DECAY": 0.1,
        "LR_CLIP": 0.0005,
        "BATCH_SIZE_PER_GPU": 4,
        "NUM_EPOCHS": 5,
    }
    lrs, _ = _run_schedule(cfg, 10, iters_per_epoch=2)
    # epochs 0-1 (iters 0-3): 0.01; epoch 2 (iters 4-5): 0.001; from epoch 3: 1e-4 clipped to 5e-4.
    assert lrs[:4] == pytest.approx([0.01] * 4)
    assert lrs[4:6] == pytest.approx([0.001] * 2)
    assert lrs[6:] == pytest.approx([0.0005] * 4)

    warm = dict(cfg, LR_WARMUP=True, WARMUP_EPOCH=1, DIV_FACTOR=10)
    lrs, _ = _run_schedule(warm, 6, iters_per_epoch=4)
    # cosine warm-up from LR/10 to LR over the first 4 iterations: factor 0.1 + 0.9 * (1 - cos(pi i / 4)) / 2
    for i in range(4):
        assert lrs[i] == pytest.approx(0.01 * (0.1 + 0.9 * (1 - math.cos(math.pi * i / 4)) / 2))
    assert lrs[4] == pytest.approx(0.01)


def test_bad_optimizer_settings_raise_value_error():
    model = torch.nn.Linear(1, 1)
    run = {"BATCH_SIZE_PER_GPU": 2, "NUM_EPOCHS": 1}
    with pytest.raises(ValueError, match="adam_onecycle"):
        build_optimizer(model, {"OPTIMIZER": "lamb", "LR": 0.1, **run})
    with pytest.raises(ValueError, match="MOMENTUM"):
        build_optimizer(model, {"OPTIMIZER": "sgd", "LR": 0.1, **run})
    with pytest.raises(ValueError, match=r"lacks required key\(s\) \['NUM_EPOCHS'\]"):
        build_optimizer(model, {"OPTIMIZER": "adam_onecycle", "LR": 0.1, "BATCH_SIZE_PER_GPU": 2})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['GRAD_NORM_CLP'\] in OPTIMIZATION"):
        build_optimizer(model, dict(ONECYCLE, GRAD_NORM_CLP=5))
    with pytest.raises(ValueError, match="MOMS must hold 2 numbers"):
        build_optimizer(model, dict(ONECYCLE, MOMS=[0.9]))
    opt = build_optimizer(model, ONECYCLE)
    with pytest.raises(ValueError, match="PCT_START"):
        build_scheduler(opt, dict(ONECYCLE, PCT_START=1.5), total_iters=10, iters_per_epoch=1)
    with pytest.raises(ValueError, match="total_iters"):
        build_scheduler(opt, ONECYCLE, total_iters=0, iters_per_epoch=1)


def test_optimization_defaults_live_in_the_dataclass():
    from pcdet_gciou.training import OptimizationOptions

    opts = OptimizationOptions.parse(
        {"OPTIMIZER": "adam_onecycle", "LR": 0.003, "BATCH_SIZE_PER_GPU": 4, "NUM_EPOCHS": 2}
    )
    assert (opts.GRAD_NORM_CLIP, opts.DIV_FACTOR, opts.PCT_START, opts.BETAS) == (10.0, 10.0, 0.4, (0.9, 0.99))
    assert OptimizationOptions.parse(opts) is opts
    bigger = opts.with_run_overrides(batch_size_per_gpu=8, epochs=None)
    assert (bigger.BATCH_SIZE_PER_GPU, bigger.NUM_EPOCHS, opts.BATCH_SIZE_PER_GPU) == (8, 2, 4)


def test_every_shipped_config_parses(tmp_path):
    from pathlib import Path

    from pcdet_gciou.config import load_config
    from pcdet_gciou.training import OptimizationOptions

    cfgs = sorted((Path(__file__).resolve().parents[1] / "cfgs").rglob("*.yaml"))
    parsed = [
        OptimizationOptions.parse(load_config(p)["OPTIMIZATION"]) for p in cfgs if "OPTIMIZATION" in load_config(p)
    ]
    assert len(parsed) >= 8 and all(o.GRAD_NORM_CLIP > 0 for o in parsed)

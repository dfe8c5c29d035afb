"""The box-regression simulation: determinism, every loss improves scenario (c), outputs, CLI errors."""

import csv
import math

import pytest
import torch

from pcdet_gciou.simulate import LOSS_SPECS, METRICS, SCENARIOS, run_simulation, smooth_l1_residual_loss, summarise
from pcdet_gciou.simulate.cli import main
from pcdet_gciou.simulate.parametrisation import decode_residual, encode_residual
from pcdet_gciou.simulate.report import angle_oscillation, first_step_reaching


def _run(scenarios, losses, steps=6, boxes=4, seed=0, **kw):
    return run_simulation(
        [SCENARIOS[s] for s in scenarios], losses, steps=steps, boxes_per_group=boxes, seed=seed, **kw
    )


def test_residual_coder_round_trip():
    gen = torch.Generator().manual_seed(0)
    problem = SCENARIOS["kitti"].make(8, gen)
    res = encode_residual(problem.gt, problem.anchors)
    torch.testing.assert_close(decode_residual(res, problem.anchors), problem.gt)
    # scenario (c) starts at the anchors: zero residuals
    torch.testing.assert_close(encode_residual(problem.init_boxes, problem.anchors), torch.zeros_like(res))


def test_smooth_l1_uses_sin_difference_and_beta():
    anchors = torch.tensor([[0.0, 0.0, 0.0, 3.9, 1.6, 1.56, 0.0]], dtype=torch.float64)
    gt = anchors.clone()
    flipped = gt.clone()
    flipped[0, 6] = math.pi  # a pi flip costs nothing: sin(pi) = 0
    assert smooth_l1_residual_loss(flipped, gt, anchors).item() == pytest.approx(0.0, abs=1e-12)
    shifted = gt.clone()
    shifted[0, 0] = 0.01 * math.hypot(3.9, 1.6)  # residual 0.01 < beta = 1/9: quadratic zone
    assert smooth_l1_residual_loss(shifted, gt, anchors).item() == pytest.approx(0.5 * 0.01**2 * 9)
    shifted[0, 0] = 1.0 * math.hypot(3.9, 1.6)  # residual 1: linear zone
    assert smooth_l1_residual_loss(shifted, gt, anchors).item() == pytest.approx(1.0 - 0.5 / 9)


def test_deterministic_under_a_seed():
    losses = ["log_iou", "gciou_fg"]
    a = _run(["large_angle", "scale"], losses, seed=3)
    b = _run(["large_angle", "scale"], losses, seed=3)
    c = _run(["large_angle", "scale"], losses, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x.history, y.history)
    assert not torch.equal(a[0].history, c[0].history)


def test_scenario_population_does_not_depend_on_the_other_scenarios():
    alone = _run(["kitti"], ["iou"])[0]
    together = _run(["large_angle", "kitti"], ["iou"])[1]
    torch.testing.assert_close(alone.history, together.history)


def test_every_loss_reduces_the_error_in_scenario_c():
    result = _run(["kitti"], list(LOSS_SPECS), steps=40, boxes=10)[0]
    iou = result.history[..., METRICS.index("iou")].mean(dim=2)
    angle = result.history[..., METRICS.index("angle_error")].mean(dim=2)
    centre = result.history[..., METRICS.index("centre_error")].mean(dim=2)
    for k, loss in enumerate(result.losses):
        assert iou[-1, k] > iou[0, k] + 0.1, loss
        assert angle[-1, k] < 0.5 * angle[0, k], loss
        assert centre[-1, k] < centre[0, k], loss


def test_losses_are_independent_of_each_other():
    alone = _run(["scale"], ["gciou_fg_gr"])[0]
    mixed = _run(["scale"], ["iou", "gciou_fg_gr"])[0]
    torch.testing.assert_close(alone.history[:, 0], mixed.history[:, 1])


def test_bad_values_raise():
    with pytest.raises(ValueError, match="unknown loss"):
        _run(["kitti"], ["nope"])
    with pytest.raises(ValueError, match="steps"):
        _run(["kitti"], ["iou"], steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        _run(["kitti"], ["iou"], optimizer="lbfgs")
    with pytest.raises(ValueError, match="param"):
        _run(["kitti"], ["iou"], param="polar")
    with pytest.raises(ValueError, match="lr"):
        _run(["kitti"], ["iou"], lr=float("nan"))
    with pytest.raises(TypeError, match="Scenario"):
        run_simulation(["kitti"], ["iou"], steps=1, boxes_per_group=1, seed=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "positive integer"),
        (["--losses", "iou,bogus"], "unknown"),
        (["--scenarios", "z"], "unknown scenario"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
        (["--lr", "-1"], "positive"),
    ],
)
def test_cli_rejects_bad_values(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_oscillation_measures():
    t = torch.arange(21, dtype=torch.float64)
    zigzag = (0.1 + 0.01 * (-1.0) ** t).unsqueeze(-1)
    monotone = (1.0 / (1 + t)).unsqueeze(-1)
    back, rate = angle_oscillation(torch.cat((zigzag, monotone), dim=1))
    assert rate[0] == pytest.approx(1.0) and rate[1] == pytest.approx(0.0)
    assert back[0] == pytest.approx(10 * 0.02 - 0.0, abs=1e-12) and back[1] == pytest.approx(0.0, abs=1e-12)
    assert first_step_reaching(torch.tensor([0.1, 0.5, 0.95]), 0.9) == 2
    assert first_step_reaching(torch.tensor([0.1, 0.5]), 0.9) is None


def test_cli_writes_outputs_that_parse(tmp_path, capsys):
    out = tmp_path / "sim"
    assert (
        main(
            [
                "--steps",
                "5",
                "--boxes",
                "3",
                "--losses",
                "smooth_l1,log_iou,gciou_fg",
                "--scenarios",
                "a,b",
                "--out",
                str(out),
                "--no-progress",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| scenario | group | loss |" in printed
    with open(out / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    # scenario a: 1 group, b: 3 groups; 3 losses; 6 recorded steps each
    assert len(rows) == (1 + 3) * 3 * 6
    assert {r["scenario"] for r in rows} == {"large_angle", "scale"}
    assert {r["group"] for r in rows} == {"all", "Pedestrian", "Car", "Truck"}
    assert all(0.0 <= float(r["iou"]) <= 1.0 and math.isfinite(float(r["angle_error"])) for r in rows)
    report = (out / "report.md").read_text()
    assert "steps to IoU 0.9" in report and "scenario_large_angle.png" in report
    assert "{" not in report  # every template field was filled
    assert "Fig. 1b" in report and "Prob. 2" in report  # the paper's claims are checked when their losses ran
    for name in ("scenario_large_angle.png", "scenario_scale.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "scenario_kitti.png").exists()


def test_summary_matches_history():
    result = _run(["scale"], ["log_iou"], steps=8, boxes=3)[0]
    summaries = summarise(result)
    assert [s.group for s in summaries] == ["Pedestrian", "Car", "Truck"]
    truck = result.history[-1, 0, result.problem.group == 2, METRICS.index("iou")].double().mean()
    assert summaries[2].final_iou == pytest.approx(truck.item())

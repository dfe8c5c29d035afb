"""Scenario (d) ``anchor_residual``: OpenPCDet's box coder, one shared head, cars and trucks, Adam."""

import pytest
import torch

from pcdet_gciou.losses import LOSSES
from pcdet_gciou.simulate import LOSS_SPECS, SCENARIOS, run_simulation
from pcdet_gciou.simulate.cli import build_parser
from pcdet_gciou.simulate.objectives import DEFAULT_LOSSES, SMOOTH_L1
from pcdet_gciou.simulate.parametrisation import decode_residual, encode_residual, to_boxes, to_params
from pcdet_gciou.simulate.scenarios import CLASS_SIZES, FEATURE_DIM


def _problem(n=6, seed=0):
    return SCENARIOS["anchor_residual"].make(n, torch.Generator().manual_seed(seed))


@pytest.mark.pcdet
def test_residual_parametrisation_is_openpcdets_residual_coder():
    from pcdet.utils.box_coder_utils import ResidualCoder

    problem = _problem()
    coder = ResidualCoder(code_size=7)
    ours = encode_residual(problem.gt, problem.anchors)
    theirs = coder.encode_torch(problem.gt.clone(), problem.anchors.clone())
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decode_residual(ours, problem.anchors), coder.decode_torch(theirs, problem.anchors))


def test_cars_and_trucks_with_class_anchors_start_at_the_anchors():
    problem = _problem(n=5)
    assert problem.group_names == ("Car", "Truck")
    assert problem.features.shape == (10, FEATURE_DIM)
    for g, name in enumerate(problem.group_names):
        sizes = problem.anchors[problem.group == g, 3:6]
        torch.testing.assert_close(sizes, torch.tensor(CLASS_SIZES[name], dtype=sizes.dtype).expand_as(sizes))
    torch.testing.assert_close(problem.init_boxes, problem.anchors)
    # the shared head starts at zero weights, i.e. every prediction is its anchor
    weights = to_params(problem.init_boxes, problem.anchors, "shared_head", problem.features)
    torch.testing.assert_close(weights, torch.zeros(FEATURE_DIM, 7, dtype=weights.dtype), atol=1e-12, rtol=0)
    # the GT residuals are mostly explained by the features: a least-squares head gets close to every box
    best = to_params(problem.gt, problem.anchors, "shared_head", problem.features)
    fitted = encode_residual(to_boxes(best, problem.anchors, "shared_head", problem.features), problem.anchors)
    target = encode_residual(problem.gt, problem.anchors)
    assert (fitted - target).pow(2).mean() < 0.1 * target.pow(2).mean()


def test_shared_head_couples_the_boxes_and_residual_does_not():
    base = _run_d("shared_head", seed=0)
    torch.manual_seed(0)
    other = _run_d("shared_head", seed=0, perturb_truck=True)
    cars = slice(0, 3)
    assert not torch.allclose(base.history[1:, :, cars], other.history[1:, :, cars])
    base_r = _run_d("residual", seed=0)
    other_r = _run_d("residual", seed=0, perturb_truck=True)
    torch.testing.assert_close(base_r.history[:, :, cars], other_r.history[:, :, cars])


def _run_d(param, seed, perturb_truck=False):
    scenario = SCENARIOS["anchor_residual"]
    if perturb_truck:

        def make(n, gen, original=scenario.make):
            problem = original(n, gen)
            problem.gt[-1, 3] *= 1.3  # one truck longer
            return problem

        scenario = type(scenario)(**{**scenario.__dict__, "make": make})
    return run_simulation([scenario], ["log_iou"], steps=3, boxes_per_group=3, seed=seed, param=param)[0]


def test_the_default_run_includes_it_with_the_required_losses():
    args = build_parser().parse_args([])
    assert "anchor_residual" in args.scenarios
    for name in ("smooth_l1", "log_iou", "gciou_fg", "gciou_fg_gr", "gciou_fg_gr_norm", "gciou_fg_exp_gr_norm"):
        assert name in DEFAULT_LOSSES
    assert LOSS_SPECS["gciou_fg_gr"].kwargs == {"grad_rescale": True, "rescale_normalize": False}
    assert LOSS_SPECS["gciou_fg_gr_norm"].kwargs == {"grad_rescale": True, "rescale_normalize": True}


def test_loss_names_come_from_the_registry():
    builds = {spec.build_name for spec in LOSS_SPECS.values()}
    assert builds == set(LOSSES) | {SMOOTH_L1}
    assert set(LOSSES) - {"gciou"} <= set(LOSS_SPECS)


def test_batch_normalised_rescaling_sees_one_scenario_at_a_time():
    alone = run_simulation([SCENARIOS["anchor_residual"]], ["gciou_fg_gr_norm"], steps=4, boxes_per_group=3, seed=1)
    together = run_simulation(
        [SCENARIOS["scale"], SCENARIOS["anchor_residual"]], ["gciou_fg_gr_norm"], steps=4, boxes_per_group=3, seed=1
    )
    torch.testing.assert_close(alone[0].history, together[1].history)


def test_shared_head_needs_features():
    with pytest.raises(ValueError, match="features"):
        run_simulation([SCENARIOS["kitti"]], ["iou"], steps=1, boxes_per_group=2, seed=0, param="shared_head")

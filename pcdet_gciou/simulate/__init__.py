"""Box-regression simulation: how each loss moves a population of predicted boxes towards their GT.

Run ``python -m pcdet_gciou.simulate --help``. Library entry points: :func:`run_simulation`, :func:`summarise`.
"""

from pcdet_gciou.simulate.objectives import LOSS_SPECS, build_objective, smooth_l1_residual_loss
from pcdet_gciou.simulate.report import summarise
from pcdet_gciou.simulate.runner import METRICS, ScenarioResult, run_simulation
from pcdet_gciou.simulate.scenarios import SCENARIOS, resolve_scenario

__all__ = [
    "LOSS_SPECS",
    "METRICS",
    "SCENARIOS",
    "ScenarioResult",
    "build_objective",
    "resolve_scenario",
    "run_simulation",
    "smooth_l1_residual_loss",
    "summarise",
]

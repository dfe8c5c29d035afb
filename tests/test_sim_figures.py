"""Figure rules: committed PNGs at >= 150 dpi, at most 8 lines per panel, losses told apart by colour and style."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet_gciou.analysis.figures import (
    FIGURE_DPI,
    MAX_LINES_PER_AXES,
    check_line_count,
    chunks,
    line_styles,
    save_figure,
)
from pcdet_gciou.simulate import SCENARIOS, run_simulation
from pcdet_gciou.simulate.objectives import DEFAULT_LOSSES, LOSS_SPECS
from pcdet_gciou.simulate.report import loss_panels, scenario_figure

FIGURES = Path(__file__).resolve().parents[1] / "scripts" / "figures"


def png_dpi(path: Path):
    """``(x_dpi, y_dpi)`` from the PNG's pHYs chunk (None when the chunk is missing)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"pHYs":
            x, y, unit = struct.unpack(">IIB", data[pos + 8 : pos + 17])
            assert unit == 1, "pHYs unit must be the metre"
            return x * 0.0254, y * 0.0254
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


def test_committed_figures_are_at_least_150_dpi():
    paths = sorted(FIGURES.glob("*.png"))
    assert paths, f"no figures under {FIGURES}"
    for path in paths:
        dpi = png_dpi(path)
        assert dpi is not None and min(dpi) >= 149.5, (path.name, dpi)


def test_saved_figures_carry_the_dpi(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    path = save_figure(fig, tmp_path / "f.png")
    assert png_dpi(path) == pytest.approx((FIGURE_DPI, FIGURE_DPI), abs=0.5)


def test_a_panel_with_too_many_lines_is_refused(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for k in range(MAX_LINES_PER_AXES + 1):
        ax.plot([0, 1], [k, k], label=f"loss {k}")
    with pytest.raises(ValueError, match="lines"):
        check_line_count(ax)
    with pytest.raises(ValueError, match="split"):
        save_figure(fig, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_every_loss_differs_in_colour_and_style_pair_and_families_in_style():
    builds = [LOSS_SPECS[name].build_name for name in DEFAULT_LOSSES]
    styles = line_styles(builds)
    assert len(set(styles)) == len(styles)
    by_family = {}
    for build, (_, style) in zip(builds, styles):
        family = "gciou" if build == "gciou" else ("smooth_l1" if build == "smooth_l1" else "baseline")
        by_family.setdefault(family, set()).add(style)
    assert all(len(s) == 1 for s in by_family.values())
    assert len({next(iter(s)) for s in by_family.values()}) == len(by_family)


def test_scenario_figure_splits_the_losses_over_panels():
    panels = loss_panels(DEFAULT_LOSSES)
    assert all(len(p) <= MAX_LINES_PER_AXES for p in panels)
    assert set().union(*panels) == set(DEFAULT_LOSSES)
    result = run_simulation([SCENARIOS["scale"]], list(DEFAULT_LOSSES), steps=2, boxes_per_group=2, seed=0)[0]
    fig = scenario_figure(result)
    try:
        for ax in fig.get_axes():
            check_line_count(ax)
            assert ax.get_ylabel() and ax.get_xlabel()
        assert len(fig.get_axes()) == 3 * len(panels) * 4  # groups x loss panels x metrics
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_chunks():
    assert chunks(range(17), 8) == [list(range(8)), list(range(8, 16)), [16]]
    assert chunks([], 8) == [[]]
    with pytest.raises(ValueError):
        chunks([1], 0)


def test_compare_curves_splits_many_runs(tmp_path):
    from pcdet_gciou.analysis.curves import RunCurves, Series, plot_runs

    runs = []
    for j in range(MAX_LINES_PER_AXES + 2):
        steps = np.arange(1, 6)
        series = Series(steps, 1.0 / steps + j, np.ones(5))
        runs.append(RunCurves(tmp_path / f"r{j}", f"run{j}", scalars={"train/rpn_loss_loc": series}))
    assert plot_runs(runs, tmp_path) == ["losses.png"]
    assert torch.isfinite(torch.tensor(png_dpi(tmp_path / "losses.png"))).all()

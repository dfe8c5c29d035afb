"""The simulation report's verdicts: explicit margins, honest wording, no "after never steps"."""

import pytest

from pcdet_gciou.simulate.cli import main
from pcdet_gciou.simulate.report import (
    IOU_MARGIN,
    KINK_MARGIN,
    OSCILLATION_DEG,
    OSCILLATION_MARGIN,
    STEP_MARGIN,
    _reach,
    _verdict,
    compare_oscillation,
    compare_steps,
    kink_claim,
)


def test_margins_are_explicit_and_sane():
    assert 0 < STEP_MARGIN < 1 and 0 < OSCILLATION_MARGIN < 1 and 0 < KINK_MARGIN < 1
    assert 0 < IOU_MARGIN < 0.05


def test_step_comparison_needs_the_margin():
    steps = 300
    assert compare_steps(100, int(100 * (1 - STEP_MARGIN)), steps) == "faster"
    assert compare_steps(100, int(100 * (1 - STEP_MARGIN)) + 1, steps) == "same"
    assert compare_steps(80, 100, steps) == "slower"
    assert compare_steps(None, 200, steps) == "faster"  # never within 300 steps ranks as 301
    assert compare_steps(None, None, steps) == "same"


def test_oscillation_comparison_needs_the_margin():
    assert compare_oscillation(20.0, 20.0 * (1 - OSCILLATION_MARGIN)) == "damps"
    assert compare_oscillation(20.0, 19.0) == "same"
    assert compare_oscillation(22.0, 76.0) == "raises"
    # a baseline that does not oscillate cannot be damped
    assert compare_oscillation(0.5 * OSCILLATION_DEG, 0.0) == "same"


def test_verdict_words():
    assert _verdict("faster", "faster") == "**agrees**"
    assert _verdict("same", "faster") == "**no difference beyond the margin**"
    assert _verdict("slower", "faster") == "**contradicts the paper**"
    assert _reach(None, 300) == "never within 300 steps" and _reach(24, 300) == "after 24 steps"


def test_the_kink_at_zero_error_is_reported_as_steeper():
    text = kink_claim()
    assert "±1.42" in text and "±2.42" in text and "contradicts the paper" in text


def test_report_states_contradictions_and_never_says_after_never(tmp_path, capsys):
    out = tmp_path / "sim"
    argv = ["--steps", "30", "--boxes", "4", "--scenarios", "a,b", "--out", str(out), "--no-progress"]
    assert main(argv + ["--losses", "log_iou,gciou_g,gciou_fg,gciou_fg_gr"]) == 0
    capsys.readouterr()
    report = (out / "report.md").read_text()
    assert "after never" not in report
    assert "Margins:" in report
    claims = report.split("## The paper's claims against these numbers")[1]
    verdict_lines = [line for line in claims.splitlines() if line.startswith("- ") and "**" in line]
    assert verdict_lines
    for line in verdict_lines:
        assert any(v in line for v in ("agrees", "contradicts the paper", "no difference beyond the margin"))
    assert "depends on the learning rate" in report


@pytest.mark.parametrize("bad", ["0", "-0.1", "nan"])
def test_lr_option_is_validated(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--lr", bad, "--out", str(tmp_path)])

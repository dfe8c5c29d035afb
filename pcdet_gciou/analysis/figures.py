"""Shared figure rules: resolution, at most 8 lines per panel, and a colour plus a line style for every loss.

Every figure of the package (simulation, gradient curves, training-run comparison) is written through
:func:`save_figure` and draws its curves through :func:`check_line_count`, so the rules hold in one place:

- saved at :data:`FIGURE_DPI` (150) dots per inch;
- at most :data:`MAX_LINES_PER_AXES` (8) data lines per panel: callers split their curves into several panels;
- a loss is told apart by colour *and* line style: the line style names its family (Smooth-L1, the IoU-type
  baselines of the registry, GCIoU's variants), the colour is its place in the list of compared losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

FIGURE_DPI = 150
MAX_LINES_PER_AXES = 8

# Line style per loss family. The family of a loss is the registry name it is built from (see
# pcdet_gciou.losses.LOSSES): GCIoU's variants are one family; every other registry loss is a baseline.
FAMILY_STYLES = {"smooth_l1": ":", "baseline": "--", "gciou": "-"}
# tab10 without grey (reserved for reference marks): nine colours that stay apart in print and on screen.
PALETTE: Tuple[str, ...] = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)


def loss_family(build_name: str) -> str:
    """``"gciou"``, ``"smooth_l1"`` or ``"baseline"`` for a loss built from registry name ``build_name``."""
    if build_name in ("gciou", "smooth_l1"):
        return build_name
    return "baseline"


def line_styles(build_names: Sequence[str]) -> List[Tuple[str, str]]:
    """``[(colour, linestyle)]`` for losses built from ``build_names``, in order.

    The style comes from the family; the colour is the loss's index within its family, so no two losses of a
    family share a colour (up to 9 per family) and no two families share a style.

    Example:
        >>> line_styles(["smooth_l1", "log_iou", "gciou", "gciou"])
        [('tab:blue', ':'), ('tab:blue', '--'), ('tab:blue', '-'), ('tab:orange', '-')]
    """
    seen = {}
    out = []
    for name in build_names:
        family = loss_family(name)
        index = seen.get(family, 0)
        seen[family] = index + 1
        out.append((PALETTE[index % len(PALETTE)], FAMILY_STYLES[family]))
    return out


def chunks(items: Sequence, size: int = MAX_LINES_PER_AXES) -> List[list]:
    """``items`` split into consecutive lists of at most ``size`` (at least one list, possibly empty)."""
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def check_line_count(ax) -> None:
    """Raise ValueError if the matplotlib axes ``ax`` carries more than :data:`MAX_LINES_PER_AXES` data lines.

    Reference lines (axhline/axvline, labelled ``_nolegend_`` or starting with ``_``) are not counted.
    """
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    if len(lines) > MAX_LINES_PER_AXES:
        raise ValueError(
            f"panel {ax.get_title()!r} has {len(lines)} lines; at most {MAX_LINES_PER_AXES} are readable, "
            "split the curves over more panels"
        )


def plain_log_ticks(ax) -> None:
    """Tick labels of a log-scaled y axis as plain numbers (``0.5``, ``2``) instead of ``2 x 10^0``; minor ticks
    at 2x and 5x each power of ten, labelled only when the axis spans less than three decades (else they crowd)."""
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, LogLocator

    def minor_label(value, _pos):
        low, high = ax.get_ylim()
        return f"{value:g}" if low > 0 and high / low < 1000 else ""

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))


def save_figure(fig, path: Path) -> Path:
    """Check every panel of ``fig`` (see :func:`check_line_count`), save it at :data:`FIGURE_DPI`, close it.

    A ``.png`` is stored with a 256-colour palette: a line plot has far fewer distinct colours than that, so the
    picture is unchanged to the eye and the file is about a third of the size.
    """
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    try:
        for ax in fig.get_axes():
            check_line_count(ax)
        if Path(path).suffix.lower() != ".png":
            fig.savefig(path, dpi=FIGURE_DPI)
            return Path(path)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
        buffer.seek(0)
        with Image.open(buffer) as image:
            palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
            palette.save(path, format="PNG", dpi=(FIGURE_DPI, FIGURE_DPI))
    finally:
        plt.close(fig)
    return Path(path)

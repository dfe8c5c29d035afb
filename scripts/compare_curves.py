"""Overlay the convergence curves of training runs and tabulate their AP convergence.

Usage: python scripts/compare_curves.py RUN_DIR [RUN_DIR ...] --out DIR [--labels A B ...]
(logic: pcdet_gciou.analysis.curves). RUN_DIR is output/<cfg_tag>/<extra_tag> as written by tools/train.py.
"""

import argparse
import sys
from pathlib import Path

from pcdet_gciou.analysis.curves import compare_runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories output/<cfg_tag>/<extra_tag>")
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures and summary.md/.csv")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per run (default: from the path)")
    parser.add_argument("--smooth", type=float, default=0.9, help="EMA weight for training curves, [0, 1)")
    parser.add_argument("--metric", default="3d", choices=("3d", "bev", "bbox", "aos"), help="AP metric (default 3d)")
    parser.add_argument("--difficulty", default="moderate", choices=("easy", "moderate", "hard"))
    args = parser.parse_args(argv)
    try:
        runs, _, text = compare_runs(
            args.run_dirs,
            args.out,
            labels=args.labels,
            smoothing=args.smooth,
            metric=args.metric,
            difficulty=args.difficulty,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(text)
    for run in runs:
        if not run.has_data:
            print(
                f"warning: run {run.label} ({run.run_dir}) has no metrics.csv, TensorBoard scalars or "
                f"eval_results.csv yet",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

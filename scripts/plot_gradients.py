"""Plot dL/dDelta against heading error (paper Fig. 1a) and dL/d(size) against object scale (Sec. 3.2.2).

Usage: python scripts/plot_gradients.py [--out DIR]   (logic: pcdet_gciou.analysis.gradients)
"""

import argparse
from pathlib import Path

from pcdet_gciou.analysis.gradients import write_gradient_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("output/gradients"), help="output folder (default %(default)s)"
    )
    args = parser.parse_args()
    for path in write_gradient_figures(args.out):
        print(path)


if __name__ == "__main__":
    main()

"""Train and evaluate every row of one of the GCIoU paper's tables; see `python tools/ablate.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_gciou.openpcdet.ablation import ablate_main  # noqa: E402

if __name__ == "__main__":
    ablate_main()

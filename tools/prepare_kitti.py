"""Check a KITTI folder and build OpenPCDet's info pkls and GT database; see data/README.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_gciou.training.cli import prepare_kitti_main  # noqa: E402

if __name__ == "__main__":
    prepare_kitti_main()

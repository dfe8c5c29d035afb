"""Check a KITTI folder and build OpenPCDet's info pkls and GT database; see `python tools/prepare_kitti.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_gciou.openpcdet.app import prepare_kitti_main, run_tool  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_tool(prepare_kitti_main))

"""Evaluate checkpoints (KITTI: AP at R11 and R40); see `python tools/test.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_gciou.openpcdet.app import run_tool, test_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_tool(test_main))

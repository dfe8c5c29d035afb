"""`import pcdet_gciou` (and its pure-torch layers) must not import pcdet or torchvision."""
import subprocess
import sys

import pytest

MODULES = [
    "pcdet_gciou",
    "pcdet_gciou.geometry",
    "pcdet_gciou.losses",
    "pcdet_gciou.openpcdet",
]


@pytest.mark.parametrize("module", MODULES)
def test_import_does_not_pull_pcdet_or_torchvision(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pcdet', 'torchvision'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing {module} imported {result.stdout.strip()}"


def test_geometry_imports_nothing_but_torch():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import torch\n"
        "after_torch = set(sys.modules)\n"
        "import pcdet_gciou.geometry\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - after_torch}\n"
        "print(','.join(sorted(new - {'pcdet_gciou'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"pcdet_gciou.geometry imported {result.stdout.strip()}"

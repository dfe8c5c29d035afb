"""Every module that must work without OpenPCDet imports neither pcdet, torchvision nor spconv."""

import subprocess
import sys

import pytest

MODULES = [
    "pcdet_gciou",
    "pcdet_gciou.geometry",
    "pcdet_gciou.losses",
    "pcdet_gciou.config",
    "pcdet_gciou.openpcdet",
    "pcdet_gciou.openpcdet.loss_config",
    "pcdet_gciou.openpcdet.anchor_ops",
    "pcdet_gciou.openpcdet.runtime",
    "pcdet_gciou.openpcdet.kitti_eval",
    "pcdet_gciou.openpcdet.prepare",
    "pcdet_gciou.training",
    "pcdet_gciou.openpcdet.app",
    "pcdet_gciou.openpcdet.app.train",
    "pcdet_gciou.openpcdet.app.evaluate",
    "pcdet_gciou.openpcdet.app.prepare",
    "pcdet_gciou.openpcdet.ablation",
    "pcdet_gciou.openpcdet.evaluation",
    "pcdet_gciou.openpcdet.get",
    "pcdet_gciou.openpcdet.ct_bev_backbone",
    "pcdet_gciou.nn",
    "pcdet_gciou.simulate",
    "pcdet_gciou.analysis",
]


@pytest.mark.parametrize("module", MODULES)
def test_import_does_not_pull_pcdet_torchvision_or_spconv(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pcdet', 'torchvision', 'spconv'))\n"
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

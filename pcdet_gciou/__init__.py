"""pcdet-gciou: GCIoU (Ming et al., CVPR 2023) for OpenPCDet.

Layers, imported one way: :mod:`pcdet_gciou.geometry` (torch only) -> :mod:`pcdet_gciou.losses` ->
:mod:`pcdet_gciou.openpcdet` (the only importer of ``pcdet``, lazily). Importing this package imports none
of them eagerly and never imports ``pcdet``.
"""

__version__ = "0.1.0"

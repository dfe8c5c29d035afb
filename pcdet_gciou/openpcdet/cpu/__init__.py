"""Portable op layer: lets an *unbuilt* OpenPCDet source tree import and run, on CPU or on CUDA.

OpenPCDet's seven compiled extensions are never built by this project. This layer supplies what an unbuilt tree
lacks, in this process only (OpenPCDet's files are never modified; :func:`uninstall` undoes the global patches):

- on **CPU** (tests, CI, debugging; a KITTI epoch takes hours), every op that has a portable version uses it and
  ``.cuda()`` becomes a no-op;
- on **CUDA**, compiled extensions that *are* built are used as they are, and the portable versions stand in for the
  ones that are not. The portable ops create every tensor on their inputs' device, so they run on the GPU.

Call :func:`install` **before** importing ``pcdet``::

    from pcdet_gciou.openpcdet import cpu
    report = cpu.install()          # device=None: "cuda" when CUDA is available, else "cpu"
    print(report)                   # which ops are portable here
    import pcdet.models             # now importable without the compiled extensions

``python -m pcdet_gciou.openpcdet.cpu [--device cpu|cuda]`` prints that report without importing pcdet.

What :func:`install` does:

- supplies ``pcdet.version`` (normally written by OpenPCDet's ``setup.py``) when the tree has none, with the version
  ``setup.py`` would write (:mod:`.version_module`);
- serves placeholder modules for the compiled extensions (``iou3d_nms_cuda``, ``roiaware_pool3d_cuda``,
  ``roipoint_pool3d_cuda``, ``pointnet2_stack_cuda``, ``pointnet2_batch_cuda``, ``bev_pool_ext``,
  ``ingroup_inds_cuda``) that are not built; calling any of their ops raises NotImplementedError naming the op;
- swaps portable versions written with :mod:`pcdet_gciou.geometry` into ``pcdet.ops.iou3d_nms.iou3d_nms_utils``
  (``nms_gpu``, ``nms_normal_gpu``, ``boxes_iou_bev``, ``boxes_iou3d_gpu``, ``boxes_aligned_iou3d_gpu``,
  ``paired_boxes_iou3d_gpu``, ``boxes_bev_iou_cpu``) and ``pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils``
  (``points_in_boxes_cpu``, ``points_in_boxes_gpu``), and pure-torch PointNet++ ops (FPS, ball query,
  grouping, three-NN interpolation, :mod:`.pointnet2_stack`) into
  ``pcdet.ops.pointnet2.pointnet2_stack.pointnet2_utils``, as those modules are imported (on CUDA only where the
  backing extension is not built);
- serves :mod:`.kitti_rotate_iou` as the KITTI evaluator's numba.cuda ``rotate_iou`` module (always: the original
  compiles a CUDA kernel at import, which needs numba's CUDA toolchain);
- registers importable-but-unusable placeholders for ``torchvision`` and ``av2`` when importing them fails,
  and for ``pcdet.datasets.argo2.argo2_dataset`` when that module fails to import;
- on CPU only: makes ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return ``self`` (OpenPCDet
  hard-codes ``.cuda()``), and makes spconv's ``get_current_stream`` return 0 so that spconv 2.x sparse
  convolutions can run backward on CPU (traveller59/spconv#366).

:func:`install` is idempotent: repeated calls return the same :class:`InstallReport`. OpenPCDet modules imported
while it was active keep their placeholder extensions after :func:`uninstall`.
"""

from ._install import InstallReport, install, installed_report, is_installed, uninstall

__all__ = ["install", "uninstall", "is_installed", "installed_report", "InstallReport"]

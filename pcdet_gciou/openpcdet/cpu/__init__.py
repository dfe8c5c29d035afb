"""Opt-in CPU compatibility layer that lets an *unbuilt* OpenPCDet source tree import and run on CPU.

For tests, CI and debugging on a laptop — not for training: a SECOND step on CPU takes seconds, a KITTI
epoch hours. OpenPCDet's files are never modified; everything happens in this process and
:func:`uninstall` undoes the global patches.

Call :func:`install` **before** importing ``pcdet``::

    from pcdet_gciou.openpcdet import cpu
    cpu.install()
    import pcdet.models  # now importable without the compiled extensions

What :func:`install` does:

- serves placeholder modules for OpenPCDet's seven compiled extensions (``iou3d_nms_cuda``,
  ``roiaware_pool3d_cuda``, ``roipoint_pool3d_cuda``, ``pointnet2_stack_cuda``, ``pointnet2_batch_cuda``,
  ``bev_pool_ext``, ``ingroup_inds_cuda``) when no built one exists; calling any of their ops raises
  NotImplementedError naming the op;
- swaps CPU versions written with :mod:`pcdet_gciou.geometry` into ``pcdet.ops.iou3d_nms.iou3d_nms_utils``
  (``nms_gpu``, ``nms_normal_gpu``, ``boxes_iou_bev``, ``boxes_iou3d_gpu``, ``boxes_aligned_iou3d_gpu``,
  ``paired_boxes_iou3d_gpu``, ``boxes_bev_iou_cpu``) and ``pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils``
  (``points_in_boxes_cpu``, ``points_in_boxes_gpu``), and pure-torch PointNet++ ops (FPS, ball query,
  grouping, three-NN interpolation, :mod:`.pointnet2_stack`) into
  ``pcdet.ops.pointnet2.pointnet2_stack.pointnet2_utils``, as those modules are imported;
- serves :mod:`.kitti_rotate_iou` as the KITTI evaluator's numba.cuda ``rotate_iou`` module;
- registers importable-but-unusable placeholders for ``torchvision`` and ``av2`` when importing them fails,
  and for ``pcdet.datasets.argo2.argo2_dataset`` when that module fails to import;
- without CUDA only: makes ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return ``self`` (OpenPCDet
  hard-codes ``.cuda()``), and makes spconv's ``get_current_stream`` return 0 so that spconv 2.x sparse
  convolutions can run backward on CPU (traveller59/spconv#366).

:func:`install` is idempotent. OpenPCDet modules imported while it was active keep their placeholder
extensions after :func:`uninstall`.
"""

from ._install import install, is_installed, uninstall

__all__ = ["install", "uninstall", "is_installed"]

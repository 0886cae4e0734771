"""Dynamic soft-label assignment (RTMDet, mmdet ``DynamicSoftLabelAssigner``), batched over images."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastops.ops._dispatch import has_kernel
from fastops.reference.dynamic_soft_label_assign import dynamic_soft_label_assign_reference

__all__ = ['dynamic_soft_label_assign']


def dynamic_soft_label_assign(priors: Tensor, pred_bboxes: Tensor, pred_scores: Tensor, gt_bboxes: Tensor,
                              gt_labels: Tensor, num_gts: Tensor, *, gt_centers: Optional[Tensor] = None,
                              soft_center_radius: float = 3.0, topk: int = 13,
                              iou_weight: float = 3.0) -> Tuple[Tensor, Tensor, Tensor]:
    """Assign gts to priors with dynamic soft labels for a whole batch in one call (non-differentiable).

    Semantics are those of mmdet 3.3.0 ``DynamicSoftLabelAssigner`` with horizontal boxes: a prior
    is *valid* if its centre lies strictly inside some gt box; the cost of (prior, gt) is
    ``soft_cls_cost + iou_weight * -log(IoU + 1e-7) + 10 ** (distance / stride - soft_center_radius)``,
    where distance runs from the prior centre to the gt centre and ``soft_cls_cost`` sums over the
    classes ``BCE-with-logits(score, t) * |t - sigmoid(score)| ** 2`` with the soft label
    ``t = one_hot(label) * IoU``; each gt takes its ``dynamic_k = max(1, trunc(sum of its topk
    largest IoUs))`` cheapest valid priors; a prior taken twice goes to the gt of lowest cost.
    Memory is O(B * P * G); nothing of size [P, G, C] is built.

    The class sum is the sum of the target-0 terms of the prior, accumulated in float64, corrected
    at the gt's label (the stock code sums [P, G, C] in float32): costs agree with stock to float
    rounding, not bit for bit. Ties: equal costs in a gt's top-k go to the lower prior index (the
    stock ``torch.topk`` leaves that order unspecified); equal costs in the conflict argmin go to
    the lower gt index, as ``torch.min``. A NaN cost or IoU is never picked.

    Args:
        priors: [P, 4] float32 prior x, y, stride_x, stride_y (shared by the batch; the distance is
            divided by stride_x, as stock).
        pred_bboxes: [B, P, 4] float32 decoded boxes, xyxy.
        pred_scores: [B, P, C] float32 class logits (as the stock assigner receives them).
        gt_bboxes: [B, G, 4] float32, gts padded to G per image.
        gt_labels: [B, G] int64 labels in [0, C) (padded entries ignored).
        num_gts: [B] int64, number of real gts of each image (0 <= num_gts <= G).
        gt_centers: [B, G, 2] float32 gt centres (RTMDet-Ins: the masks' centres of mass), or None
            for the box centres.
        soft_center_radius, topk, iou_weight: as the stock assigner.

    Returns:
        ``(assigned_gt_inds, max_overlaps, assigned_labels)``, each [B, P]: int64 gt index + 1
        (0 = background), float32 IoU of the match and -1e8 for unmatched priors, int64 label
        (-1 = background). Images with no gt or no valid prior get zeros in ``max_overlaps``,
        exactly as the stock code.

    On a device without a compiled kernel in this build the pure-PyTorch reference
    :mod:`fastops.reference.dynamic_soft_label_assign` runs instead.

    Raises:
        RuntimeError: on wrong shapes, dtypes, devices, ``num_gts`` outside [0, G], or labels
        outside [0, C). ValueError: on non-finite inputs in debug mode (:func:`fastops.set_debug`).
    """
    import fastops

    if fastops.debug_enabled():
        inputs = dict(priors=priors, pred_bboxes=pred_bboxes, pred_scores=pred_scores, gt_bboxes=gt_bboxes,
                      gt_centers=gt_centers)
        for name, tensor in inputs.items():
            if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f'dynamic_soft_label_assign: {name} has non-finite values')
    if not has_kernel(priors.device):
        return dynamic_soft_label_assign_reference(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels, num_gts,
                                                   gt_centers, soft_center_radius, topk, iou_weight)
    return torch.ops.fastops.dynamic_soft_label_assign(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels,
                                                       num_gts, gt_centers, float(soft_center_radius), int(topk),
                                                       float(iou_weight))


@torch.library.register_fake('fastops::dynamic_soft_label_assign')
def _dynamic_soft_label_assign_fake(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels, num_gts, gt_centers,
                                    soft_center_radius, topk, iou_weight):
    shape = (pred_bboxes.size(0), priors.size(0))
    return (pred_bboxes.new_empty(shape, dtype=torch.long), pred_bboxes.new_empty(shape, dtype=torch.float32),
            pred_bboxes.new_empty(shape, dtype=torch.long))

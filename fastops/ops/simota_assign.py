"""SimOTA label assignment (RTMO / YOLOX-Pose with OKS cost, and YOLOX), batched over images."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastops.ops._dispatch import has_kernel
from fastops.reference.simota_assign import simota_assign_reference

__all__ = ['simota_assign']


def simota_assign(priors: Tensor, pred_bboxes: Tensor, pred_scores: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                  num_gts: Tensor, *, pred_keypoints: Optional[Tensor] = None,
                  pred_keypoints_visible: Optional[Tensor] = None, gt_keypoints: Optional[Tensor] = None,
                  gt_keypoints_visible: Optional[Tensor] = None, gt_areas: Optional[Tensor] = None,
                  sigmas: Optional[Tensor] = None, center_radius: float = 2.5, candidate_topk: int = 10,
                  iou_weight: float = 3.0, cls_weight: float = 1.0, oks_weight: float = 0.0,
                  vis_weight: float = 0.0, dynamic_k_indicator: str = 'iou',
                  use_keypoints_for_center: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Assign gts to priors with SimOTA for a whole batch in one call (non-differentiable).

    Semantics are those of mmpose 1.3.2 ``SimOTAAssigner`` (with keypoints) and of mmdet 3.3.0
    ``SimOTAAssigner`` (without keypoints; YOLOX): a prior is *valid* if its centre lies strictly
    inside some gt box or some centre square of half-size ``center_radius * stride``; the cost of
    (prior, gt) is ``INF * (not in that gt's box and centre) + iou_weight * -log(IoU + 1e-7) +
    oks_weight * -log(OKS + 1e-7) + cls_weight * BCE(scores, one_hot(label)).sum() +
    vis_weight * BCE(kpt_vis, gt_vis).sum()`` (summed in the stock float32 order); each gt takes its
    ``dynamic_k = max(1, trunc(sum of its candidate_topk largest IoUs / OKSs))`` cheapest valid
    priors; a prior taken twice goes to the gt of lowest cost. Nothing of size [P, G, C] or
    [P, G, K] is built.

    Ties: equal costs in a gt's top-k go to the lower prior index (the stock ``torch.topk`` leaves
    that order unspecified); equal costs in the conflict argmin go to the lower gt index, as
    ``torch.min``.

    Args:
        priors: [P, 4] float32 prior x, y, stride_x, stride_y (shared by the batch).
        pred_bboxes: [B, P, 4] float32 decoded boxes, xyxy.
        pred_scores: [B, P, C] float32 class probabilities (as the stock assigner receives them).
        gt_bboxes: [B, G, 4] float32, gts padded to G per image.
        gt_labels: [B, G] int64 labels in [0, C) (padded entries ignored).
        num_gts: [B] int64, number of real gts of each image (0 <= num_gts <= G).
        pred_keypoints: [B, P, K, 2] float32, or None for the YOLOX (mmdet) semantics.
        pred_keypoints_visible: [B, P, K] float32 visibility probabilities.
        gt_keypoints: [B, G, K, 2] float32.
        gt_keypoints_visible: [B, G, K] float32 visibility (OKS weights).
        gt_areas: [B, G] float32 areas used by the OKS.
        sigmas: [K] float32 per-keypoint OKS sigmas (use 0.5 everywhere for "no sigmas").
        center_radius, candidate_topk, iou_weight, cls_weight, oks_weight, vis_weight,
        dynamic_k_indicator ('iou' or 'oks'), use_keypoints_for_center: as the stock assigner.

    Returns:
        ``(assigned_gt_inds, max_overlaps, assigned_labels)``, each [B, P]: int64 gt index + 1
        (0 = background), float32 IoU/OKS (the dynamic-k indicator) of the match and -1e5 for
        unmatched priors, int64 label (-1 = background). Images with no gt or no valid prior get
        zeros in ``max_overlaps``, exactly as the stock code.

    On a device without a compiled kernel in this build (e.g. CUDA tensors with a CPU-only
    build) the pure-PyTorch reference :mod:`fastops.reference.simota_assign` runs instead.

    Raises:
        RuntimeError: on wrong shapes, dtypes, devices, ``num_gts`` outside [0, G], or labels
        outside [0, C). ValueError: on non-finite inputs in debug mode (:func:`fastops.set_debug`).
    """
    import fastops

    inputs = dict(priors=priors, pred_bboxes=pred_bboxes, pred_scores=pred_scores,
                  pred_keypoints=pred_keypoints, pred_keypoints_visible=pred_keypoints_visible,
                  gt_bboxes=gt_bboxes, gt_keypoints=gt_keypoints, gt_keypoints_visible=gt_keypoints_visible,
                  gt_areas=gt_areas)
    if fastops.debug_enabled():
        for name, tensor in inputs.items():
            if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f'simota_assign: {name} has non-finite values')
    settings = dict(center_radius=center_radius, candidate_topk=candidate_topk, iou_weight=iou_weight,
                    cls_weight=cls_weight, oks_weight=oks_weight, vis_weight=vis_weight,
                    dynamic_k_indicator=dynamic_k_indicator, use_keypoints_for_center=use_keypoints_for_center)
    if not has_kernel(priors.device):
        return simota_assign_reference(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels, num_gts,
                                       pred_keypoints, pred_keypoints_visible, gt_keypoints, gt_keypoints_visible,
                                       gt_areas, sigmas, **settings)
    return torch.ops.fastops.simota_assign(priors, pred_bboxes, pred_scores, pred_keypoints, pred_keypoints_visible,
                                           gt_bboxes, gt_labels, num_gts, gt_keypoints, gt_keypoints_visible,
                                           gt_areas, sigmas, float(center_radius), int(candidate_topk),
                                           float(iou_weight), float(cls_weight), float(oks_weight),
                                           float(vis_weight), dynamic_k_indicator, bool(use_keypoints_for_center))


@torch.library.register_fake('fastops::simota_assign')
def _simota_assign_fake(priors, pred_bboxes, pred_scores, pred_keypoints, pred_keypoints_visible, gt_bboxes,
                        gt_labels, num_gts, gt_keypoints, gt_keypoints_visible, gt_areas, sigmas, center_radius,
                        candidate_topk, iou_weight, cls_weight, oks_weight, vis_weight, dynamic_k_indicator,
                        use_keypoints_for_center):
    shape = (pred_bboxes.size(0), priors.size(0))
    return (pred_bboxes.new_empty(shape, dtype=torch.long), pred_bboxes.new_empty(shape, dtype=torch.float32),
            pred_bboxes.new_empty(shape, dtype=torch.long))

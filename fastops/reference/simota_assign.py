"""Pure-PyTorch SimOTA assignment with the stock semantics (mmpose 1.3.2 / mmdet 3.3.0).

Batched signature of :func:`fastops.simota_assign`; images are processed one by one with the
stock formulas, materialising the [P, G] matrices (and [P, G, K] for OKS) like the stock code.
Ties in the per-gt top-k are broken towards the lower prior index (a stable sort).

Non-finite values follow the kernels' rule (stock torch.topk / argmin would take NaN first): a NaN
cost or indicator is never picked — not among a gt's top-k candidates (so it does not count toward
dynamic_k), not among its dynamic_k cheapest priors, not as a conflict's winner; ±inf order as
numbers.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

INF = 100000.0
EPS = 1e-7
INF_F = float('inf')


def box_iou(boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """[P, G] IoU: overlap / max(area_p + area_g - overlap, 1e-6)."""
    area_p = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_g = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    top_left = torch.max(boxes[:, None, :2], gt_boxes[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], gt_boxes[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area_p[:, None] + area_g[None, :] - overlap
    return overlap / torch.max(union, union.new_tensor([1e-6]))


def _pose_oks(kpts: Tensor, gt_kpts: Tensor, gt_vis: Tensor, gt_areas: Tensor, sigmas: Tensor) -> Tensor:
    """[P, G] OKS = sum_k w_k exp(-(d_k / sqrt(area) / (2 sigma_k))^2 / 2), w = vis / sum(vis)."""
    dist = torch.norm(kpts[:, None] - gt_kpts[None], dim=-1)
    dist = dist / gt_areas.reshape(1, -1, 1).pow(0.5).clip(min=1e-8)
    dist = dist / (sigmas.reshape(1, 1, -1) * 2)
    weights = gt_vis / gt_vis.sum(dim=-1, keepdim=True).clip(min=1e-8)
    return (torch.exp(-dist.pow(2) / 2) * weights[None]).sum(dim=-1)


def _gt_centers(gt_boxes: Tensor, gt_kpts: Optional[Tensor], gt_vis: Optional[Tensor], use_kpts: bool) -> Tensor:
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
    if use_kpts:
        vis_sum = gt_vis.sum(dim=-1)
        kpt_centers = (gt_kpts * gt_vis[..., None]).sum(dim=-2) / vis_sum[:, None].clip(min=0)
        has_visible = vis_sum > 0
        centers[has_visible] = kpt_centers[has_visible]
    return centers


def _in_box_and_center(priors: Tensor, gt_boxes: Tensor, centers: Tensor, radius: float) -> Tuple[Tensor, Tensor]:
    """([P] valid: in some box or centre region, [P, G] in box and in centre region); strict."""
    x, y = priors[:, 0:1], priors[:, 1:2]
    in_box = ((x - gt_boxes[:, 0] > 0) & (y - gt_boxes[:, 1] > 0) & (gt_boxes[:, 2] - x > 0)
              & (gt_boxes[:, 3] - y > 0))
    rx, ry = radius * priors[:, 2:3], radius * priors[:, 3:4]
    cx, cy = centers[:, 0], centers[:, 1]
    in_center = (x - (cx - rx) > 0) & (y - (cy - ry) > 0) & ((cx + rx) - x > 0) & ((cy + ry) - y > 0)
    return in_box.any(1) | in_center.any(1), in_box & in_center


def _bce_sum(probs: Tensor, targets: Tensor) -> Tensor:
    """[P, G] sum over the last axis of BCE(probs [P, X], targets [G, X])."""
    num_p, num_g = probs.size(0), targets.size(0)
    return F.binary_cross_entropy(probs[:, None].expand(num_p, num_g, -1), targets[None].expand(num_p, num_g, -1),
                                  reduction='none').sum(-1)


def _assign_image(priors, boxes, scores, kpts, kpt_vis, gt_boxes, gt_labels, gt_kpts, gt_vis, gt_areas, sigmas,
                  cfg) -> Tuple[Tensor, Tensor, Tensor]:
    pose = kpts is not None
    centers = _gt_centers(gt_boxes, gt_kpts, gt_vis, cfg['use_keypoints_for_center'])
    valid, inbc = _in_box_and_center(priors, gt_boxes, centers, cfg['center_radius'])
    if gt_boxes.size(0) == 0 or not bool(valid.any()):
        return empty_rows(boxes.size(0), boxes)
    outside = (~inbc[valid]).float() * INF
    ious = box_iou(boxes[valid], gt_boxes)
    iou_cost = -torch.log(ious + EPS)
    cls_cost = _bce_sum(scores[valid].float(), F.one_hot(gt_labels, scores.size(-1)).float())
    need_oks = pose and (cfg['oks_weight'] > 0 or cfg['dynamic_k_indicator'] == 'oks')
    oks = _pose_oks(kpts[valid], gt_kpts, gt_vis, gt_areas, sigmas) if need_oks else None
    if pose:  # mmpose summation order
        cost = outside
        if cfg['iou_weight'] > 0:
            cost = cost + iou_cost * cfg['iou_weight']
        if need_oks:
            cost = cost + -torch.log(oks + EPS) * cfg['oks_weight']
        if cfg['cls_weight'] > 0:
            cost = cost + cls_cost * cfg['cls_weight']
        if cfg['vis_weight'] > 0:
            cost = cost + _bce_sum(kpt_vis[valid], gt_vis.float()) * cfg['vis_weight']
    else:  # mmdet (YOLOX) summation order
        cost = cls_cost * cfg['cls_weight'] + iou_cost * cfg['iou_weight'] + outside
    indicator = oks if cfg['dynamic_k_indicator'] == 'oks' else ious
    return match_rows(valid, gt_labels, cost, indicator, cfg['candidate_topk'], -INF)


def empty_rows(num_priors: int, like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The stock rows of an image with no gt or no valid prior: 0, 0.0, -1."""
    return (torch.zeros(num_priors, dtype=torch.long, device=like.device), like.new_zeros(num_priors),
            torch.full((num_priors, ), -1, dtype=torch.long, device=like.device))


def match_rows(valid: Tensor, gt_labels: Tensor, cost: Tensor, indicator: Tensor, candidate_topk: int,
               unmatched_overlap: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The [P] rows (gt index + 1, overlap, label) of one image from the dynamic-k matching of the
    [V, G] cost and indicator of its valid priors (`valid`: [P] bool)."""
    num_priors = valid.size(0)
    gt_inds, _, labels = empty_rows(num_priors, cost)
    gt_of_valid, overlap_of_valid = dynamic_k_match(cost, indicator, candidate_topk)
    matched = gt_of_valid >= 0
    valid_idx = valid.nonzero()[:, 0][matched]
    gt_inds[valid_idx] = gt_of_valid[matched] + 1
    labels[valid_idx] = gt_labels[gt_of_valid[matched]]
    overlaps = torch.full((num_priors, ), unmatched_overlap, dtype=torch.float32, device=cost.device)
    overlaps[valid_idx] = overlap_of_valid[matched]
    return gt_inds, overlaps, labels


def dynamic_k_match(cost: Tensor, indicator: Tensor, candidate_topk: int) -> Tuple[Tensor, Tensor]:
    """Per valid prior: matched gt (-1 if none) and the indicator of the match."""
    num_valid, num_gt = cost.shape
    # IoU and OKS are >= 0 or NaN: a NaN ranked last as -inf and summed as 0 is a NaN left out
    top = torch.topk(indicator.nan_to_num(nan=-INF_F), min(candidate_topk, num_valid), dim=0).values
    top_sum = top.clamp(min=0).sum(0).clamp(max=num_valid)  # min(trunc(s), n) = trunc(min(s, n))
    dynamic_ks = torch.clamp(top_sum.int(), min=1)
    order = torch.sort(cost, dim=0, stable=True).indices  # ties: lower prior index first; NaN last
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(num_valid, device=cost.device)[:, None].expand(-1, num_gt))
    matching = (rank < dynamic_ks[None]) & ~cost.isnan()
    multiple = matching.sum(1) > 1
    # argmin, first index on ties, NaN never: the stable sort puts NaN after +inf
    cheapest = torch.sort(cost[multiple], dim=1, stable=True).indices[:, 0]
    matching[multiple] = F.one_hot(cheapest, num_gt).bool()
    has_match = matching.any(1)
    gt_of_valid = torch.where(has_match, matching.int().argmax(1), -1)
    overlap = (matching * indicator).sum(1)
    return gt_of_valid, overlap


def simota_assign_reference(priors: Tensor, pred_bboxes: Tensor, pred_scores: Tensor, gt_bboxes: Tensor,
                            gt_labels: Tensor, num_gts: Tensor, pred_keypoints: Optional[Tensor] = None,
                            pred_keypoints_visible: Optional[Tensor] = None, gt_keypoints: Optional[Tensor] = None,
                            gt_keypoints_visible: Optional[Tensor] = None, gt_areas: Optional[Tensor] = None,
                            sigmas: Optional[Tensor] = None, center_radius: float = 2.5, candidate_topk: int = 10,
                            iou_weight: float = 3.0, cls_weight: float = 1.0, oks_weight: float = 0.0,
                            vis_weight: float = 0.0, dynamic_k_indicator: str = 'iou',
                            use_keypoints_for_center: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference of :func:`fastops.simota_assign` (same arguments and outputs)."""
    cfg = dict(center_radius=center_radius, candidate_topk=candidate_topk, iou_weight=iou_weight,
               cls_weight=cls_weight, oks_weight=oks_weight, vis_weight=vis_weight,
               dynamic_k_indicator=dynamic_k_indicator, use_keypoints_for_center=use_keypoints_for_center)
    pose = pred_keypoints is not None
    rows = []
    for b in range(pred_bboxes.size(0)):
        n = int(num_gts[b])
        per_pose = [pred_keypoints[b], pred_keypoints_visible[b]] if pose else [None, None]
        gt_pose = [gt_keypoints[b, :n], gt_keypoints_visible[b, :n], gt_areas[b, :n], sigmas] if pose else [None] * 4
        rows.append(_assign_image(priors, pred_bboxes[b], pred_scores[b], *per_pose, gt_bboxes[b, :n],
                                  gt_labels[b, :n], *gt_pose, cfg))
    num_priors = priors.size(0)
    if not rows:
        empty = pred_bboxes.new_zeros((0, num_priors))
        return empty.long(), empty, empty.long()
    return tuple(torch.stack(column) for column in zip(*rows))

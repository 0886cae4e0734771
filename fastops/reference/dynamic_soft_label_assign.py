"""Pure-PyTorch dynamic soft-label assignment with the stock semantics (mmdet 3.3.0).

Batched signature of :func:`fastops.dynamic_soft_label_assign`; images are processed one by one
with the stock formulas on [V, G] matrices (V: the valid priors of the image). The class cost is
not built as the stock [V, G, C] tensor: its sum over classes is the sum of the target-0 terms
(one per prior, in float64) corrected at the gt's label, as the kernels compute it. Dynamic-k
matching, its tie rule (lower prior index first) and its NaN rule are those of the SimOTA
reference (:func:`fastops.reference.simota_assign.match_rows`).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fastops.reference.simota_assign import box_iou, empty_rows, match_rows

INF = 100000000.0  # stock: max_overlaps of the priors left unmatched
EPS = 1e-7


def soft_label_bce(logits: Tensor, soft_label) -> Tensor:
    """Stock soft-label cost per element: BCE-with-logits(x, t) * |t - sigmoid(x)| ** 2."""
    return F.binary_cross_entropy_with_logits(logits, soft_label, reduction='none') \
        * (soft_label - logits.sigmoid()).abs().pow(2.0)


def _class_cost(scores: Tensor, gt_labels: Tensor, ious: Tensor) -> Tensor:
    """[V, G] sum over classes of soft_label_bce(scores, one_hot(label) * iou)."""
    negative_sum = soft_label_bce(scores, torch.zeros_like(scores)).double().sum(-1)
    at_label = scores[:, gt_labels]
    correction = soft_label_bce(at_label, ious).double() - soft_label_bce(at_label, torch.zeros_like(ious)).double()
    return (negative_sum[:, None] + correction).float()


def _assign_image(priors: Tensor, boxes: Tensor, scores: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                  gt_centers: Tensor, cfg: dict) -> Tuple[Tensor, Tensor, Tensor]:
    x, y = priors[:, 0:1], priors[:, 1:2]
    in_box = ((x - gt_boxes[:, 0] > 0) & (y - gt_boxes[:, 1] > 0) & (gt_boxes[:, 2] - x > 0)
              & (gt_boxes[:, 3] - y > 0))
    valid = in_box.any(1)
    if gt_boxes.size(0) == 0 or not bool(valid.any()):
        return empty_rows(boxes.size(0), boxes)
    valid_priors = priors[valid]
    distance = (valid_priors[:, None, :2] - gt_centers[None]).pow(2).sum(-1).sqrt() / valid_priors[:, 2:3]
    center_cost = torch.pow(10, distance - cfg['soft_center_radius'])
    ious = box_iou(boxes[valid], gt_boxes)
    iou_cost = -torch.log(ious + EPS) * cfg['iou_weight']
    cost = _class_cost(scores[valid], gt_labels, ious) + iou_cost + center_cost
    return match_rows(valid, gt_labels, cost, ious, cfg['topk'], -INF)


def dynamic_soft_label_assign_reference(priors: Tensor, pred_bboxes: Tensor, pred_scores: Tensor, gt_bboxes: Tensor,
                                        gt_labels: Tensor, num_gts: Tensor, gt_centers: Optional[Tensor] = None,
                                        soft_center_radius: float = 3.0, topk: int = 13,
                                        iou_weight: float = 3.0) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference of :func:`fastops.dynamic_soft_label_assign` (same arguments and outputs)."""
    cfg = dict(soft_center_radius=soft_center_radius, topk=topk, iou_weight=iou_weight)
    if gt_centers is None:
        gt_centers = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2.0
    rows = []
    for b in range(pred_bboxes.size(0)):
        n = int(num_gts[b])
        rows.append(_assign_image(priors, pred_bboxes[b], pred_scores[b].float(), gt_bboxes[b, :n],
                                  gt_labels[b, :n], gt_centers[b, :n], cfg))
    num_priors = priors.size(0)
    if not rows:
        empty = pred_bboxes.new_zeros((0, num_priors))
        return empty.long(), empty, empty.long()
    return tuple(torch.stack(column) for column in zip(*rows))

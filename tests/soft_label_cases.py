"""Seeded random dynamic soft-label (RTMDet) cases: 640-style point priors, padded gts, class logits;
shared by the op tests, the bench and scripts/gpu_check."""
import torch

from simota_cases import _gt_boxes, rtmo_priors

RTMDET_CONFIG = dict(soft_center_radius=3.0, topk=13, iou_weight=3.0)


def random_batch(seed: int, size: int, num_gts, num_classes: int = 80, kind: str = 'normal',
                 strides=(8, 16, 32)):
    """Inputs of one batch for fastops.dynamic_soft_label_assign: an args tuple (priors, pred_bboxes,
    pred_scores, gt_bboxes, gt_labels, num_gts). ``num_gts``: per image; ``kind``: as simota_cases
    ('normal', 'tiny', 'outside', 'nowhere')."""
    gen = torch.Generator().manual_seed(seed)
    priors = rtmo_priors(size, strides)
    batch, num_priors, max_gts = len(num_gts), priors.size(0), max(max(num_gts), 1)
    gt_boxes = torch.zeros(batch, max_gts, 4)
    for b, n in enumerate(num_gts):
        gt_boxes[b, :n] = _gt_boxes(gen, n, size, kind)[0]
    centers = priors[:, :2].expand(batch, num_priors, 2)
    half = (torch.rand(batch, num_priors, 2, generator=gen) * 4 + 0.5) * priors[:, 2:]
    shift = (torch.rand(batch, num_priors, 2, generator=gen) - 0.5) * priors[:, 2:]
    pred_boxes = torch.cat([centers + shift - half, centers + shift + half], -1)
    logits = torch.randn(batch, num_priors, num_classes, generator=gen) * 3 - 2
    labels = torch.randint(0, num_classes, (batch, max_gts), generator=gen)
    return priors, pred_boxes, logits, gt_boxes, labels, torch.tensor(num_gts, dtype=torch.long)

"""``FastYOLOXHead``: mmdet's ``YOLOXHead`` whose training targets for the whole batch come from one
``fastops.simota_assign`` call.

Config change: ``model.bbox_head.type='FastYOLOXHead'`` (and ``custom_imports=['fastops.mm']``).
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import YOLOXHead
from mmdet.registry import MODELS
from mmdet.utils import reduce_mean
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from fastops.mm.assigners import FusedSimOTAAssignerYOLOX, fused_assigner_cfg


def _flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level [B, X, H, W] maps as one [B, P, X] tensor, priors in the order of the prior
    generator (level, then row, then column)."""
    return torch.cat([level.permute(0, 2, 3, 1).flatten(1, 2) for level in maps], dim=1)


def _gt_offsets(batch_gt_instances: Sequence[InstanceData], device) -> Tensor:
    """Each image's first row in the concatenation of the batch's gts."""
    counts = torch.tensor([len(gt) for gt in batch_gt_instances], dtype=torch.long)
    return (torch.cumsum(counts, 0) - counts).to(device)


@MODELS.register_module()
class FastYOLOXHead(YOLOXHead):
    """mmdet 3.3.0 ``YOLOXHead`` with the same constructor, outputs and loss keys, whose training
    targets for the whole batch come from one ``fastops.simota_assign`` call
    (``FusedSimOTAAssigner.assign_batch``) instead of ``_get_targets_single`` per image.

    ``train_cfg.assigner`` may be mmdet's ``SimOTAAssigner`` (built as fastops'
    ``FusedSimOTAAssigner`` with the same arguments) or ``FusedSimOTAAssigner``; any other assigner
    raises. The targets, losses and gradients are the stock ones bit for bit: the assigner gets the
    stock inputs bit for bit (priors moved by half a stride, ``sqrt(sigmoid(cls) * sigmoid(obj))``)
    and picks the stock priors, except that among priors of exactly equal cost fastops takes the
    lower index where the stock ``torch.topk`` leaves the order unspecified. Ignored gts
    (``batch_gt_instances_ignore``) are unused, as by the stock ``SimOTAAssigner``.
    ``YOLOXModeSwitchHook`` (``use_l1``) works unchanged.

    ``configs/yolox`` also sets ``loss_cls`` / ``loss_obj`` to ``SafeCrossEntropyLoss`` with the
    stock ``CrossEntropyLoss(use_sigmoid=True)`` arguments: the same function (up to float32
    rounding) while every logit lies within its clamp (±100), which YOLOX's logits (biases
    initialised at -4.6, targets in [0, 1]) leave only in a diverged run; it stays finite on fp16
    overflow.
    """

    def __init__(self, *args, train_cfg: Optional[dict] = None, **kwargs):
        if train_cfg:
            assigner = fused_assigner_cfg(train_cfg['assigner'], type(self).__name__, 'SimOTAAssigner',
                                          FusedSimOTAAssignerYOLOX)
            train_cfg = ConfigDict(train_cfg, assigner=assigner)
        super().__init__(*args, train_cfg=train_cfg, **kwargs)

    def loss_by_feat(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                     objectnesses: Sequence[Tensor], batch_gt_instances: Sequence[InstanceData],
                     batch_img_metas: Sequence[dict],
                     batch_gt_instances_ignore: Optional[List[InstanceData]] = None) -> dict:
        """Same arguments and loss dict as ``YOLOXHead.loss_by_feat``: loss_cls, loss_bbox,
        loss_obj and, with ``use_l1``, loss_l1."""
        priors = torch.cat(self.prior_generator.grid_priors([score.shape[2:] for score in cls_scores],
                                                            dtype=cls_scores[0].dtype,
                                                            device=cls_scores[0].device, with_stride=True))
        cls_preds = _flatten_levels(cls_scores)
        bbox_raw = _flatten_levels(bbox_preds)
        objectness = _flatten_levels(objectnesses)
        bboxes = self._bbox_decode(priors, bbox_raw)
        targets = self._batch_targets(priors, cls_preds.detach(), bboxes.detach(), objectness.detach(),
                                      batch_gt_instances)

        fg_mask = targets['fg_mask']
        num_pos = int(fg_mask.sum())
        num_total_samples = max(reduce_mean(torch.tensor(num_pos, dtype=torch.float, device=priors.device)), 1.0)
        if num_pos > 0:
            loss_cls = self.loss_cls(cls_preds.view(-1, self.num_classes)[fg_mask], targets['cls'])
            loss_bbox = self.loss_bbox(bboxes.view(-1, 4)[fg_mask], targets['bbox'])
        else:  # zero losses that keep both branches in the graph, as stock (mmdet issue 7298)
            loss_cls, loss_bbox = cls_preds.sum() * 0, bboxes.sum() * 0
        losses = dict(loss_cls=loss_cls / num_total_samples, loss_bbox=loss_bbox / num_total_samples,
                      loss_obj=self.loss_obj(objectness.view(-1, 1), targets['obj']) / num_total_samples)
        if self.use_l1:
            loss_l1 = self.loss_l1(bbox_raw.view(-1, 4)[fg_mask], targets['l1']) if num_pos > 0 else bbox_raw.sum() * 0
            losses['loss_l1'] = loss_l1 / num_total_samples
        return losses

    @torch.no_grad()
    def _batch_targets(self, priors: Tensor, cls_preds: Tensor, bboxes: Tensor, objectness: Tensor,
                       batch_gt_instances: Sequence[InstanceData]) -> dict:
        """The stock per-image targets of the whole batch from one assignment: ``fg_mask`` [B * P],
        ``obj`` [B * P, 1] and, per positive prior (image-major, then prior index, as the stock
        concatenation), ``cls`` (one-hot label times IoU), ``bbox`` (its gt box) and, with
        ``use_l1``, ``l1``."""
        # YOLOX assigns with the prior centres moved by half a stride, and regresses from the unmoved ones.
        offset_priors = torch.cat([priors[:, :2] + priors[:, 2:] * 0.5, priors[:, 2:]], dim=-1)
        result = self.assigner.assign_batch(offset_priors, bboxes, self._assigner_scores(cls_preds, objectness),
                                            batch_gt_instances)
        pos_img, pos_prior = (result['gt_inds'] > 0).nonzero(as_tuple=True)
        gt_offsets = _gt_offsets(batch_gt_instances, priors.device)
        gt_rows = gt_offsets[pos_img] + result['gt_inds'][pos_img, pos_prior] - 1
        bbox_targets = torch.cat([gt.bboxes for gt in batch_gt_instances])[gt_rows]
        pos_ious = result['max_overlaps'][pos_img, pos_prior]
        fg_mask = result['gt_inds'].view(-1) > 0
        targets = dict(fg_mask=fg_mask, obj=fg_mask.to(objectness.dtype).unsqueeze(1), bbox=bbox_targets,
                       cls=F.one_hot(result['labels'][pos_img, pos_prior], self.num_classes) * pos_ious.unsqueeze(-1))
        if self.use_l1:
            targets['l1'] = self._get_l1_target(cls_preds.new_zeros((len(gt_rows), 4)), bbox_targets,
                                                priors[pos_prior])
        return targets

    @staticmethod
    def _assigner_scores(cls_preds: Tensor, objectness: Tensor) -> Tensor:
        """sqrt(sigmoid(cls) * sigmoid(obj)) [B, P, C], one call per image as in the stock loop: torch's
        CPU kernels take an element through the vectorised or the scalar exp depending on its
        position in the call, and the two can differ by an ulp."""
        return torch.stack([(cls.sigmoid() * obj.sigmoid()).sqrt() for cls, obj in zip(cls_preds, objectness)])

"""RTMDet heads whose training targets for the whole batch come from one
``fastops.dynamic_soft_label_assign`` call: ``FastRTMDetHead`` (``RTMDetHead``),
``FastRTMDetSepBNHead`` (``RTMDetSepBNHead``: RTMDet-tiny/s/m/l/x) and ``FastRTMDetInsSepBNHead``
(``RTMDetInsSepBNHead``: RTMDet-Ins, assigned with the masks' centres of mass).

Config change: ``model.bbox_head.type='FastRTMDetSepBNHead'`` (or ``'FastRTMDetInsSepBNHead'``)
and ``custom_imports=dict(imports=['fastops.mm'])``; ``train_cfg.assigner`` may stay mmdet's
``DynamicSoftLabelAssigner`` (built as ``FusedDynamicSoftLabelAssigner`` with the same arguments).
"""
from typing import List, Optional, Sequence

import torch
from mmdet.models.dense_heads import RTMDetHead, RTMDetInsSepBNHead, RTMDetSepBNHead
from mmdet.models.task_modules import AssignResult, PseudoSampler
from mmdet.models.task_modules.prior_generators import anchor_inside_flags
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from fastops.mm.assigners import FusedDynamicSoftLabelAssigner, _horizontal_boxes, fused_assigner_cfg

class BatchedDSLTargets:
    """``get_targets`` of mmdet's RTMDet heads from one batched dynamic soft-label assignment.

    Same arguments and tuple as the stock ``RTMDetHead.get_targets`` (anchors, labels,
    label_weights, bbox_targets, assign_metrics per level, and sampling results), with the stock
    ``PseudoSampler`` semantics: positives are the priors with ``gt_inds > 0``, negatives those
    with ``gt_inds == 0``, both weighted 1 (positives ``train_cfg.pos_weight`` when > 0); priors
    outside ``inside_flags`` (``anchor_inside_flags`` of the valid flags, ``img_shape`` and
    ``train_cfg.allowed_border``) get the stock unmapped targets (label ``num_classes``, weight 0).
    The stock assigner sees only the inside priors: when an image's outside priors are all outside
    its gt boxes (always with RTMDet's ``allowed_border=-1`` and boxes inside the padded image)
    they are never candidates, so assigning all priors at once gives the stock result; an image
    with an outside prior inside a gt box is assigned on its inside priors alone (one more call).

    ``sampling_results_list`` is built (mmdet ``SamplingResult`` per image, as stock) only by
    heads whose loss reads it (``RTMDetInsSepBNHead``'s mask loss); the detection heads return
    ``None`` there, which their ``loss_by_feat`` does not read.
    """

    needs_sampling_results = False

    def _check_train_cfg(self) -> None:
        if not isinstance(self.sampler, PseudoSampler):
            raise ValueError(f'{type(self).__name__}: train_cfg.sampler must be PseudoSampler (the default), '
                             f'got {type(self.sampler).__name__}')

    def get_targets(self, cls_scores: Tensor, bbox_preds: Tensor, anchor_list: List[List[Tensor]],
                    valid_flag_list: List[List[Tensor]], batch_gt_instances: Sequence[InstanceData],
                    batch_img_metas: List[dict], batch_gt_instances_ignore: Optional[list] = None,
                    unmap_outputs: bool = True):
        """The stock ``get_targets`` contract from one ``assign_batch`` call for all images.
        ``batch_gt_instances_ignore`` is unused, as by the stock assigner. ``unmap_outputs=False``
        (never used by the stock losses) runs the stock per-image path."""
        num_imgs = len(batch_img_metas)
        if not (len(anchor_list) == len(valid_flag_list) == len(batch_gt_instances) == num_imgs):
            raise ValueError(f'{type(self).__name__}.get_targets: anchor_list ({len(anchor_list)}), valid_flag_list '
                             f'({len(valid_flag_list)}), batch_gt_instances ({len(batch_gt_instances)}) and '
                             f'batch_img_metas ({num_imgs}) must have one entry per image')
        if not unmap_outputs or not _shared_priors(anchor_list):
            return super().get_targets(cls_scores, bbox_preds, anchor_list, valid_flag_list, batch_gt_instances,
                                       batch_img_metas, batch_gt_instances_ignore, unmap_outputs)
        num_level_anchors = [anchors.size(0) for anchors in anchor_list[0]]
        priors = torch.cat(anchor_list[0])
        inside = torch.stack([
            anchor_inside_flags(priors, torch.cat(flags), meta['img_shape'][:2], self.train_cfg['allowed_border'])
            for flags, meta in zip(valid_flag_list, batch_img_metas)])
        if not bool(inside.any(1).all()):  # stock: an image without any inside prior gives no targets
            return None
        with torch.no_grad():
            result = self._assign(priors, bbox_preds.detach(), cls_scores.detach(), inside, batch_gt_instances)
        targets = self._dense_targets(priors, inside, result, batch_gt_instances)
        split = [t.split(num_level_anchors, 1) for t in targets]
        sampling_results = (self._sampling_results(priors, inside, result, batch_gt_instances)
                            if self.needs_sampling_results else None)
        return tuple(list(levels) for levels in split) + (sampling_results, )

    def _assign(self, priors: Tensor, bboxes: Tensor, scores: Tensor, inside: Tensor,
                batch_gt_instances: Sequence[InstanceData]) -> dict:
        """The batch's assignment over all priors, [B, P] per field; an image whose outside priors
        include a candidate (centre strictly inside a gt box) is re-assigned on its inside priors."""
        result = self.assigner.assign_batch(priors, bboxes, scores, batch_gt_instances)
        if bool(inside.all()):
            return result
        for b in (~inside.all(1)).nonzero()[:, 0].tolist():
            gt = batch_gt_instances[b]
            gt_bboxes = _horizontal_boxes(gt.bboxes, 'gt_instances.bboxes')
            outside = priors[~inside[b], None, :2]
            if not len(gt_bboxes) or not bool(((outside - gt_bboxes[:, :2] > 0) & (gt_bboxes[:, 2:] - outside > 0))
                                              .all(-1).any()):
                continue
            keep = inside[b]
            one = self.assigner.assign_batch(priors[keep], bboxes[b:b + 1, keep], scores[b:b + 1, keep], [gt])
            result['gt_inds'][b] = 0
            result['labels'][b] = -1
            result['max_overlaps'][b] = 0
            for key in ('gt_inds', 'max_overlaps', 'labels'):
                result[key][b, keep] = one[key][0]
        return result

    def _dense_targets(self, priors: Tensor, inside: Tensor, result: dict,
                       batch_gt_instances: Sequence[InstanceData]) -> tuple:
        """[B, P, ...] anchors, labels, label_weights, bbox_targets, assign_metrics as the stock
        ``_get_targets_single`` + ``unmap`` of every image."""
        gt_inds = result['gt_inds']
        pos = gt_inds > 0
        pos_img, pos_prior = pos.nonzero(as_tuple=True)
        counts = torch.tensor([len(gt) for gt in batch_gt_instances], dtype=torch.long)
        offsets = (torch.cumsum(counts, 0) - counts).to(priors.device)
        anchors = torch.where(inside[..., None], priors, priors.new_zeros(()))
        labels = torch.full(gt_inds.shape, self.num_classes, dtype=torch.long, device=priors.device)
        labels[pos] = result['labels'][pos]
        label_weights = inside.float()
        if self.train_cfg['pos_weight'] > 0:
            label_weights[pos] = float(self.train_cfg['pos_weight'])
        bbox_targets = torch.zeros_like(anchors)
        if len(pos_img):
            gt_bboxes = torch.cat([_horizontal_boxes(gt.bboxes, 'gt_instances.bboxes') for gt in batch_gt_instances])
            bbox_targets[pos] = gt_bboxes[offsets[pos_img] + gt_inds[pos] - 1].to(bbox_targets.dtype)
        assign_metrics = torch.zeros(gt_inds.shape, dtype=torch.float, device=priors.device)
        assign_metrics[pos] = result['max_overlaps'][pos]
        return anchors, labels, label_weights, bbox_targets, assign_metrics

    def _sampling_results(self, priors: Tensor, inside: Tensor, result: dict,
                          batch_gt_instances: Sequence[InstanceData]) -> list:
        """The stock per-image ``SamplingResult`` (indices into the image's inside priors)."""
        results = []
        for b, gt in enumerate(batch_gt_instances):
            keep = inside[b]
            assign_result = AssignResult(len(gt), result['gt_inds'][b, keep], result['max_overlaps'][b, keep],
                                         labels=result['labels'][b, keep])
            results.append(self.sampler.sample(assign_result, InstanceData(priors=priors[keep]), gt))
        return results


def _shared_priors(anchor_list: List[List[Tensor]]) -> bool:
    """Every image has the same priors (``get_anchors`` gives one list for all)."""
    first = anchor_list[0]
    return all(levels is first or (len(levels) == len(first) and all(
        a is b or torch.equal(a, b) for a, b in zip(levels, first))) for levels in anchor_list)


class _FastHeadMixin(BatchedDSLTargets):

    def __init__(self, *args, train_cfg: Optional[dict] = None, **kwargs):
        if train_cfg:
            assigner = fused_assigner_cfg(train_cfg['assigner'], type(self).__name__, 'DynamicSoftLabelAssigner',
                                          FusedDynamicSoftLabelAssigner)
            train_cfg = ConfigDict(train_cfg, assigner=assigner)
        super().__init__(*args, train_cfg=train_cfg, **kwargs)
        if train_cfg:
            self._check_train_cfg()


@MODELS.register_module()
class FastRTMDetHead(_FastHeadMixin, RTMDetHead):
    """mmdet 3.3.0 ``RTMDetHead`` (same constructor, outputs, losses) whose training targets for
    the whole batch come from one ``fastops.dynamic_soft_label_assign`` call; see
    :class:`BatchedDSLTargets`. The targets, losses and gradients are the stock ones, except that
    among priors of exactly equal cost fastops takes the lower index (stock ``torch.topk`` leaves
    the order unspecified)."""


@MODELS.register_module()
class FastRTMDetSepBNHead(_FastHeadMixin, RTMDetSepBNHead):
    """mmdet 3.3.0 ``RTMDetSepBNHead`` (RTMDet-tiny/s/m/l/x) with batched targets, as
    :class:`FastRTMDetHead`."""


@MODELS.register_module()
class FastRTMDetInsSepBNHead(_FastHeadMixin, RTMDetInsSepBNHead):
    """mmdet 3.3.0 ``RTMDetInsSepBNHead`` (RTMDet-Ins) with batched targets, as
    :class:`FastRTMDetHead`: its ``loss_by_feat`` converts the gt masks to tensors before
    ``get_targets``, and the assigner measures distances to their centres of mass, as stock. The
    per-image ``SamplingResult`` s of the mask loss are built from the batched assignment."""

    needs_sampling_results = True

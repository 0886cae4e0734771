"""``FusedSimOTAAssigner`` for mmpose (RTMO / YOLOX-Pose) and mmdet (YOLOX) ``TASK_UTILS``.

Both run :func:`fastops.simota_assign`; a config switches by ``type='FusedSimOTAAssigner'``.
Each class registers only when its package (mmpose, mmdet) is importable.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastops.ops.simota_assign import simota_assign

INF = 100000.0


def _check_iou_calculator(iou_calculator: dict) -> None:
    cfg = dict(iou_calculator)
    if cfg.pop('type', None) != 'BBoxOverlaps2D' or cfg.get('dtype') not in (None, 'fp32'):
        raise ValueError(f'FusedSimOTAAssigner computes the fp32 BBoxOverlaps2D IoU itself; got {iou_calculator}')


def _pad(tensors: Sequence[Tensor], length: int, device) -> Tensor:
    """Stack per-image [n_i, ...] tensors into [B, length, ...] float32 with zero padding."""
    out = torch.zeros((len(tensors), length) + tuple(tensors[0].shape[1:]), dtype=torch.float32, device=device)
    for b, t in enumerate(tensors):
        out[b, :t.size(0)] = t.detach()
    return out


def _padded_gts(batch_gt_instances: Sequence, fields: Sequence[str], device) -> Tuple[Tensor, List[Tensor]]:
    """``num_gts`` [B] int64 and each named gt field stacked into [B, G, ...] float32 with zero padding
    (G: the most gts of an image, at least 1)."""
    counts = [len(gt.bboxes) for gt in batch_gt_instances]  # host ints: no device read-back
    num_gts = torch.tensor(counts, dtype=torch.long).to(device, non_blocking=True)
    max_gts = max(counts + [1])
    return num_gts, [_pad([gt.get(field) for gt in batch_gt_instances], max_gts, device) for field in fields]


def _empty_assignment(num_priors: int, like: Tensor) -> tuple:
    """Stock result when there is no gt or no prediction: zeros, zeros, -1."""
    return (like.new_zeros(num_priors, dtype=torch.long), like.new_zeros(num_priors),
            like.new_full((num_priors, ), -1, dtype=torch.long))


class _SimOTASettings:
    """Constructor arguments shared by the mmpose and mmdet drop-ins."""

    def __init__(self, center_radius, candidate_topk, iou_weight, cls_weight, oks_weight=0.0, vis_weight=0.0,
                 dynamic_k_indicator='iou', use_keypoints_for_center=False):
        assert dynamic_k_indicator in ('iou', 'oks'), \
            f"the argument `dynamic_k_indicator` should be either 'iou' or 'oks', but got {dynamic_k_indicator}"
        self.center_radius = center_radius
        self.candidate_topk = candidate_topk
        self.iou_weight = iou_weight
        self.cls_weight = cls_weight
        self.oks_weight = oks_weight
        self.vis_weight = vis_weight
        self.dynamic_k_indicator = dynamic_k_indicator
        self.use_keypoints_for_center = use_keypoints_for_center

    def op_settings(self, pose: bool) -> dict:
        settings = dict(center_radius=self.center_radius, candidate_topk=self.candidate_topk,
                        iou_weight=self.iou_weight, cls_weight=self.cls_weight)
        if pose:
            settings.update(oks_weight=self.oks_weight, vis_weight=self.vis_weight,
                            dynamic_k_indicator=self.dynamic_k_indicator,
                            use_keypoints_for_center=self.use_keypoints_for_center)
        return settings


try:
    from mmpose.registry import TASK_UTILS as MMPOSE_TASK_UTILS
except ImportError:  # mmpose not installed: the mmpose drop-in is not registered
    MMPOSE_TASK_UTILS = None

try:
    from mmdet.registry import TASK_UTILS as MMDET_TASK_UTILS
    from mmdet.models.task_modules.assigners import AssignResult
except ImportError:  # mmdet not installed: the mmdet drop-in is not registered
    MMDET_TASK_UTILS = None


class FusedSimOTAAssigner(_SimOTASettings):
    """mmpose ``SimOTAAssigner`` (1.3.2) on the fused ``fastops.simota_assign`` kernel.

    Same constructor and ``assign()`` result; ``assign_batch()`` assigns a padded batch in one call.
    ``oks_calculator`` is built by mmpose's ``TASK_UTILS`` (e.g. ``PoseOKS`` with ``metainfo``); its
    per-keypoint sigmas are used (a ``PoseOKS`` without sigmas divides by nothing: sigma = 0.5).
    """

    def __init__(self, center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0,
                 cls_weight: float = 1.0, oks_weight: float = 3.0, vis_weight: float = 0.0,
                 dynamic_k_indicator: str = 'iou', use_keypoints_for_center: bool = False,
                 iou_calculator: dict = dict(type='BBoxOverlaps2D'), oks_calculator: dict = dict(type='PoseOKS')):
        super().__init__(center_radius, candidate_topk, iou_weight, cls_weight, oks_weight, vis_weight,
                         dynamic_k_indicator, use_keypoints_for_center)
        _check_iou_calculator(iou_calculator)
        self.oks_calculator = MMPOSE_TASK_UTILS.build(oks_calculator)

    def _sigmas(self, num_keypoints: int, device) -> Tensor:
        sigmas = getattr(self.oks_calculator, 'sigmas', None)
        if sigmas is None:
            return torch.full((num_keypoints, ), 0.5, device=device)
        return torch.as_tensor(sigmas, dtype=torch.float32, device=device)

    def assign(self, pred_instances, gt_instances, **kwargs) -> dict:
        """Same inputs and dict (num_gts, gt_inds, max_overlaps, labels) as the stock ``assign``."""
        num_gt, boxes = gt_instances.bboxes.size(0), pred_instances.bboxes
        if num_gt == 0 or boxes.size(0) == 0:
            gt_inds, max_overlaps, labels = _empty_assignment(boxes.size(0), boxes)
            return dict(num_gts=num_gt, gt_inds=gt_inds, max_overlaps=max_overlaps, labels=labels)
        result = self.assign_batch(pred_instances.priors, boxes[None], pred_instances.scores[None],
                                   pred_instances.keypoints[None], pred_instances.keypoints_visible[None],
                                   [gt_instances])
        return dict(num_gts=num_gt, gt_inds=result['gt_inds'][0], max_overlaps=result['max_overlaps'][0],
                    labels=result['labels'][0])

    @torch.no_grad()
    def assign_batch(self, priors: Tensor, bboxes: Tensor, scores: Tensor, keypoints: Tensor,
                     keypoints_visible: Tensor, batch_gt_instances: List) -> dict:
        """Assign a batch at once.

        Args:
            priors: [P, 4] shared priors; bboxes [B, P, 4]; scores [B, P, C]; keypoints [B, P, K, 2];
                keypoints_visible [B, P, K]: the per-image fields of the stock ``pred_instances``.
            batch_gt_instances: B ``InstanceData`` with bboxes, labels, keypoints, keypoints_visible, areas.

        Returns:
            dict with ``num_gts`` [B] int64 and ``gt_inds``, ``max_overlaps``, ``labels`` of shape [B, P].
        """
        device = bboxes.device
        num_gts, (gt_bboxes, gt_labels, gt_keypoints, gt_keypoints_visible, gt_areas) = _padded_gts(
            batch_gt_instances, ('bboxes', 'labels', 'keypoints', 'keypoints_visible', 'areas'), device)
        gt_inds, max_overlaps, labels = simota_assign(
            priors.detach().float(), bboxes.detach().float(), scores.detach().float(), gt_bboxes, gt_labels.long(),
            num_gts, pred_keypoints=keypoints.detach().float(),
            pred_keypoints_visible=keypoints_visible.detach().float(), gt_keypoints=gt_keypoints,
            gt_keypoints_visible=gt_keypoints_visible, gt_areas=gt_areas,
            sigmas=self._sigmas(keypoints.size(-2), device), **self.op_settings(pose=True))
        return dict(num_gts=num_gts, gt_inds=gt_inds, max_overlaps=max_overlaps, labels=labels)


class FusedSimOTAAssignerYOLOX(_SimOTASettings):
    """mmdet 3.3.0 ``SimOTAAssigner`` (YOLOX) on ``fastops.simota_assign``; registered in mmdet's
    ``TASK_UTILS`` as ``FusedSimOTAAssigner``. ``assign()`` returns mmdet's ``AssignResult``;
    ``assign_batch()`` assigns a padded batch in one call (``FastYOLOXHead``)."""

    def __init__(self, center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0,
                 cls_weight: float = 1.0, iou_calculator: dict = dict(type='BBoxOverlaps2D')):
        super().__init__(center_radius, candidate_topk, iou_weight, cls_weight)
        _check_iou_calculator(iou_calculator)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore: Optional[object] = None, **kwargs):
        """Same inputs and ``AssignResult`` as the stock YOLOX ``assign`` (ignored gts are unused there too)."""
        boxes = pred_instances.bboxes
        num_gt, num_priors = gt_instances.bboxes.size(0), boxes.size(0)
        if num_gt == 0 or num_priors == 0:
            gt_inds, max_overlaps, labels = _empty_assignment(num_priors, boxes)
        else:
            result = self.assign_batch(pred_instances.priors, boxes[None], pred_instances.scores[None], [gt_instances])
            gt_inds, max_overlaps, labels = (result[key][0] for key in ('gt_inds', 'max_overlaps', 'labels'))
        return AssignResult(num_gt, gt_inds, max_overlaps, labels=labels)

    @torch.no_grad()
    def assign_batch(self, priors: Tensor, bboxes: Tensor, scores: Tensor, batch_gt_instances: List) -> dict:
        """Assign a batch at once.

        Args:
            priors: [P, 4] shared priors; bboxes [B, P, 4]; scores [B, P, C]: the per-image fields of
                the stock ``pred_instances``.
            batch_gt_instances: B ``InstanceData`` with bboxes and labels.

        Returns:
            dict with ``num_gts`` [B] int64 and ``gt_inds``, ``max_overlaps``, ``labels`` of shape [B, P]
            (``AssignResult``'s fields of each image).
        """
        num_gts, (gt_bboxes, gt_labels) = _padded_gts(batch_gt_instances, ('bboxes', 'labels'), bboxes.device)
        gt_inds, max_overlaps, labels = simota_assign(priors.detach().float(), bboxes.detach().float(),
                                                      scores.detach().float(), gt_bboxes, gt_labels.long(), num_gts,
                                                      **self.op_settings(pose=False))
        return dict(num_gts=num_gts, gt_inds=gt_inds, max_overlaps=max_overlaps, labels=labels)


if MMPOSE_TASK_UTILS is not None:
    MMPOSE_TASK_UTILS.register_module(name='FusedSimOTAAssigner', module=FusedSimOTAAssigner)
if MMDET_TASK_UTILS is not None:
    MMDET_TASK_UTILS.register_module(name='FusedSimOTAAssigner', module=FusedSimOTAAssignerYOLOX)

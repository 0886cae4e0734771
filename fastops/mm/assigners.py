"""``FusedSimOTAAssigner`` for mmpose (RTMO / YOLOX-Pose) and mmdet (YOLOX) ``TASK_UTILS``, and
``FusedDynamicSoftLabelAssigner`` for mmdet (RTMDet, RTMDet-Ins).

The SimOTA drop-ins run :func:`fastops.simota_assign`, the dynamic soft-label one
:func:`fastops.dynamic_soft_label_assign`; a config switches by ``type='FusedSimOTAAssigner'`` /
``type='FusedDynamicSoftLabelAssigner'``. Each class registers only when its package (mmpose,
mmdet) is importable.
"""
import copy
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastops.ops.simota_assign import simota_assign

INF = 100000.0


def _type_name(kind) -> str:
    """A config's ``type`` as written (a registry name, possibly scoped) or the class's name."""
    return kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))


def fused_assigner_cfg(assigner: dict, head: str, stock: str, fused: type) -> dict:
    """The assigner config with the stock assigner named `stock` (or its fastops drop-in,
    ``Fused<stock>``) swapped for the class `fused`, same constructor arguments; any other
    assigner cannot assign a batch in one call."""
    cfg = copy.deepcopy(assigner)
    kind = _type_name(cfg.get('type'))
    if kind.split('.')[-1] not in (stock, f'Fused{stock}'):
        raise ValueError(f'{head}: assigner must be {stock} or Fused{stock}, got {kind}')
    cfg['type'] = fused
    return cfg


def _check_iou_calculator(iou_calculator: dict, assigner: str) -> None:
    """The default fp32 scale-1 ``BboxOverlaps2D`` (mmdet's spelling) / ``BBoxOverlaps2D`` (mmpose's)
    is the only IoU the kernels compute."""
    cfg = dict(iou_calculator)
    kind = _type_name(cfg.pop('type', None))
    if (kind.split('.')[-1] not in ('BboxOverlaps2D', 'BBoxOverlaps2D') or cfg.get('dtype') not in (None, 'fp32')
            or float(cfg.get('scale', 1.0)) != 1.0 or set(cfg) - {'dtype', 'scale'}):
        raise ValueError(f'{assigner} computes the fp32 BboxOverlaps2D IoU (scale 1.0) itself; '
                         f'got iou_calculator={iou_calculator}')


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
        _check_iou_calculator(iou_calculator, 'FusedSimOTAAssigner')
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
        _check_iou_calculator(iou_calculator, 'FusedSimOTAAssigner')

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


# ------------------------------------------------------------------ dynamic soft-label assignment
DSL_EPS = 1e-7  # stock: eps of the masks' centres of mass


def _horizontal_boxes(boxes, name: str) -> Tensor:
    """[n, 4] xyxy tensor of ``boxes`` (a tensor or mmdet's ``HorizontalBoxes``); rotated boxes raise."""
    if not isinstance(boxes, Tensor):
        if type(boxes).__name__ != 'HorizontalBoxes' or not isinstance(getattr(boxes, 'tensor', None), Tensor):
            raise NotImplementedError(f'FusedDynamicSoftLabelAssigner: {name} of type {type(boxes).__name__} '
                                      '(rotated or other box types, e.g. RTMDet-R) are not supported; '
                                      'horizontal xyxy boxes only (a tensor or HorizontalBoxes)')
        boxes = boxes.tensor
    if boxes.dim() < 1 or boxes.size(-1) != 4:
        raise NotImplementedError(f'FusedDynamicSoftLabelAssigner: {name} with {boxes.size(-1)} values per box '
                                  f'(shape {tuple(boxes.shape)}); rotated boxes (RTMDet-R) are not supported, '
                                  'horizontal xyxy boxes only')
    return boxes


def gt_centers_of(gt_instances, device) -> Tensor:
    """The centres the stock assigner measures distances to: the masks' centres of mass (mmdet's
    ``center_of_mass``, eps 1e-7) when the gts have ``masks`` (a tensor or mmdet masks, e.g.
    ``BitmapMasks``), else the box centres."""
    bboxes = _horizontal_boxes(gt_instances.bboxes, 'gt_instances.bboxes')
    if 'masks' not in gt_instances:
        return (bboxes[:, :2] + bboxes[:, 2:]) / 2.0
    from mmdet.models.task_modules.assigners.dynamic_soft_label_assigner import center_of_mass
    masks = gt_instances.masks
    if not isinstance(masks, Tensor):
        masks = masks.to_tensor(dtype=torch.bool, device=device)
    if masks.dim() != 3 or masks.size(0) != bboxes.size(0):
        raise ValueError(f'FusedDynamicSoftLabelAssigner: gt_instances.masks of shape {tuple(masks.shape)} for '
                         f'{bboxes.size(0)} gt boxes; expected [{bboxes.size(0)}, H, W]')
    return center_of_mass(masks.to(device), eps=DSL_EPS)


class FusedDynamicSoftLabelAssigner:
    """mmdet 3.3.0 ``DynamicSoftLabelAssigner`` (RTMDet, RTMDet-Ins) on the fused
    ``fastops.dynamic_soft_label_assign`` op; registered in mmdet's ``TASK_UTILS``.

    Same constructor and ``assign(pred_instances, gt_instances, gt_instances_ignore)`` returning
    mmdet's ``AssignResult`` (num_gts, gt_inds, max_overlaps, labels); ``assign_batch()`` assigns a
    padded batch in one call (``FastRTMDetHead``). Nothing of the stock ``[V, G, C]`` size is built.

    Inputs as stock: ``pred_instances`` with ``priors`` [P, 4] (x, y, stride_x, stride_y),
    ``bboxes`` [P, 4] decoded xyxy and ``scores`` [P, C] logits; ``gt_instances`` with ``bboxes``
    (a tensor or ``HorizontalBoxes``), ``labels`` and optionally ``masks`` (a tensor or
    ``BitmapMasks``; RTMDet-Ins), whose centres of mass replace the box centres as in stock.
    ``gt_instances_ignore`` is unused, as by stock. Rotated boxes (RTMDet-R) raise
    ``NotImplementedError``; an ``iou_calculator`` other than the fp32 ``BboxOverlaps2D`` raises
    ``ValueError``.

    Differences from stock, all at exact equalities: (1) among priors of exactly equal cost a gt
    takes the lower prior index (stock ``torch.topk`` leaves the order unspecified); (2) the class
    cost is summed in float64 (stock: float32 over [V, G, C]), so costs equal to float32
    rounding, not bit for bit; (3) with ``HorizontalBoxes`` gts the stock assigner counts a prior
    centre lying exactly on a box edge as inside (``find_inside_points`` is inclusive) while its
    tensor path, RTMDet's heads (which get tensors from ``DetDataPreprocessor``) and fastops count
    strictly inside. A NaN cost or IoU is never picked.
    """

    def __init__(self, soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0,
                 iou_calculator: dict = dict(type='BboxOverlaps2D')):
        _check_iou_calculator(iou_calculator, 'FusedDynamicSoftLabelAssigner')
        if int(topk) < 1:
            raise ValueError(f'FusedDynamicSoftLabelAssigner: topk must be >= 1, got {topk}')
        self.soft_center_radius = float(soft_center_radius)
        self.topk = int(topk)
        self.iou_weight = float(iou_weight)

    def op_settings(self) -> dict:
        return dict(soft_center_radius=self.soft_center_radius, topk=self.topk, iou_weight=self.iou_weight)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore: Optional[object] = None, **kwargs):
        """Same inputs and ``AssignResult`` as the stock ``DynamicSoftLabelAssigner.assign``."""
        boxes = _horizontal_boxes(pred_instances.bboxes, 'pred_instances.bboxes')
        num_gt, num_priors = len(_horizontal_boxes(gt_instances.bboxes, 'gt_instances.bboxes')), boxes.size(0)
        if num_gt == 0 or num_priors == 0:
            gt_inds, max_overlaps, labels = _empty_assignment(num_priors, boxes)
        else:
            result = self.assign_batch(pred_instances.priors, boxes[None], pred_instances.scores[None],
                                       [gt_instances])
            gt_inds, max_overlaps, labels = (result[key][0] for key in ('gt_inds', 'max_overlaps', 'labels'))
        return AssignResult(num_gt, gt_inds, max_overlaps, labels=labels)

    @torch.no_grad()
    def assign_batch(self, priors: Tensor, bboxes: Tensor, scores: Tensor, batch_gt_instances: Sequence) -> dict:
        """Assign a batch at once (one op call).

        Args:
            priors: [P, 4] priors shared by the batch (x, y, stride_x, stride_y); bboxes [B, P, 4]
                decoded xyxy; scores [B, P, C] class logits: the per-image fields of the stock
                ``pred_instances``.
            batch_gt_instances: B ``InstanceData`` with bboxes, labels and optionally masks.

        Returns:
            dict with ``num_gts`` [B] int64 and ``gt_inds``, ``max_overlaps``, ``labels`` of shape
            [B, P] (``AssignResult``'s fields of each image).
        """
        from fastops.ops.dynamic_soft_label_assign import dynamic_soft_label_assign

        bboxes = _horizontal_boxes(bboxes, 'bboxes')
        if not isinstance(priors, Tensor) or priors.dim() != 2 or priors.size(1) != 4:
            raise ValueError(f'assign_batch: priors must be [P, 4] (x, y, stride_x, stride_y), got '
                             f'{tuple(getattr(priors, "shape", ()))}')
        num_priors = priors.size(0)
        if bboxes.dim() != 3 or bboxes.size(1) != num_priors:
            raise ValueError(f'assign_batch: bboxes must be [B, P, 4] with P = {num_priors} (priors), got '
                             f'{tuple(bboxes.shape)}')
        if not isinstance(scores, Tensor) or scores.dim() != 3 or scores.shape[:2] != bboxes.shape[:2]:
            raise ValueError(f'assign_batch: scores must be [B, P, C] with B, P = {tuple(bboxes.shape[:2])} '
                             f'(bboxes), got {tuple(getattr(scores, "shape", ()))}')
        if len(batch_gt_instances) != bboxes.size(0):
            raise ValueError(f'assign_batch: batch_gt_instances has {len(batch_gt_instances)} images, bboxes '
                             f'{bboxes.size(0)}')
        device = bboxes.device
        gts = [InstanceDataView(gt) for gt in batch_gt_instances]
        num_gts, (gt_bboxes, gt_labels) = _padded_gts(gts, ('bboxes', 'labels'), device)
        gt_centers = None
        if any('masks' in gt for gt in batch_gt_instances):
            gt_centers = _pad([gt_centers_of(gt, device) if len(view.bboxes) else view.bboxes.new_zeros((0, 2))
                               for gt, view in zip(batch_gt_instances, gts)], gt_bboxes.size(1), device)
        gt_inds, max_overlaps, labels = dynamic_soft_label_assign(  # the op returns the empty result at P = 0
            priors.detach().float(), bboxes.detach().float(), scores.detach().float(), gt_bboxes, gt_labels.long(),
            num_gts, gt_centers=gt_centers, **self.op_settings())
        return dict(num_gts=num_gts, gt_inds=gt_inds, max_overlaps=max_overlaps, labels=labels)


class InstanceDataView:
    """The ``bboxes`` (as an xyxy tensor) and ``labels`` of a gt ``InstanceData`` for ``_padded_gts``."""

    def __init__(self, gt_instances):
        self.bboxes = _horizontal_boxes(gt_instances.bboxes, 'gt_instances.bboxes')
        self.labels = gt_instances.labels
        if len(self.labels) != len(self.bboxes):
            raise ValueError(f'assign_batch: gt_instances has {len(self.bboxes)} bboxes and {len(self.labels)} labels')

    def get(self, name: str) -> Tensor:
        return getattr(self, name)


if MMPOSE_TASK_UTILS is not None:
    MMPOSE_TASK_UTILS.register_module(name='FusedSimOTAAssigner', module=FusedSimOTAAssigner)
if MMDET_TASK_UTILS is not None:
    MMDET_TASK_UTILS.register_module(name='FusedSimOTAAssigner', module=FusedSimOTAAssignerYOLOX)
    MMDET_TASK_UTILS.register_module(name='FusedDynamicSoftLabelAssigner', module=FusedDynamicSoftLabelAssigner)

"""mmpose pose heads on batched SimOTA: ``FastRTMOHead`` (``RTMOHead``, plus a logits-space MLE
loss) and ``FastYOLOXPoseHead`` (``YOLOXPoseHead``).

Config change: ``model.head.type='FastRTMOHead'`` / ``'FastYOLOXPoseHead'`` (and
``custom_imports=['fastops.mm']``).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.swish import Swish
from mmdet.utils import reduce_mean
from mmengine.structures import InstanceData
from mmpose.models.heads import RTMOHead
from mmpose.models.heads.hybrid_heads import YOLOXPoseHead
from mmpose.models.losses import MLECCLoss
from mmpose.registry import MODELS
from mmpose.structures.bbox import bbox_xyxy2cs
from torch import Tensor

from fastops.mm.assigners import FusedSimOTAAssigner, fused_assigner_cfg
from fastops.mm.counters import DeferredCounters
from fastops.mm.losses import LogMLECCLoss
from fastops.ops.mlecc_loss import STOCK_FLOOR, mlecc_loss_from_logits
from fastops.reference.mlecc_loss import reduce_mlecc

# The stock code clips logits to this range before the sigmoid "to avoid nan".
LOGIT_CLIP = 1e4
# Stock RTMO's objectness logit: sigmoid(1e4) = 1, so the assigner's score is sqrt(sigmoid(cls)).
OBJECTNESS_LOGIT = 1e4
# A predicted keypoint counts for the unlabelled-instance mask when its visibility exceeds this.
MASK_VIS_THR = 0.3


def _concat_gts(batch_gt_instances: Sequence[InstanceData]) -> Tuple[Optional[dict], Tensor]:
    """The gts of all images concatenated per field (None without any gt), and each image's
    offset into them."""
    counts = torch.tensor([len(gt) for gt in batch_gt_instances], dtype=torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    present = [gt for gt in batch_gt_instances if len(gt) > 0]
    if not present:
        return None, offsets
    gts = {name: torch.cat([gt.get(name) for gt in present])
           for name in ('bboxes', 'keypoints', 'keypoints_visible', 'areas')}
    if any('keypoints_visible_weights' in gt for gt in present):  # weight 1 where an image has none
        gts['keypoints_visible_weights'] = torch.cat(
            [gt.get('keypoints_visible_weights', torch.ones_like(gt.keypoints_visible)) for gt in present])
    return gts, offsets


def _fuse_swish(module: nn.Module) -> None:
    """Replaces mmcv's ``Swish`` (x * sigmoid(x): two kernels forward, four backward) by
    ``nn.SiLU``, the same function in one fused kernel each way."""
    for name, child in module.named_children():
        if type(child) is Swish:
            setattr(module, name, nn.SiLU())
        else:
            _fuse_swish(child)


class BatchedPoseTargets:
    """The training targets of mmpose's ``YOLOXPoseHead`` family (``RTMOHead`` too) from one
    ``fastops.simota_assign`` call for the whole batch (``FusedSimOTAAssigner.assign_batch``)
    instead of a Python loop over images, with the stock ``_get_targets`` contract; a
    ``SimOTAAssigner`` config is built as ``FusedSimOTAAssigner`` with the same arguments. Also
    replaces mmcv's ``Swish`` by ``nn.SiLU`` (the same function, one fused kernel). Mixed in
    before the stock head class."""

    def __init__(self, *args, assigner: Optional[dict] = None, **kwargs):
        name = type(self).__name__
        if assigner is None:
            raise ValueError(f'{name}: an assigner config (SimOTAAssigner) is required')
        super().__init__(*args, assigner=fused_assigner_cfg(assigner, name, 'SimOTAAssigner', FusedSimOTAAssigner), **kwargs)
        _fuse_swish(self.head_module)

    # ------------------------------------------------------------------ targets

    @torch.no_grad()
    def _get_targets(self, priors: Tensor, batch_cls_scores: Tensor, batch_objectness: Tensor,
                     batch_decoded_bboxes: Tensor, batch_decoded_kpts: Tensor, batch_kpt_vis: Tensor,
                     batch_data_samples: List) -> tuple:
        """Stock ``_get_targets`` contract (same tuple, same order of positives: image-major,
        then prior index) from one batched assignment. ``group_indices`` is returned as ``None``:
        the losses of both heads do not use it."""
        scores = self._assigner_scores(batch_cls_scores, batch_objectness)
        kpt_vis = batch_kpt_vis.clip(-LOGIT_CLIP, LOGIT_CLIP).sigmoid()
        batch_gts = [sample.gt_instance_labels for sample in batch_data_samples]
        result = self.assigner.assign_batch(priors, batch_decoded_bboxes, scores, batch_decoded_kpts, kpt_vis,
                                            batch_gts)
        num_imgs, num_priors = result['gt_inds'].shape
        fg_mask = result['gt_inds'].view(-1) > 0
        pos_flat = fg_mask.nonzero().squeeze(1)
        pos_img = torch.div(pos_flat, num_priors, rounding_mode='floor')
        pos_prior = pos_flat - pos_img * num_priors
        gts, offsets = _concat_gts(batch_gts)
        gt_rows = offsets.to(pos_flat.device)[pos_img] + result['gt_inds'].view(-1)[pos_flat] - 1
        pos = self._positive_targets(gts, gt_rows, result['labels'].view(-1)[pos_flat],
                                     result['max_overlaps'].view(-1)[pos_flat], batch_cls_scores)

        obj_targets = fg_mask.to(batch_cls_scores.dtype).unsqueeze(1)
        obj_weights = self._objectness_weights(batch_data_samples, batch_decoded_kpts, kpt_vis)
        pos_priors = priors[pos_prior]
        bbox_aux_targets, kpt_aux_targets = self._aux_targets(pos['bboxes'], pos['keypoints'], pos_priors)
        num_pos_per_img = torch.bincount(pos_img, minlength=num_imgs).tolist()
        return (fg_mask, pos['cls'], obj_targets, obj_weights, pos['bboxes'], bbox_aux_targets, pos['keypoints'],
                kpt_aux_targets, pos['keypoints_visible'], pos['vis_weights'], pos['areas'], pos_priors, None,
                num_pos_per_img)

    @staticmethod
    def _assigner_scores(batch_cls_scores: Tensor, batch_objectness: Tensor) -> Tensor:
        """sqrt(sigmoid(cls) * sigmoid(obj)) as the stock head feeds SimOTA (NaN scores -> 0)."""
        cls = batch_cls_scores.clip(-LOGIT_CLIP, LOGIT_CLIP).sigmoid()
        obj = batch_objectness.clip(-LOGIT_CLIP, LOGIT_CLIP).sigmoid()
        cls = torch.where(torch.isnan(cls), torch.zeros_like(cls), cls)
        obj = torch.where(torch.isnan(obj), torch.zeros_like(obj), obj)
        return (cls * obj).sqrt()

    def _positive_targets(self, gts: dict, gt_rows: Tensor, labels: Tensor, overlaps: Tensor,
                          like: Tensor) -> dict:
        """Per positive prior: its matched gt's fields, and the class target one_hot * overlap."""
        if gts is None:  # no gt in the whole batch
            num_kpts = self.num_keypoints
            return dict(cls=like.new_zeros((0, self.num_classes)), bboxes=like.new_zeros((0, 4)),
                        keypoints=like.new_zeros((0, num_kpts, 2)), keypoints_visible=like.new_zeros((0, num_kpts)),
                        vis_weights=like.new_zeros((0, num_kpts)), areas=like.new_zeros((0, )))
        pos = {name: value[gt_rows] for name, value in gts.items()}
        pos['cls'] = F.one_hot(labels, self.num_classes) * overlaps.unsqueeze(-1)
        weights = pos.pop('keypoints_visible_weights', None)
        pos['vis_weights'] = torch.ones_like(pos['keypoints_visible']) if weights is None else weights
        return pos

    def _objectness_weights(self, batch_data_samples: List, decoded_kpts: Tensor, kpt_vis: Tensor) -> Tensor:
        """Weight 1 per prior, except in images whose ``gt_fields.heatmap_mask`` marks unlabelled
        people: there 1 - mask sampled (bilinear) at the mean of the prior's visible keypoints."""
        num_imgs, num_priors = kpt_vis.shape[:2]
        weights = kpt_vis.new_ones((num_imgs, num_priors))
        for img, sample in enumerate(batch_data_samples):
            mask = sample.get('gt_fields', {}).get('heatmap_mask', None)
            if mask is not None and bool((mask != 0).any()):
                weights[img] = 1.0 - self._mask_at_mean_keypoint(mask, decoded_kpts[img], kpt_vis[img])
        return weights.view(-1, 1)

    @staticmethod
    def _mask_at_mean_keypoint(mask: Tensor, kpts: Tensor, kpt_vis: Tensor) -> Tensor:
        visible = (kpt_vis > MASK_VIS_THR).to(kpts.dtype).unsqueeze(-1)
        mean_kpts = (kpts * visible).sum(1) / visible.sum(1).clamp(min=1e-8)
        # grid_sample's normalised coordinates: pixel 0 -> -1, pixel (size - 1) -> +1
        grid = mean_kpts / (mask.shape[-1] - 1) * 2 - 1
        sampled = F.grid_sample(mask.unsqueeze(0).float(), grid.view(1, -1, 1, 2), mode='bilinear',
                                padding_mode='zeros')
        return sampled.view(-1)

    def _aux_targets(self, bboxes: Tensor, kpts: Tensor, pos_priors: Tensor) -> Tuple:
        """YOLOX auxiliary L1 targets in prior units: (centre offset, log size), keypoint offsets."""
        if not self.use_aux_loss:
            return None, None
        xy, stride = pos_priors[:, :2], pos_priors[:, 2:]
        centre = (bboxes[:, :2] + bboxes[:, 2:]) / 2.0
        size = bboxes[:, 2:] - bboxes[:, :2]
        bbox_aux = torch.cat([(centre - xy) / stride, torch.log(size / stride + 1e-8)], dim=-1)
        return bbox_aux, (kpts - xy[:, None]) / stride[:, None]


@MODELS.register_module()
class FastRTMOHead(BatchedPoseTargets, RTMOHead):
    """mmpose 1.3.2 ``RTMOHead`` with the same constructor, outputs and loss keys: two changes of
    method, and less work for the same functions.

    1. Training targets of the whole batch come from one ``fastops.simota_assign`` call
       (``BatchedPoseTargets``, shared with ``FastYOLOXPoseHead``).
    2. The MLE loss of the DCC branch comes from ``fastops.mlecc_loss_from_logits``: the DCC
       softmax, the Laplace target heatmaps and ``MLECCLoss(mode='log')`` are fused in log space,
       so no heatmap is materialised for autograd. Gradients reach the DCC logits, the sigmas and
       the predicted boxes (through the bins of the target), as in the stock graph.

    ``loss_mle`` may be mmpose's ``MLECCLoss`` (floor 1e-4) or fastops' ``LogMLECCLoss`` (its
    ``floor``); its ``loss_weight``, ``use_target_weight`` and ``reduction`` are read at every call,
    so ``RTMOModeSwitchHook`` (``proxy_target_cc``, ``loss_mle.loss_weight``,
    ``loss_oks.loss_weight``) works as with the stock head. Any other MLE loss, or a non-log
    ``mode``, runs the stock heatmap path. With ``proxy_target_cc`` the DCC keypoints are decoded
    from the softmax under ``no_grad`` (they are detached targets in stock too).

    The rest computes the same functions with less work; results agree up to float rounding.
    In ``loss()``: ``out_pose`` runs on the positive priors only (the loss reads no other pose
    vector); the DCC's bin-encoding adapters act on the 17 keypoint features instead of the
    192 + 256 bins (``_dcc_logits``); on CPU the head convolutions run in channels-last layout
    (``channels_last_on_cpu``, default True: oneDNN's backward of the pose branch's grouped 3x3
    convolutions is several times slower in NCHW). Everywhere: mmcv's ``Swish`` becomes
    ``nn.SiLU``. Set ``channels_last_on_cpu`` to False to time without the layout change.
    """

    channels_last_on_cpu = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mle_counters = DeferredCounters(LogMLECCLoss._report_invalid)

    # ------------------------------------------------------------------ loss

    def loss(self, feats: Tuple[Tensor], batch_data_samples: List, train_cfg: dict = {}) -> dict:
        """Same loss dict as ``RTMOHead.loss``: loss_bbox, [loss_bbox_aux], loss_vis, loss_mle,
        loss_oks, loss_cls, num_samples, overlaps (only loss_cls/num_samples without positives)."""
        preds = self._flat_predictions(feats)
        (pos_mask, cls_targets, obj_targets, obj_weights, bbox_targets, bbox_aux_targets, kpt_targets, _,
         vis_targets, vis_weights, pos_areas, pos_priors, _, num_pos_per_img) = self._get_targets(
             preds['priors'], preds['cls'].detach(), preds['objectness'], preds['bboxes'].detach(),
             preds['kpts'].detach(), preds['kpt_vis'].detach(), batch_data_samples)

        num_pos = torch.tensor(sum(num_pos_per_img), dtype=torch.float, device=preds['cls'].device)
        num_total_samples = max(reduce_mean(num_pos), 1.0)
        losses = dict()
        if num_pos > 0:
            pos = {name: preds[name].flatten(0, 1)[pos_mask] for name in ('bboxes', 'bbox_raw', 'kpt_vis', 'kpts')}
            pos['pose_vecs'] = self._pose_vecs_at(preds['reg_feats'], pos_mask.nonzero().squeeze(1))
            losses['loss_bbox'] = self.loss_bbox(pos['bboxes'], bbox_targets) / num_total_samples
            if self.use_aux_loss and hasattr(self, 'loss_bbox_aux'):
                losses['loss_bbox_aux'] = self.loss_bbox_aux(pos['bbox_raw'], bbox_aux_targets) / num_total_samples
            losses['loss_vis'] = self.loss_vis(pos['kpt_vis'], vis_targets, vis_weights)
            cls_targets = self._keypoint_losses(losses, pos, pos_priors, kpt_targets, vis_targets, pos_areas,
                                                cls_targets)
            overlaps = cls_targets
            obj_targets[pos_mask] = cls_targets.pow(self.overlaps_power).detach().to(obj_targets)

        losses['loss_cls'] = self.loss_cls(preds['cls'].view(-1, self.num_classes), obj_targets,
                                           obj_weights) / num_total_samples
        losses['num_samples'] = num_total_samples
        if num_pos > 0:
            losses['overlaps'] = overlaps
        return losses

    def _flat_predictions(self, feats: Tuple[Tensor]) -> dict:
        """Head outputs flattened to [B, P, ...], decoded boxes/keypoints, the priors, and the
        pose branch's features per level (``reg_feats``, for ``_pose_vecs_at``)."""
        cls_scores, bbox_preds, kpt_offsets, kpt_vis, reg_feats = self._head_outputs(feats)
        priors = torch.cat(self.prior_generator.grid_priors([score.shape[2:] for score in cls_scores],
                                                            dtype=cls_scores[0].dtype,
                                                            device=cls_scores[0].device, with_stride=True))
        cls = self._flatten_predictions(cls_scores)
        bbox_raw = self._flatten_predictions(bbox_preds)
        xy, stride = priors[..., :2], priors[..., -1]
        return dict(priors=priors, cls=cls, bbox_raw=bbox_raw,
                    objectness=cls.new_full(cls.shape[:-1] + (1, ), OBJECTNESS_LOGIT),
                    bboxes=self.decode_bbox(bbox_raw, xy, stride),
                    kpts=self.decode_kpt_reg(self._flatten_predictions(kpt_offsets), xy, stride),
                    kpt_vis=self._flatten_predictions(kpt_vis), reg_feats=reg_feats)

    def _head_outputs(self, feats: Tuple[Tensor]) -> Tuple[List[Tensor], ...]:
        """``RTMOHeadModule.forward`` in training mode, less ``out_pose``: per level the class
        scores, boxes, keypoint offsets and visibilities, and the pose branch's features."""
        module = self.head_module
        channels_last = self.channels_last_on_cpu and feats[0].device.type == 'cpu'
        outputs = ([], [], [], [], [])
        for level, feat in enumerate(feats):
            cls_feat, reg_feat = feat.split(feat.size(1) // 2, 1)
            if channels_last:  # after the split, which keeps each half dense
                cls_feat = cls_feat.contiguous(memory_format=torch.channels_last)
                reg_feat = reg_feat.contiguous(memory_format=torch.channels_last)
            cls_feat = module.conv_cls[level](cls_feat)
            reg_feat = module.conv_pose[level](reg_feat)
            level_outputs = (module.out_cls[level](cls_feat), module.out_bbox[level](reg_feat),
                             module.out_kpt_reg[level](reg_feat), module.out_kpt_vis[level](reg_feat), reg_feat)
            for output, value in zip(outputs, level_outputs):
                output.append(value)
        return outputs

    def _pose_vecs_at(self, reg_feats: List[Tensor], pos_flat: Tensor) -> Tensor:
        """The pose vectors of the positive priors only (``pos_flat`` indexes the flattened
        [B * P] priors): the loss reads no other, so ``out_pose`` (a 1x1 convolution) runs as a
        linear layer on the positives' features instead of on every prior."""
        module = self.head_module
        num_priors = sum(feat.shape[2] * feat.shape[3] for feat in reg_feats)
        img = torch.div(pos_flat, num_priors, rounding_mode='floor')
        prior = pos_flat - img * num_priors
        parts, rows_per_level, start = [], [], 0
        for level, reg_feat in enumerate(reg_feats):
            size = reg_feat.shape[2] * reg_feat.shape[3]
            rows = ((prior >= start) & (prior < start + size)).nonzero().squeeze(1)
            feats = reg_feat.flatten(2).transpose(1, 2)[img[rows], prior[rows] - start]
            if module.pose_vec_channels > 0:
                out_pose = module.out_pose[level]
                feats = F.linear(feats, out_pose.weight.flatten(1), out_pose.bias)
            parts.append(feats)
            rows_per_level.append(rows)
            start += size
        return torch.cat(parts)[torch.argsort(torch.cat(rows_per_level))]

    def _keypoint_losses(self, losses: dict, pos: dict, pos_priors: Tensor, kpt_targets: Tensor,
                         vis_targets: Tensor, pos_areas: Tensor, cls_targets: Tensor) -> Tensor:
        """Adds loss_mle and loss_oks; returns the class targets (the OKS of the DCC keypoints
        under ``proxy_target_cc``, else the assigner's overlaps)."""
        kpt_preds = pos['kpts'].view(-1, self.num_keypoints, 2)
        bbox_cs = torch.cat(bbox_xyxy2cs(pos['bboxes'], self.bbox_padding), dim=1)
        grids = pos_priors[..., :2]
        mle_weight = self.loss_mle.loss_weight if hasattr(self, 'loss_mle') else 0
        if mle_weight > 0 and self._fused_mle_supported():
            losses['loss_mle'], logits = self._fused_mle_loss(pos['pose_vecs'], bbox_cs, grids, kpt_targets,
                                                              vis_targets, pos_areas)
            cc_kpts = self._decode_dcc(*logits, bbox_cs) if self.proxy_target_cc else None
        elif mle_weight > 0:
            cc_kpts, heatmaps, sigmas = self.dcc.forward_train(pos['pose_vecs'], bbox_cs, grids)
            target_hms = self.dcc.generate_target_heatmap(kpt_targets, bbox_cs, sigmas, pos_areas)
            losses['loss_mle'] = self.loss_mle(heatmaps, target_hms, vis_targets)
        elif self.proxy_target_cc:
            with torch.no_grad():
                cc_kpts = self.dcc.forward_test(pos['pose_vecs'], bbox_cs, grids)

        if not self.proxy_target_cc:
            losses['loss_oks'] = self.loss_oks(kpt_preds, kpt_targets, vis_targets, pos_areas)
            return cls_targets
        with torch.no_grad():
            cc_error = torch.norm(cc_kpts - kpt_targets, dim=-1)
            reg_error = torch.norm(kpt_preds - kpt_targets, dim=-1)
            # regress only the keypoints the DCC branch already predicts better
            reg_weights = vis_targets * (reg_error > cc_error).float()
            cc_oks = self.assigner.oks_calculator(cc_kpts, kpt_targets, vis_targets, pos_areas)
        losses['loss_oks'] = self.loss_oks(kpt_preds, cc_kpts.detach(), reg_weights, pos_areas)
        return cc_oks.unsqueeze(1)

    def _fused_mle_supported(self) -> bool:
        return type(self.loss_mle) in (MLECCLoss, LogMLECCLoss) and self.loss_mle.mode == 'log'

    def _fused_mle_loss(self, pose_vecs: Tensor, bbox_cs: Tensor, grids: Tensor, kpt_targets: Tensor,
                        vis_targets: Tensor, pos_areas: Tensor) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """``loss_mle`` ([N], as ``MLECCLoss``) from the DCC logits, and the logits."""
        dcc = self.dcc
        sigmas = dcc.sigma_fc(pose_vecs)
        logits_x, logits_y = self._dcc_logits(pose_vecs, bbox_cs, grids)
        floor = getattr(self.loss_mle, 'floor', STOCK_FLOOR)
        per_keypoint, num_invalid = mlecc_loss_from_logits(
            logits_x.float(), logits_y.float(), kpt_targets.float(), bbox_cs.float(), sigmas.float(),
            pos_areas.float(), floor=floor, x_bins=dcc.x_bins.float(), y_bins=dcc.y_bins.float())
        self._mle_counters.push(num_invalid=num_invalid)
        loss = reduce_mlecc(per_keypoint, vis_targets, self.loss_mle.use_target_weight, self.loss_mle.reduction,
                            self.loss_mle.loss_weight)
        return loss, (logits_x, logits_y)

    def _dcc_logits(self, pose_vecs: Tensor, bbox_cs: Tensor, grids: Tensor) -> Tuple[Tensor, Tensor]:
        """The DCC's x and y logits, as ``DCC._get_bin_enc`` + ``_pose_feats_to_heatmaps`` compute
        them, with the bin-encoding adapter moved onto the keypoint features:
        f . (W e_b + c) = (f W) . e_b + f . c, a [N*K, C] x [C, C] product per axis instead of
        [N*bins, C] x [C, C] (K=17 keypoints, 192/256 bins)."""
        dcc = self.dcc
        kpt_feats = dcc.pose_to_kpts(pose_vecs).reshape(-1, dcc.num_keypoints, dcc.feat_channels)
        if hasattr(dcc, 'gau'):
            kpt_feats = dcc.gau(kpt_feats, pos_enc=getattr(dcc, 'pos_enc', None))
        center, scale = bbox_cs.split(2, dim=-1)
        center = center - grids
        logits = []
        for axis, (bins, adapter) in enumerate(((dcc.x_bins, dcc.x_fc), (dcc.y_bins, dcc.y_fc))):
            positions = bins.view(1, -1) * scale[:, axis:axis + 1] + center[:, axis:axis + 1]
            bin_enc = dcc.spe(position=positions)
            axis_logits = torch.matmul(kpt_feats @ adapter.weight, bin_enc.transpose(-1, -2))
            if adapter.bias is not None:
                axis_logits = axis_logits + (kpt_feats @ adapter.bias).unsqueeze(-1)
            logits.append(axis_logits)
        return logits[0], logits[1]

    @torch.no_grad()
    def _decode_dcc(self, logits_x: Tensor, logits_y: Tensor, bbox_cs: Tensor) -> Tensor:
        """DCC keypoints (softmax expectation over the bins), used only as detached targets."""
        prob_x, prob_y = self.dcc._apply_softmax(logits_x, logits_y)
        return self.dcc._decode_xy_heatmaps(prob_x, prob_y, bbox_cs)


@MODELS.register_module()
class FastYOLOXPoseHead(BatchedPoseTargets, YOLOXPoseHead):
    """mmpose 1.3.2 ``YOLOXPoseHead`` with the same constructor, outputs and loss keys, whose
    training targets come from one batched ``fastops.simota_assign`` call (``BatchedPoseTargets``)."""

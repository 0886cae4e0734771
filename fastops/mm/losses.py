"""OpenMMLab loss drop-ins backed by fastops kernels."""
import torch
import torch.nn as nn
from mmdet.models.losses import CrossEntropyLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.logging import MessageHub, print_log
from mmpose.registry import MODELS as MMPOSE_MODELS

import fastops
from fastops.mm.counters import DeferredCounters
from fastops.ops.mlecc_loss import mlecc_loss_from_probs
from fastops.ops.safe_cross_entropy import CLAMP_GRAD_MODES, safe_cross_entropy, safe_sigmoid_cross_entropy
from fastops.reference.mlecc_loss import reduce_mlecc


@MMDET_MODELS.register_module()
class SafeCrossEntropyLoss(CrossEntropyLoss):
    """mmdet ``CrossEntropyLoss`` that survives fp16 logits: clamp, then an fp32 fused CE.

    Same constructor, forward and reductions as mmdet 3.3.0's ``CrossEntropyLoss`` (``use_mask``
    keeps mmdet's own mask path), plus:

    Args:
        clamp (float): logits, ±inf included, are clamped to ``[-clamp, clamp]`` before the loss.
        clamp_grad (str): ``'zero'`` (torch.clamp's gradient) or ``'straight_through'``.
        log_key (str | None): MessageHub key under ``train/`` for the number of clamped logits per
            call (shown in the training log); NaN logits go to ``train/<log_key>_nan`` from the
            first call that meets one on. On CUDA the counts reach the MessageHub without a host
            sync, usually one iteration late. Each update costs mmengine a copy of the key's
            history (as for every scalar it logs); ``None`` logs nothing.
    """

    def __init__(self, use_sigmoid=False, use_mask=False, reduction='mean', class_weight=None,
                 ignore_index=None, loss_weight=1.0, avg_non_ignore=False, clamp=100.0,
                 clamp_grad='zero', log_key='num_clamped'):
        super().__init__(use_sigmoid=use_sigmoid, use_mask=use_mask, reduction=reduction,
                         class_weight=class_weight, ignore_index=ignore_index, loss_weight=loss_weight,
                         avg_non_ignore=avg_non_ignore)
        if not clamp > 0:
            raise ValueError(f'SafeCrossEntropyLoss: clamp must be positive, got {clamp}')
        if clamp_grad not in CLAMP_GRAD_MODES:
            raise ValueError(f'SafeCrossEntropyLoss: clamp_grad must be one of {CLAMP_GRAD_MODES}, got {clamp_grad!r}')
        self.clamp = float(clamp)
        self.clamp_grad = clamp_grad
        self.log_key = log_key
        self._counters = DeferredCounters(self._log_counts)
        if use_sigmoid:
            self.cls_criterion = self._binary_cross_entropy
        elif not use_mask:
            self.cls_criterion = self._cross_entropy

    def extra_repr(self):
        return f'{super().extra_repr()}, clamp={self.clamp}, clamp_grad={self.clamp_grad!r}'

    def _push_counts(self, num_clamped, num_nan):
        if self.log_key is not None:
            self._counters.push(num_clamped=num_clamped, num_nan=num_nan)

    def _log_counts(self, counts):
        # Each update costs mmengine's HistoryBuffer a copy of the key's whole history, so the NaN
        # count, almost always 0, is logged from its first non-zero call on.
        hub = MessageHub.get_current_instance()
        hub.update_scalar(f'train/{self.log_key}', counts['num_clamped'])
        nan_key = f'train/{self.log_key}_nan'
        if counts['num_nan'] or nan_key in hub.log_scalars:
            hub.update_scalar(nan_key, counts['num_nan'])

    def _cross_entropy(self, pred, label, weight=None, reduction='mean', avg_factor=None,
                       class_weight=None, ignore_index=-100, avg_non_ignore=False):
        ignore_index = -100 if ignore_index is None else ignore_index
        loss, num_clamped, num_nan = safe_cross_entropy(pred, label, class_weight, ignore_index,
                                                        self.clamp, self.clamp_grad)
        self._push_counts(num_clamped, num_nan)
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = label.numel() - (label == ignore_index).sum()  # a tensor: no host sync
        if weight is not None:
            weight = weight.float()
        return weight_reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor)

    def _binary_cross_entropy(self, pred, label, weight=None, reduction='mean', avg_factor=None,
                              class_weight=None, ignore_index=-100, avg_non_ignore=False):
        """mmdet's binary_cross_entropy. Class-index labels are expanded inside the kernel, and the
        kernel zeroes what stock's valid mask does (rows labelled ignore_index; targets below 0 or
        equal to ignore_index), so no [N, C] mask is built or multiplied in."""
        ignore_index = -100 if ignore_index is None else ignore_index
        logits = pred if pred.dim() == 2 else pred.view(-1, 1)
        if pred.dim() != label.dim():  # class indices [N], label C = background
            targets = label
            if weight is not None:
                weight = weight.float().view(-1, 1).expand_as(logits)
            count_valid = lambda: (label != ignore_index).sum() * logits.size(1)  # noqa: E731
        else:  # per-element targets
            targets = label.view_as(logits).float()
            if weight is not None:
                weight = weight.float().view_as(logits)
            count_valid = lambda: ((targets >= 0) & (targets != ignore_index)).sum()  # noqa: E731
        loss, num_clamped, num_nan = safe_sigmoid_cross_entropy(logits, targets, class_weight, ignore_index,
                                                                self.clamp, self.clamp_grad)
        self._push_counts(num_clamped, num_nan)
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = count_valid()
        return weight_reduce_loss(loss.view_as(pred), None if weight is None else weight.reshape(pred.shape),
                                  reduction=reduction, avg_factor=avg_factor)


@MMPOSE_MODELS.register_module()
class LogMLECCLoss(nn.Module):
    """mmpose ``MLECCLoss`` whose ``mode='log'`` runs in log space (``fastops.mlecc_loss_from_probs``).

    Same constructor and ``forward(outputs, targets, target_weight)`` as mmpose's ``MLECCLoss``,
    plus ``floor``. Config change: ``loss_mle=dict(type='LogMLECCLoss', use_target_weight=True)``.

    * ``mode='log'``: ``-log(exp(s_x + s_y) + floor)`` with ``s_a = log sum_i p_i t_i``, a sum of
      logs (stock multiplies the axes, which under- or overflows). ``floor=1e-4`` reproduces stock;
      ``floor=0`` is the pure negative log-likelihood, which does not saturate at 9.21 for far-off
      keypoints.
    * ``mode='linear'`` / ``'square'``: stock meaning, ``1 - L`` / ``1 - L**2``.

    The loss can be negative: RTMO's targets are densities scaled by ``1/sigma`` (up to 1000 per
    axis), so a good prediction has likelihood ``L > 1`` and ``-log L < 0``.

    Non-finite inputs are not silently zeroed as in stock: the affected keypoints contribute 0 and
    are counted; the count is pushed to mmengine's MessageHub as ``train/mlecc_nonfinite`` (and
    warned about; on CUDA without a host sync, usually one iteration late); in debug mode (``fastops.set_debug(True)``) they raise, naming the index.
    Half/bfloat16 heatmaps are computed in float32.

    Args:
        reduction (str): 'none' | 'mean' | 'sum' over all dims but the first. Default: 'mean'.
        mode (str): 'linear' | 'square' | 'log'. Default: 'log'.
        use_target_weight (bool): weight each keypoint by ``target_weight``. Default: False.
        loss_weight (float): multiplier of the loss. Default: 1.0.
        floor (float): ``>= 0``, added to the likelihood in 'log' mode. Default: 1e-4 (stock).
    """

    def __init__(self, reduction: str = 'mean', mode: str = 'log', use_target_weight: bool = False,
                 loss_weight: float = 1.0, floor: float = 1e-4):
        super().__init__()
        assert reduction in ('mean', 'sum', 'none'), \
            f"`reduction` should be either 'mean', 'sum', or 'none', but got {reduction}"
        assert mode in ('linear', 'square', 'log'), \
            f"`mode` should be either 'linear', 'square', or 'log', but got {mode}"
        assert floor >= 0, f'`floor` should be >= 0, but got {floor}'
        self.reduction = reduction
        self.mode = mode
        self.use_target_weight = use_target_weight
        self.loss_weight = loss_weight
        self.floor = floor
        self._counters = DeferredCounters(self._report_invalid)

    def forward(self, outputs, targets, target_weight=None):
        """Per-instance loss ``[N]`` ('mean'/'sum') or per-keypoint ``[N, K]`` ('none').

        Args:
            outputs: ``(pred_x [N, K, Wx], pred_y [N, K, Wy])`` bin probabilities.
            targets: ``(target_x, target_y)`` target densities of the same shapes.
            target_weight: ``[N, K]`` (or ``[N]``) weights, used when ``use_target_weight``.
        """
        assert len(outputs) == len(targets), 'Outputs and targets must have the same length'
        if self.mode == 'log':
            loss, num_invalid = self._log_likelihood_loss(outputs, targets)
        else:
            loss, num_invalid = self._linear_loss(outputs, targets)
        self._counters.push(num_invalid=num_invalid)
        return reduce_mlecc(loss, target_weight, self.use_target_weight, self.reduction,
                            self.loss_weight)

    def _log_likelihood_loss(self, outputs, targets):
        if len(outputs) != 2:
            raise ValueError(f"LogMLECCLoss(mode='log') takes the x and y heatmaps, got {len(outputs)} axes")
        dtype = torch.promote_types(torch.promote_types(outputs[0].dtype, outputs[1].dtype),
                                    torch.promote_types(targets[0].dtype, targets[1].dtype))
        dtype = dtype if dtype == torch.float64 else torch.float32
        pred_x, pred_y, target_x, target_y = (t.to(dtype) for t in (*outputs, *targets))
        return mlecc_loss_from_probs(pred_x, pred_y, target_x, target_y, None, self.floor)

    def _linear_loss(self, outputs, targets):
        likelihood = 1.0
        for output, target in zip(outputs, targets):
            likelihood = likelihood * (output * target).sum(dim=-1)
        loss = 1.0 - likelihood if self.mode == 'linear' else 1.0 - likelihood.pow(2)
        finite = torch.isfinite(loss)
        num_invalid = (~finite).sum()
        if fastops.debug_enabled() and int(num_invalid) > 0:
            n, k = (~finite).nonzero()[0].tolist()
            raise ValueError(f"LogMLECCLoss(mode='{self.mode}'): non-finite likelihood at instance {n}, "
                             f'keypoint {k} ({int(num_invalid)} in total)')
        return torch.where(finite, loss, torch.zeros_like(loss)), num_invalid

    @staticmethod
    def _report_invalid(counts):
        count = counts['num_invalid']
        MessageHub.get_current_instance().update_scalar('train/mlecc_nonfinite', count)
        if count:
            print_log(f'LogMLECCLoss: {count} keypoints with non-finite inputs contribute 0 to the loss',
                      logger='current', level=30)

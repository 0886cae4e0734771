"""OpenMMLab loss drop-ins backed by fastops kernels."""
from mmdet.models.losses import CrossEntropyLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.logging import MessageHub

from fastops.ops.safe_cross_entropy import CLAMP_GRAD_MODES, safe_cross_entropy, safe_sigmoid_cross_entropy


@MMDET_MODELS.register_module()
class SafeCrossEntropyLoss(CrossEntropyLoss):
    """mmdet ``CrossEntropyLoss`` that survives fp16 logits: clamp, then an fp32 fused CE.

    Same constructor, forward and reductions as mmdet 3.3.0's ``CrossEntropyLoss`` (``use_mask``
    keeps mmdet's own mask path), plus:

    Args:
        clamp (float): logits, ±inf included, are clamped to ``[-clamp, clamp]`` before the loss.
        clamp_grad (str): ``'zero'`` (torch.clamp's gradient) or ``'straight_through'``.
        log_key (str): MessageHub key under ``train/`` for the number of clamped logits per call
            (shown in the training log); NaN logits go to ``train/<log_key>_nan``.
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
        if use_sigmoid:
            self.cls_criterion = self._binary_cross_entropy
        elif not use_mask:
            self.cls_criterion = self._cross_entropy

    def extra_repr(self):
        return f'{super().extra_repr()}, clamp={self.clamp}, clamp_grad={self.clamp_grad!r}'

    def _log_counts(self, num_clamped, num_nan):
        hub = MessageHub.get_current_instance()
        hub.update_scalar(f'train/{self.log_key}', int(num_clamped))
        hub.update_scalar(f'train/{self.log_key}_nan', int(num_nan))

    def _cross_entropy(self, pred, label, weight=None, reduction='mean', avg_factor=None,
                       class_weight=None, ignore_index=-100, avg_non_ignore=False):
        ignore_index = -100 if ignore_index is None else ignore_index
        loss, num_clamped, num_nan = safe_cross_entropy(pred, label, class_weight, ignore_index,
                                                        self.clamp, self.clamp_grad)
        self._log_counts(num_clamped, num_nan)
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = label.numel() - (label == ignore_index).sum().item()
        if weight is not None:
            weight = weight.float()
        return weight_reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor)

    def _binary_cross_entropy(self, pred, label, weight=None, reduction='mean', avg_factor=None,
                              class_weight=None, ignore_index=-100, avg_non_ignore=False):
        """mmdet's binary_cross_entropy; class-index labels are expanded inside the kernel."""
        ignore_index = -100 if ignore_index is None else ignore_index
        logits = pred if pred.dim() == 2 else pred.view(-1, 1)
        if pred.dim() != label.dim():  # class indices [N], label C = background
            targets = label
            valid_rows = (label != ignore_index).float()
            row_weight = valid_rows if weight is None else weight.float().view(-1) * valid_rows
            weight = row_weight.view(-1, 1).expand_as(logits)
            num_valid = valid_rows.sum() * logits.size(1)
        else:  # per-element targets
            targets = label.view_as(logits).float()
            valid = ((targets >= 0) & (targets != ignore_index)).float()
            weight = valid if weight is None else weight.float().view_as(logits) * valid
            num_valid = valid.sum()
        loss, num_clamped, num_nan = safe_sigmoid_cross_entropy(logits, targets, class_weight, ignore_index,
                                                                self.clamp, self.clamp_grad)
        self._log_counts(num_clamped, num_nan)
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = num_valid.item()
        return weight_reduce_loss(loss.view_as(pred), weight.reshape(pred.shape), reduction=reduction,
                                  avg_factor=avg_factor)

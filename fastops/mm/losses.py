"""Loss drop-ins for OpenMMLab, registered into the real mm registries."""
import torch
import torch.nn as nn
from mmengine.logging import MessageHub, print_log
from mmpose.registry import MODELS as MMPOSE_MODELS

import fastops
from fastops.ops.mlecc_loss import mlecc_loss_from_probs
from fastops.reference.mlecc_loss import reduce_mlecc


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
    warned about); in debug mode (``fastops.set_debug(True)``) they raise, naming the index.
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
        self._report_invalid(num_invalid)
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
    def _report_invalid(num_invalid):
        count = int(num_invalid)
        MessageHub.get_current_instance().update_scalar('train/mlecc_nonfinite', count)
        if count:
            print_log(f'LogMLECCLoss: {count} keypoints with non-finite inputs contribute 0 to the loss',
                      logger='current', level=30)

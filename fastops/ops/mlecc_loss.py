"""Log-space MLECC loss of RTMO's dynamic coordinate classification (DCC).

Why the loss can be negative
    RTMO's target ``t`` is a Laplace *density* over the image coordinate, scaled by ``1/sigma``
    (``t = exp(-|x - bin| / (2 sigma sqrt(A))) / sigma``), not a probability. The likelihood
    ``sum_i p_i t_i`` of a sharp, correct prediction is therefore larger than 1 (up to
    ``1/sigma' = 1000`` per axis), and its negative logarithm is negative. ``loss_mle: -2.6`` is a
    good value, not a bug; only differences of the loss are meaningful.

What ``floor`` changes
    Stock ``MLECCLoss(mode='log')`` computes ``-log(L + 1e-4)`` with ``L = prod_axes sum_i p_i t_i``.
    ``floor=1e-4`` (the default) reproduces that: the loss saturates at ``-log(1e-4) = 9.21`` and
    its gradient fades (``d loss / d log L = -L / (L + floor)``) once the prediction is far from
    the target. ``floor=0`` gives the pure negative log-likelihood ``-log L``: unbounded above,
    never saturating, so badly wrong keypoints keep a gradient of full strength.

Both operators keep every factor as a logarithm (sums of logs, never a product of axes; log-sum-exp
over bins), so no heatmap underflows and no product overflows. Rows (instance, keypoint) whose
inputs are non-finite (or, for probabilities, negative) contribute 0 loss and 0 gradient and are
*counted* in ``num_invalid``; in debug mode (``fastops.set_debug(True)``) they raise instead.
"""
import torch

from .. import debug_enabled
from ..reference import mlecc_loss as reference
from ._dispatch import has_kernel

__all__ = ["mlecc_loss_from_probs", "mlecc_loss_from_logits"]

STOCK_FLOOR = 1e-4


def mlecc_loss_from_probs(pred_x, pred_y, target_x, target_y, weight=None, floor=STOCK_FLOOR):
    """Per-keypoint MLECC loss from 1-D heatmap probabilities and target densities.

    Drop-in math for mmpose's ``MLECCLoss(mode='log')``:
    ``loss[n, k] = -weight[n, k] * log(exp(s_x + s_y) + floor)`` with
    ``s_a = log sum_i pred_a[n, k, i] * target_a[n, k, i]`` (dot products accumulated in float64,
    which cannot underflow or overflow for any float32 inputs).

    Args:
        pred_x, pred_y: ``[N, K, Wx]`` / ``[N, K, Wy]`` predicted bin probabilities (float32/64).
        target_x, target_y: target densities, same shapes and dtype (non-negative).
        weight: optional ``[N, K]`` per-keypoint weight (e.g. keypoint visibility); no gradient.
        floor: ``>= 0``; ``1e-4`` reproduces stock, ``0`` gives the pure log-likelihood.

    Returns:
        ``(loss [N, K], num_invalid [] int64)``. The loss can be negative (density, not
        probability; see the module docstring). Gradients flow to all four heatmaps.

    Raises:
        ValueError: in debug mode, naming the first (instance, keypoint) with non-finite or
            negative inputs. RuntimeError: bad shapes, dtypes or devices (names the argument).
    """
    if has_kernel(pred_x.device):
        loss, num_invalid = torch.ops.fastops.mlecc_loss_from_probs(
            pred_x, pred_y, target_x, target_y, weight, float(floor))
    else:
        loss, num_invalid = _zero_invalid_rows(
            reference.mlecc_loss_from_probs(pred_x, pred_y, target_x, target_y, weight, floor),
            _invalid_rows_probs(pred_x=pred_x, pred_y=pred_y, target_x=target_x, target_y=target_y,
                                weight=weight))
    if debug_enabled():
        _raise_on_invalid("mlecc_loss_from_probs", num_invalid, _invalid_rows_probs(
            pred_x=pred_x, pred_y=pred_y, target_x=target_x, target_y=target_y, weight=weight))
    return loss, num_invalid


def mlecc_loss_from_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight=None,
                           floor=STOCK_FLOOR, x_bins=None, y_bins=None):
    """Fused RTMO MLE loss: DCC softmax + Laplace target + MLECC, in log space.

    Computes, without materialising any heatmap, what RTMO's
    ``MLECCLoss(mode='log')(DCC._apply_softmax(logits), DCC.generate_target_heatmap(...))``
    computes per keypoint (before weighting/reduction), with ``floor`` in place of 1e-4:
    ``log p = clamp(z, +-5e4) - log(sum exp + 1e-8)`` (stock softmax), bins
    ``b = lin * scale + center`` from ``bbox_cs = (cx, cy, w, h)``, and
    ``log t = -|g - b| / max(sqrt(area), 1) / max(sigma, 1e-3) / 2 - log max(sigma, 1e-3)``.

    Args:
        logits_x, logits_y: ``[N, K, Wx]`` / ``[N, K, Wy]`` DCC heatmap logits (before softmax).
        keypoints: ``[N, K, 2]`` ground-truth keypoints (no gradient).
        bbox_cs: ``[N, 4]`` padded bbox as center and scale (gradient, as in the stock graph).
        sigmas: ``[N, K]`` predicted Laplace scales (gradient; none where below 1e-3, as stock).
        areas: ``[N]`` ground-truth instance areas (no gradient).
        weight: optional ``[N, K]`` per-keypoint weight (no gradient).
        floor: ``>= 0``; ``1e-4`` reproduces stock, ``0`` gives the pure log-likelihood.
        x_bins, y_bins: base bins ``[Wx]``/``[Wy]``; default ``linspace(-0.5, 0.5, W)``. Pass
            DCC's buffers ``dcc.x_bins``/``dcc.y_bins`` for bit-exact stock targets, in particular
            under ``torch.compile``: inductor's ``linspace`` differs from eager's in the last bit
            of about half the bins, which moves a sigma=1e-3 target by ~1e-4 relative.

    Returns:
        ``(loss [N, K], num_invalid [] int64)``; the loss can be negative (density, not
        probability; see the module docstring). The gradient to the logits is written as 0 where
        its magnitude is below the dtype's smallest normal number (bins ~100 nats from the mode):
        subnormal values change no update but make CPU matmuls that read them up to 30x slower.

    Raises:
        ValueError: in debug mode, naming the first (instance, keypoint) with non-finite inputs.
        RuntimeError: bad shapes, dtypes or devices (names the argument).
    """
    x_bins = _default_bins(logits_x) if x_bins is None else x_bins
    y_bins = _default_bins(logits_y) if y_bins is None else y_bins
    if has_kernel(logits_x.device):
        loss, num_invalid, _ = torch.ops.fastops.mlecc_loss_from_logits(
            logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins, y_bins, float(floor))
    else:
        loss, num_invalid = _zero_invalid_rows(
            reference.mlecc_loss_from_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight,
                                             floor, x_bins, y_bins),
            _invalid_rows_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight))
    if debug_enabled():
        _raise_on_invalid("mlecc_loss_from_logits", num_invalid, _invalid_rows_logits(
            logits_x=logits_x, logits_y=logits_y, keypoints=keypoints, bbox_cs=bbox_cs,
            sigmas=sigmas, areas=areas, weight=weight))
    return loss, num_invalid


def _zero_invalid_rows(loss, masks):
    """The kernels' contract on the reference fallback (devices without a kernel): 0 loss and 0
    gradient on invalid rows, which are counted."""
    invalid = torch.zeros_like(loss, dtype=torch.bool)
    for mask in masks.values():
        invalid = invalid | mask
    return loss.masked_fill(invalid, 0), invalid.sum()


def _default_bins(logits):
    return torch.linspace(-0.5, 0.5, logits.shape[-1], dtype=logits.dtype, device=logits.device)


# ----------------------------------------------------------------------------- invalid rows


def _invalid_rows_probs(**tensors):
    """Per argument, a [N, K] mask of rows holding non-finite or negative values."""
    masks = {}
    for name, t in tensors.items():
        if t is None:
            continue
        bad = ~(torch.isfinite(t) & (t >= 0)) if name != "weight" else ~torch.isfinite(t)
        masks[name] = bad.any(-1) if t.dim() == 3 else bad
    return masks


def _invalid_rows_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight):
    """Per argument, a [N, K] mask of rows whose inputs are non-finite (negative areas too)."""
    n, k = sigmas.shape
    masks = {
        "logits_x": ~torch.isfinite(logits_x).all(-1),
        "logits_y": ~torch.isfinite(logits_y).all(-1),
        "keypoints": ~torch.isfinite(keypoints).all(-1),
        "bbox_cs": (~torch.isfinite(bbox_cs).all(-1, keepdim=True)).expand(n, k),
        "sigmas": ~torch.isfinite(sigmas),
        "areas": (~(torch.isfinite(areas) & (areas >= 0))).unsqueeze(1).expand(n, k),
    }
    if weight is not None:
        masks["weight"] = ~torch.isfinite(weight)
    return masks


def _raise_on_invalid(op_name, num_invalid, masks):
    count = int(num_invalid)
    if count == 0:
        return
    for name, mask in masks.items():
        rows = mask.nonzero()
        if len(rows):
            n, k = rows[0].tolist()
            raise ValueError(
                f"{op_name}: {name} has non-finite or out-of-range values at instance {n}, "
                f"keypoint {k} ({count} invalid (instance, keypoint) rows in total); "
                "debug mode (fastops.set_debug) raises instead of counting them")
    raise ValueError(f"{op_name}: {count} invalid (instance, keypoint) rows")


# ----------------------------------------------------------------------------- fake kernels


@torch.library.register_fake("fastops::mlecc_loss_from_probs")
def _(pred_x, pred_y, target_x, target_y, weight, floor):
    return pred_x.new_empty(pred_x.shape[:2]), pred_x.new_empty((), dtype=torch.int64)


@torch.library.register_fake("fastops::mlecc_loss_from_probs_backward")
def _(grad_loss, pred_x, pred_y, target_x, target_y, weight, floor):
    return tuple(t.new_empty(t.shape) for t in (pred_x, pred_y, target_x, target_y))  # contiguous, as the kernels


@torch.library.register_fake("fastops::mlecc_loss_from_logits")
def _(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins, y_bins, floor):
    n, k = logits_x.shape[:2]
    return (logits_x.new_empty((n, k)), logits_x.new_empty((), dtype=torch.int64),
            logits_x.new_empty((n, k, 6)))


@torch.library.register_fake("fastops::mlecc_loss_from_logits_backward")
def _(grad_loss, logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins, y_bins,
      row_stats, floor):
    return tuple(t.new_empty(t.shape) for t in (logits_x, logits_y, sigmas, bbox_cs))


# ----------------------------------------------------------------------------- autograd


def _probs_setup_context(ctx, inputs, output):
    pred_x, pred_y, target_x, target_y, weight, floor = inputs
    ctx.save_for_backward(pred_x, pred_y, target_x, target_y, weight)
    ctx.floor = floor


def _probs_backward(ctx, grad_loss, _grad_num_invalid):
    pred_x, pred_y, target_x, target_y, weight = ctx.saved_tensors
    grads = torch.ops.fastops.mlecc_loss_from_probs_backward(
        grad_loss, pred_x, pred_y, target_x, target_y, weight, ctx.floor)
    return (*grads, None, None)


def _logits_setup_context(ctx, inputs, output):
    logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins, y_bins, floor = inputs
    row_stats = output[2]
    ctx.mark_non_differentiable(row_stats)
    ctx.save_for_backward(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins,
                          y_bins, row_stats)
    ctx.floor = floor


def _logits_backward(ctx, grad_loss, _grad_num_invalid, _grad_row_stats):
    (logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins, y_bins,
     row_stats) = ctx.saved_tensors
    grad_lx, grad_ly, grad_sigmas, grad_bbox = torch.ops.fastops.mlecc_loss_from_logits_backward(
        grad_loss, logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight, x_bins, y_bins,
        row_stats, ctx.floor)
    return grad_lx, grad_ly, None, grad_bbox, grad_sigmas, None, None, None, None, None


torch.library.register_autograd("fastops::mlecc_loss_from_probs", _probs_backward,
                                setup_context=_probs_setup_context)
torch.library.register_autograd("fastops::mlecc_loss_from_logits", _logits_backward,
                                setup_context=_logits_setup_context)

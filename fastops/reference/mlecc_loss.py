"""Pure-PyTorch references of the MLECC loss of RTMO (mmpose 1.3.2).

* The *stock* pieces, reimplemented from their documented behaviour: DCC's clamped softmax over the
  1-D heatmap bins, RTMO's Laplace target heatmaps and ``MLECCLoss``'s three modes. They are the
  slow, fragile graph that :mod:`fastops.ops.mlecc_loss` replaces (used by tests and benches).
* :func:`mlecc_loss_from_logits` / :func:`mlecc_loss_from_probs`: the operator contracts
  evaluated in log space with plain torch ops (in float64 for tests, or as a device fallback).
"""
import math

import torch

LOGIT_CLAMP = 5e4   # DCC._apply_softmax clamps the heatmap logits to [-5e4, 5e4]
SOFTMAX_EPS = 1e-8  # DCC._apply_softmax divides by sum(exp) + EPS
SIGMA_MIN = 1e-3    # generate_target_heatmap clips sigmas from below
STOCK_FLOOR = 1e-4  # MLECCLoss(mode='log'): -log(prob + 1e-4)


def base_bins(num_bins, like):
    """DCC's base bin buffer, ``linspace(-0.5, 0.5, num_bins)`` in ``like``'s dtype/device."""
    return torch.linspace(-0.5, 0.5, num_bins, dtype=like.dtype, device=like.device)


def dcc_softmax(logits_x, logits_y):
    """Stock ``DCC._apply_softmax``: clamp, subtract the detached max, exp, divide by sum + 1e-8."""
    def one_axis(logits):
        logits = logits.clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP)
        shifted = logits - logits.max(dim=-1, keepdim=True).values.detach()
        exp = shifted.exp()
        return exp / (exp.sum(dim=-1, keepdim=True) + SOFTMAX_EPS)
    return one_axis(logits_x), one_axis(logits_y)


def axis_bins(bbox_cs, x_bins, y_bins):
    """Bin coordinates ``lin * scale + center`` per instance: ([N, Wx], [N, Wy])."""
    center, scale = bbox_cs.split(2, dim=-1)
    return (x_bins.view(1, -1) * scale[:, 0:1] + center[:, 0:1],
            y_bins.view(1, -1) * scale[:, 1:2] + center[:, 1:2])


def laplace_target_heatmaps(keypoints, bbox_cs, sigmas, areas, x_bins, y_bins):
    """Stock ``DCC.generate_target_heatmap``: t = exp(-|g - b| / sqrt(A)' / s' / 2) / s'."""
    bins_x, bins_y = axis_bins(bbox_cs, x_bins, y_bins)
    dist_x = torch.abs(keypoints[..., 0:1] - bins_x.unsqueeze(1))
    dist_y = torch.abs(keypoints[..., 1:2] - bins_y.unsqueeze(1))
    area_scale = areas.pow(0.5).clip(min=1).reshape(-1, 1, 1)
    sigma = sigmas.clip(min=SIGMA_MIN).unsqueeze(2)
    dist_x = dist_x / area_scale / sigma
    dist_y = dist_y / area_scale / sigma
    return torch.exp(-dist_x / 2) / sigma, torch.exp(-dist_y / 2) / sigma


def stock_mlecc_elementwise(outputs, targets, mode="log"):
    """Stock ``MLECCLoss`` before weighting and reduction: product over axes, NaNs set to 0."""
    prob = 1.0
    for output, target in zip(outputs, targets):
        prob = prob * (output * target).sum(dim=-1)
    if mode == "linear":
        loss = 1.0 - prob
    elif mode == "square":
        loss = 1.0 - prob.pow(2)
    else:
        loss = -torch.log(prob + STOCK_FLOOR)
    return torch.where(torch.isnan(loss), torch.zeros_like(loss), loss)


def stock_loss_from_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight=None,
                           x_bins=None, y_bins=None):
    """RTMO's stock graph per keypoint, with the arguments of ``mlecc_loss_from_logits``: DCC
    softmax, Laplace target heatmaps (materialised) and ``MLECCLoss(mode='log')``, weighted."""
    x_bins = base_bins(logits_x.shape[-1], logits_x) if x_bins is None else x_bins
    y_bins = base_bins(logits_y.shape[-1], logits_y) if y_bins is None else y_bins
    probs = dcc_softmax(logits_x, logits_y)
    targets = laplace_target_heatmaps(keypoints, bbox_cs, sigmas, areas, x_bins, y_bins)
    loss = stock_mlecc_elementwise(probs, targets)
    return loss if weight is None else loss * weight


def reduce_mlecc(loss, target_weight, use_target_weight, reduction, loss_weight):
    """``MLECCLoss``'s weighting and reduction: 'sum'/'mean' over all but the first dim."""
    if use_target_weight:
        assert target_weight is not None, "use_target_weight=True needs target_weight"
        while target_weight.ndim < loss.ndim:
            target_weight = target_weight.unsqueeze(-1)
        loss = loss * target_weight
    if reduction == "sum":
        loss = loss.flatten(1).sum(dim=1)
    elif reduction == "mean":
        loss = loss.flatten(1).mean(dim=1)
    return loss * loss_weight


def _neg_log_likelihood(axis_log_likelihood, weight, floor):
    log_floor = math.log(floor) if floor > 0 else -math.inf
    loss = -torch.logaddexp(axis_log_likelihood, torch.full_like(axis_log_likelihood, log_floor))
    return loss if weight is None else loss * weight


def mlecc_loss_from_probs(pred_x, pred_y, target_x, target_y, weight=None, floor=STOCK_FLOOR):
    """Contract of ``fastops.mlecc_loss_from_probs``: ``-w * logaddexp(sum_a log sum_i p t, log floor)``."""
    log_likelihood = (pred_x * target_x).sum(-1).log() + (pred_y * target_y).sum(-1).log()
    return _neg_log_likelihood(log_likelihood, weight, floor)


def _axis_log_likelihood(logits, keypoint, bins, area_scale, sigma, compute_dtype):
    """log sum_i p_i t_i with log p = log_softmax (stock eps) and log t the Laplace log-density.

    The exponents -|g - b| / a' / s' / 2 are rounded in the inputs' dtype, as stock rounds them;
    the log-sum-exps run in ``compute_dtype``.
    """
    exponent = -(torch.abs(keypoint.unsqueeze(-1) - bins.unsqueeze(1)) / area_scale / sigma.unsqueeze(-1)) / 2
    logits = logits.clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP).to(compute_dtype)
    z_max = logits.max(dim=-1, keepdim=True).values.detach()
    log_softmax_denominator = z_max + torch.log((logits - z_max).exp().sum(-1, keepdim=True) + SOFTMAX_EPS)
    joint = torch.logsumexp(logits + exponent.to(compute_dtype), dim=-1)
    return joint - log_softmax_denominator.squeeze(-1) - torch.log(sigma.to(compute_dtype))


def mlecc_loss_from_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight=None,
                           floor=STOCK_FLOOR, x_bins=None, y_bins=None, compute_dtype=None):
    """Contract of ``fastops.mlecc_loss_from_logits`` in log space (no heatmap underflow).

    ``compute_dtype`` (default: the inputs' dtype) is the precision of everything after the
    Laplace exponents, e.g. float64 to evaluate float32 inputs exactly.
    """
    compute_dtype = compute_dtype or logits_x.dtype
    x_bins = base_bins(logits_x.shape[-1], logits_x) if x_bins is None else x_bins
    y_bins = base_bins(logits_y.shape[-1], logits_y) if y_bins is None else y_bins
    bins_x, bins_y = axis_bins(bbox_cs, x_bins, y_bins)
    area_scale = areas.pow(0.5).clip(min=1).reshape(-1, 1, 1)
    sigma = sigmas.clip(min=SIGMA_MIN)
    log_likelihood = (
        _axis_log_likelihood(logits_x, keypoints[..., 0], bins_x, area_scale, sigma, compute_dtype)
        + _axis_log_likelihood(logits_y, keypoints[..., 1], bins_y, area_scale, sigma, compute_dtype))
    weight = None if weight is None else weight.to(compute_dtype)
    return _neg_log_likelihood(log_likelihood, weight, floor)


def random_rtmo_case(n, seed, dtype=torch.float32, k=17, bins=(192, 256)):
    """Random RTMO-shaped keyword arguments of ``mlecc_loss_from_logits`` (tests, benches):
    padded bbox (center, scale), keypoints inside the box, sigmas log-uniform in [1e-3, 0.1],
    visibility weights, and logits with a peak near the keypoint (as a trained DCC has)."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * 300 + 20
    centers = torch.rand(n, 2, generator=g) * 600 + 20
    bbox_cs = torch.cat([centers, wh * 1.25], 1)
    keypoints = centers[:, None] + (torch.rand(n, k, 2, generator=g) - 0.5) * wh[:, None]
    sigmas = 10 ** (torch.rand(n, k, generator=g) * 2 - 3)
    areas = wh.prod(1)
    x_bins, y_bins = (torch.linspace(-0.5, 0.5, w) for w in bins)
    bins_x, bins_y = axis_bins(bbox_cs, x_bins, y_bins)
    logits = []
    for axis, bin_positions in ((0, bins_x), (1, bins_y)):
        offset = (bin_positions[:, None, :] - keypoints[..., axis:axis + 1]) / (0.05 * wh[:, None, axis:axis + 1])
        noise = torch.randn(n, k, bin_positions.shape[-1], generator=g) * 2
        logits.append(noise + 8 * torch.exp(-offset ** 2))
    weight = (torch.rand(n, k, generator=g) > 0.2).float()
    case = dict(logits_x=logits[0], logits_y=logits[1], keypoints=keypoints, bbox_cs=bbox_cs,
                sigmas=sigmas, areas=areas, weight=weight)
    return {name: t.to(dtype) for name, t in case.items()}

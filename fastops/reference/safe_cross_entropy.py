"""Pure-PyTorch reference of the safe cross-entropy ops: clamp in fp32, then torch's own losses.

Used by the tests and as the fallback on devices without a compiled fastops kernel.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class _StraightThroughClamp(torch.autograd.Function):
    """clamp forward (NaN kept), identity backward."""

    @staticmethod
    def forward(ctx, x, bound):
        return x.clamp(-bound, bound)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def clamp_logits(logits: Tensor, clamp: float, clamp_grad: str) -> Tensor:
    x = logits.double() if logits.dtype == torch.float64 else logits.float()
    return _StraightThroughClamp.apply(x, clamp) if clamp_grad == "straight_through" else x.clamp(-clamp, clamp)


def clamp_counts(logits: Tensor, clamp: float):
    x = logits.float()
    return ((x > clamp) | (x < -clamp)).sum(), torch.isnan(x).sum()


def safe_cross_entropy(logits: Tensor, labels: Tensor, class_weight: Optional[Tensor] = None,
                       ignore_index: int = -100, clamp: float = 100.0, clamp_grad: str = "zero"):
    x = clamp_logits(logits, clamp, clamp_grad)
    weight = None if class_weight is None else class_weight.to(x.dtype)
    loss = F.cross_entropy(x, labels, weight=weight, ignore_index=ignore_index, reduction="none")
    return (loss, *clamp_counts(logits, clamp))


def safe_sigmoid_cross_entropy(logits: Tensor, targets: Tensor, pos_weight: Optional[Tensor] = None,
                               ignore_index: int = -100, clamp: float = 100.0, clamp_grad: str = "zero"):
    x = clamp_logits(logits, clamp, clamp_grad)
    if targets.dtype == torch.int64:
        valid = (targets != ignore_index).to(x.dtype)[:, None].expand_as(x)
        one_hot = F.one_hot(targets.clamp(0, x.shape[1]), x.shape[1] + 1)[:, : x.shape[1]]
        targets = one_hot.to(x.dtype)
    else:  # mmdet's valid mask; ignored elements are 0 even where the loss is NaN
        targets = targets.to(x.dtype)
        ignored = (targets < 0) | (targets == ignore_index)
        valid = (~ignored).to(x.dtype)
        targets = targets.masked_fill(ignored, 0)
        x = x.masked_fill(ignored, 0)
    pos_weight = None if pos_weight is None else pos_weight.to(x.dtype)
    loss = F.binary_cross_entropy_with_logits(x, targets, pos_weight=pos_weight, reduction="none")
    return (loss * valid, *clamp_counts(logits, clamp))

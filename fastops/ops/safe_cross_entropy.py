"""FP16-safe fused clamp + cross-entropy (softmax and sigmoid), ``torch.ops.fastops.safe_*``.

Logits of any float dtype (fp16/bf16 read directly, possibly holding ±inf from an fp16 overflow) are
clamped to ``[-clamp, clamp]`` and the loss is computed in fp32 (fp64 for fp64 logits), in one pass
over the logits forward and one write of the gradient backward, in the logits' dtype.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

import fastops
from fastops.ops._dispatch import check_same_device, has_kernel, is_compiling
from fastops.reference import safe_cross_entropy as reference

CLAMP_GRAD_MODES = ("zero", "straight_through")


class SafeCrossEntropyResult(NamedTuple):
    loss: Tensor  # per row [N] (softmax) or per element [N, C] (sigmoid), fp32
    num_clamped: Tensor  # int64 scalar: logits changed by the clamp, ±inf included
    num_nan: Tensor  # int64 scalar: NaN logits (their rows' losses are NaN)


def _straight_through(clamp_grad: str) -> bool:
    if clamp_grad not in CLAMP_GRAD_MODES:
        raise ValueError(f"clamp_grad must be one of {CLAMP_GRAD_MODES}, got {clamp_grad!r}")
    return clamp_grad == "straight_through"


def _check_clamp(op: str, clamp: float, logits: Tensor) -> None:
    """The op's own check (csrc/ops/safe_cross_entropy.cpp), for the reference fallback."""
    dtype = _loss_dtype(logits)
    if not 0 < clamp <= torch.finfo(dtype).max:
        raise RuntimeError(f"{op}: clamp must be a finite positive number representable in {dtype} "
                           f"(at most {torch.finfo(dtype).max}), got {clamp}")


def _debug_checks(op: str, logits: Tensor, labels: Optional[Tensor], num_classes: int, ignore_index: int) -> None:
    """Debug mode only (host syncs): the CPU kernel's label error on every device, then NaN logits."""
    if labels is not None and labels.dtype == torch.int64:
        bad = ((labels != ignore_index) & ((labels < 0) | (labels >= num_classes))).nonzero()
        if len(bad):
            row = int(bad[0, 0])
            raise RuntimeError(f"{op}: labels[{row}] = {int(labels[row])} is out of range [0, {num_classes}) "
                               f"and is not ignore_index ({ignore_index})")
    num_nan = int(torch.isnan(logits).sum())
    if num_nan:
        raise FloatingPointError(f"{op}: logits has {num_nan} NaN values (fastops debug mode)")


def safe_cross_entropy(logits: Tensor, labels: Tensor, class_weight: Optional[Tensor] = None,
                       ignore_index: int = -100, clamp: float = 100.0,
                       clamp_grad: str = "zero") -> SafeCrossEntropyResult:
    """Softmax cross-entropy of clamped logits, per row, without reduction.

    ``loss[i] = class_weight[y_i] · (logsumexp(x̂_i) − x̂_i[y_i])`` with ``x̂ = clamp(x, −clamp, clamp)``
    computed in fp32, and 0 where ``y_i == ignore_index`` — i.e. ``F.cross_entropy(x̂, y,
    weight=class_weight, ignore_index=ignore_index, reduction='none')``.

    Args:
        logits: ``[N, C]`` float32/float16/bfloat16/float64; ±inf allowed.
        labels: ``[N]`` int64 in ``[0, C)`` or ``ignore_index``; anything else raises.
        class_weight: optional ``[C]`` per-class weights (not differentiated).
        clamp: the bound; the default 100 keeps fp16 overflows (65504, ±inf) finite.
        clamp_grad: ``'zero'`` — no gradient to clamped logits (``torch.clamp``'s rule);
            ``'straight_through'`` — clamped logits get the gradient of their clamped value.

    Returns:
        ``(loss [N] fp32, num_clamped, num_nan)``: the counts are int64 scalars on the logits'
        device, never read back by fastops (no host sync). NaN logits make their row's loss NaN and
        are counted; in debug mode (:func:`fastops.set_debug`) they raise instead.

    Raises:
        RuntimeError: a label out of range — on CPU from the op, on CUDA as a device-side assert
            with the same message (as ``F.cross_entropy``; the error surfaces at the next
            synchronisation); in debug mode on every device before the kernel runs.
        RuntimeError: ``clamp`` not finite and positive. ValueError: ``clamp_grad`` unknown.
    """
    straight_through = _straight_through(clamp_grad)
    check_same_device("safe_cross_entropy", "logits", logits, labels=labels, class_weight=class_weight)
    if fastops.debug_enabled() and not is_compiling():
        _debug_checks("safe_cross_entropy", logits, labels, logits.shape[-1], ignore_index)
    if not has_kernel(logits.device):
        _check_clamp("safe_cross_entropy", clamp, logits)
        return SafeCrossEntropyResult(*reference.safe_cross_entropy(logits, labels, class_weight, ignore_index,
                                                                    clamp, clamp_grad))
    loss, _, stats = torch.ops.fastops.safe_cross_entropy(
        logits, labels, class_weight, ignore_index, clamp, straight_through)
    return SafeCrossEntropyResult(loss, stats[0], stats[1])


def safe_sigmoid_cross_entropy(logits: Tensor, targets: Tensor, pos_weight: Optional[Tensor] = None,
                               ignore_index: int = -100, clamp: float = 100.0,
                               clamp_grad: str = "zero") -> SafeCrossEntropyResult:
    """Element-wise BCE-with-logits of clamped logits (``F.binary_cross_entropy_with_logits``).

    Args:
        logits: ``[N, C]`` float32/float16/bfloat16/float64; ±inf allowed.
        targets: either ``[N]`` int64 class indices in ``[0, C]`` (``C`` = background, an all-zero
            row; rows equal to ``ignore_index`` give zero loss and gradient) — the one-hot target is
            never materialised — or ``[N, C]`` float probabilities (not differentiated), where an
            element whose target is below 0 or equals ``ignore_index`` is ignored (zero loss and
            gradient: mmdet's valid mask, without its ``[N, C]`` mask tensor).
        pos_weight: optional ``[C]`` weight of the positive term, as in torch.
        clamp, clamp_grad: as in :func:`safe_cross_entropy`.

    Returns:
        ``(loss [N, C] fp32, num_clamped, num_nan)``.
    """
    straight_through = _straight_through(clamp_grad)
    check_same_device("safe_sigmoid_cross_entropy", "logits", logits, targets=targets, pos_weight=pos_weight)
    if fastops.debug_enabled() and not is_compiling():
        _debug_checks("safe_sigmoid_cross_entropy", logits, targets, logits.shape[-1] + 1, ignore_index)
    if not has_kernel(logits.device):
        _check_clamp("safe_sigmoid_cross_entropy", clamp, logits)
        return SafeCrossEntropyResult(*reference.safe_sigmoid_cross_entropy(logits, targets, pos_weight,
                                                                            ignore_index, clamp, clamp_grad))
    loss, stats = torch.ops.fastops.safe_sigmoid_cross_entropy(
        logits, targets, pos_weight, ignore_index, clamp, straight_through)
    return SafeCrossEntropyResult(loss, stats[0], stats[1])


def _loss_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastops::safe_cross_entropy")
def _(logits, labels, class_weight, ignore_index, clamp, straight_through):
    loss = logits.new_empty(logits.shape[:1], dtype=_loss_dtype(logits))
    return loss, torch.empty_like(loss), logits.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("fastops::safe_cross_entropy_backward")
def _(grad_loss, logits, labels, class_weight, lse, stats, ignore_index, clamp, straight_through):
    return logits.new_empty(logits.shape)  # contiguous, as the kernels return it


@torch.library.register_fake("fastops::safe_sigmoid_cross_entropy")
def _(logits, targets, pos_weight, ignore_index, clamp, straight_through):
    return logits.new_empty(logits.shape, dtype=_loss_dtype(logits)), logits.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("fastops::safe_sigmoid_cross_entropy_backward")
def _(grad_loss, logits, targets, pos_weight, ignore_index, clamp, straight_through):
    return logits.new_empty(logits.shape)


# Autograd of both ops: csrc/ops/safe_cross_entropy.cpp (C++, for the per-call cost on small N).

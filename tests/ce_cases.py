"""Cross-entropy inputs that take every path of the CPU kernels, shared by the accuracy tests and
the instruction-set test (tests/test_cpu_isa.py runs them under each ISA cap).

Softmax: rows go 16 at a time through a transposed tile when C <= 256, the rows after the last
full tile and tiles holding a logit to clamp or a NaN take the per-row path, as does every row
when C > 256; the backward of a batch with nothing clamped and no NaN takes an unmasked path
(clean_softmax_case). Sigmoid: blocks of whole rows of max(1024, C) elements.
"""
import torch

INF, NAN = float("inf"), float("nan")
SOFTMAX_CS = (1, 2, 16, 81, 255, 256, 257, 1204)
SIGMOID_CS = (1, 2, 80, 1024, 1025)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SOFTMAX_ROWS = 16 * 7 + 7  # seven tiles and seven rows after them
SIGMOID_ROWS = 1024 + 113  # C = 1: one full block and part of another


def adversarial_logits(n, c, dtype, seed=0):
    """std-8 logits where tiles 0-3 each hold one kind of bad row (+inf and -inf, fp16's max and
    a value past the clamp, a NaN, an all -inf row), tiles 4-6 are clean, and the last rows
    repeat the bad ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g) * 8
    for tile_row in (1, n - 6):
        x[tile_row, 0], x[tile_row, c - 1] = INF, -INF
    for tile_row in (17, n - 5):
        x[tile_row, 0], x[tile_row, c // 2] = 65504.0, 150.0
    for tile_row in (33, n - 4):
        x[tile_row, c // 2] = NAN
    for tile_row in (50, n - 3):
        x[tile_row] = -INF
    return x.to(dtype)


def softmax_case(c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, c, (SOFTMAX_ROWS,), generator=g)
    labels[::9] = -100
    return adversarial_logits(SOFTMAX_ROWS, c, dtype, seed), labels


def clean_softmax_case(c, dtype, seed=0):
    """std-8 logits with nothing to clamp, labels with ignored rows."""
    g = torch.Generator().manual_seed(seed + 3)
    labels = torch.randint(0, c, (SOFTMAX_ROWS,), generator=g)
    labels[::9] = -100
    return (torch.randn(SOFTMAX_ROWS, c, generator=g) * 8).to(dtype), labels


def sigmoid_case(c, dtype, seed=0):
    """(logits, class-index targets in [0, C] with ignored rows, float targets with ignored
    elements, pos_weight)."""
    n = SIGMOID_ROWS if c <= 2 else 160
    g = torch.Generator().manual_seed(seed + 2)
    labels = torch.randint(0, c + 1, (n,), generator=g)
    labels[::7] = -100
    probs = torch.rand(n, c, generator=g)
    probs[::5, 0] = -1.0  # ignored, as negative float targets are (mmdet's valid mask)
    return adversarial_logits(n, c, dtype, seed), labels, probs, torch.rand(c, generator=g) + 0.5

"""Forward+backward of cross-entropy on N×C logits: fastops vs mmdet CrossEntropyLoss vs torch.

    pytest bench/bench_safe_cross_entropy.py --benchmark-only --benchmark-json=bench/ce.json
"""
import pytest
import torch
import torch.nn.functional as F

import fastops

SHAPES = [(4096, 81), (65536, 81), (8192, 1204)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def make_inputs(n, c, dtype, device):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, c, generator=gen) * 4).to(dtype).to(device).requires_grad_()
    labels = torch.randint(0, c, (n,), generator=gen).to(device)
    return logits, labels


def fastops_step(logits, labels):
    loss, _, _ = fastops.safe_cross_entropy(logits, labels)
    loss.mean().backward()


def torch_step(logits, labels):
    F.cross_entropy(logits.float(), labels).backward()


def mmdet_step_factory():
    from mmdet.models.losses import CrossEntropyLoss

    loss_module = CrossEntropyLoss()

    def step(logits, labels):  # mmdet's fp16 path: upcast, then CE (as AmpOptimWrapper leaves it)
        loss_module(logits.float(), labels).backward()

    return step


IMPLS = {"fastops": lambda: fastops_step, "torch": lambda: torch_step, "mmdet": mmdet_step_factory}


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_cross_entropy_fwd_bwd(measure, benchmark, impl, shape, dtype, device):
    if impl == "mmdet":
        pytest.importorskip("mmdet")
    benchmark.group = f"safe_cross_entropy {shape[0]}x{shape[1]} {dtype} {device}"
    benchmark.extra_info.update(op="safe_cross_entropy", impl=impl, series=f"{impl} {dtype} {device}",
                                size=shape[0] * shape[1], size_label="N·C",
                                bytes=bytes_moved(shape, DTYPES[dtype]))
    logits, labels = make_inputs(*shape, DTYPES[dtype], device)
    step = IMPLS[impl]()

    def run():
        logits.grad = None
        step(logits, labels)

    measure(run, torch.device(device), **rounds_for(shape))


def bytes_moved(shape, dtype):
    """Minimum traffic of a fused fwd+bwd: read logits twice, write the gradient once, plus labels."""
    n, c = shape
    element = torch.empty((), dtype=dtype).element_size()
    return 3 * n * c * element + n * 8


# Sigmoid (BCE-with-logits) at the shapes of its users, reduction 'sum', float targets in [0, 1]:
# YOLOX's loss_cls / loss_obj (8 images x 8400 priors, C=80 and C=1) and RPN's objectness
# (2 images x ~200k anchors, C=1). Each impl is the mmdet module as a user builds it.
SIGMOID_SHAPES = [(67200, 80), (67200, 1), (400000, 1)]


def sigmoid_step_factory(impl):
    if impl == "torch":
        return lambda logits, targets: F.binary_cross_entropy_with_logits(
            logits.float(), targets, reduction="sum").backward()
    import fastops.mm  # noqa: F401  (registers SafeCrossEntropyLoss)
    from mmdet.registry import MODELS

    loss_type = "SafeCrossEntropyLoss" if impl == "fastops" else "CrossEntropyLoss"
    loss_module = MODELS.build(dict(type=loss_type, use_sigmoid=True, reduction="sum"))
    cast = (lambda x: x) if impl == "fastops" else (lambda x: x.float())  # mmdet's fp16 path upcasts
    return lambda logits, targets: loss_module(cast(logits), targets).backward()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SIGMOID_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", ["fastops", "torch", "mmdet"])
def test_sigmoid_cross_entropy_fwd_bwd(measure, benchmark, impl, shape, dtype):
    pytest.importorskip("mmdet")
    benchmark.group = f"safe_sigmoid_cross_entropy {shape[0]}x{shape[1]} {dtype} cpu"
    benchmark.extra_info.update(op="safe_sigmoid_cross_entropy", impl=impl, series=f"{impl} {dtype} cpu",
                                size=shape[0] * shape[1], size_label="N·C",
                                bytes=bytes_moved(shape, DTYPES[dtype]) + shape[0] * shape[1] * 4)
    logits, _ = make_inputs(*shape, DTYPES[dtype], "cpu")
    targets = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    step = sigmoid_step_factory(impl)

    def run():
        logits.grad = None
        step(logits, targets)

    measure(run, **rounds_for(shape))


def rounds_for(shape):
    """Steps under a millisecond get 200 rounds after 10 warm-up ones, so that their medians hold
    still to a few percent on this machine (30 rounds moved them by up to 30% from run to run)."""
    return dict(rounds=10, warmup_rounds=1) if shape[0] * shape[1] > 1e6 else dict(rounds=200, warmup_rounds=10)


def test_copy_bandwidth(measure, benchmark):
    """This machine's copy bandwidth, timed as the rows above: a row's bound is its bytes over it."""
    src = torch.ones(64 * 2**20)  # 256 MiB, far past the caches
    dst = torch.empty_like(src)
    benchmark.group = "copy bandwidth cpu"
    benchmark.extra_info.update(op="copy", impl="tensor.copy_", bytes=2 * src.nbytes)  # read + write
    measure(lambda: dst.copy_(src), rounds=10)

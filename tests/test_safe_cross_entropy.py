"""safe_cross_entropy / safe_sigmoid_cross_entropy against plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F

import fastops
from fastops.reference import safe_cross_entropy as reference
from conftest import CUDA, requires_cuda

INF = float("inf")
TOL = dict(atol=1e-6, rtol=1e-6)


def random_case(n=257, c=81, dtype=torch.float32, scale=4.0, device="cpu"):
    logits = (torch.randn(n, c) * scale).to(dtype).to(device)
    labels = torch.randint(0, c, (n,), device=device)
    return logits, labels


def fp16_overflow_logits(n=64, c=81):
    """fp16 logits as an fp16 forward leaves them: 65504, +inf and -inf among normal values."""
    logits = (torch.randn(n, c) * 8).half()
    logits[0, 0], logits[1, 5], logits[2, 7], logits[3, 3] = 65504, INF, -INF, -65504
    logits[4, :] = INF
    return logits


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("c", [1, 7, 81, 1204])
def test_softmax_matches_torch_fp32(weighted, ignore_index, c):
    logits, labels = random_case(c=c)
    labels[::5] = ignore_index if ignore_index >= c or ignore_index < 0 else labels[::5]
    class_weight = torch.rand(c) + 0.5 if weighted else None
    x = logits.clone().requires_grad_()
    loss, num_clamped, num_nan = fastops.safe_cross_entropy(x, labels, class_weight, ignore_index)
    x_ref = logits.clone().requires_grad_()
    expected = F.cross_entropy(x_ref, labels, weight=class_weight, ignore_index=ignore_index, reduction="none")
    torch.testing.assert_close(loss, expected, **TOL)
    grad_out = torch.rand_like(expected)
    # With many classes lse is large (~15 here) and its fp32 ulp (~2e-6) bounds any agreement.
    grad_tol = TOL if c <= 81 else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(loss, x, grad_out)[0],
                               torch.autograd.grad(expected, x_ref, grad_out)[0], **grad_tol)
    assert num_clamped.item() == 0 and num_nan.item() == 0


@pytest.mark.parametrize("pos_weighted", [False, True])
@pytest.mark.parametrize("index_targets", [False, True])
def test_sigmoid_matches_torch_fp32(pos_weighted, index_targets):
    n, c = 300, 80
    logits = torch.randn(n, c) * 4
    labels = torch.randint(0, c + 1, (n,))  # c = background
    labels[::7] = -100
    valid = (labels != -100).float()[:, None]
    one_hot = F.one_hot(labels.clamp(min=0), c + 1)[:, :c].float()
    targets = labels if index_targets else torch.rand(n, c)
    dense = one_hot if index_targets else targets
    pos_weight = torch.rand(c) + 0.5 if pos_weighted else None
    x = logits.clone().requires_grad_()
    loss, _, _ = fastops.safe_sigmoid_cross_entropy(x, targets, pos_weight)
    x_ref = logits.clone().requires_grad_()
    expected = F.binary_cross_entropy_with_logits(x_ref, dense, pos_weight=pos_weight, reduction="none")
    if index_targets:
        expected = expected * valid
    torch.testing.assert_close(loss, expected, **TOL)
    grad_out = torch.rand_like(expected)
    torch.testing.assert_close(torch.autograd.grad(loss, x, grad_out)[0],
                               torch.autograd.grad(expected, x_ref, grad_out)[0], **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_equal_clamped_fp32(dtype):
    logits = fp16_overflow_logits().to(dtype)
    labels = torch.randint(0, logits.shape[1], (logits.shape[0],))
    x = logits.clone().requires_grad_()
    loss, num_clamped, num_nan = fastops.safe_cross_entropy(x, labels, clamp=100.0)
    assert torch.isfinite(loss).all()
    clamped_ref = logits.float().clamp(-100, 100).requires_grad_()
    expected = F.cross_entropy(clamped_ref, labels, reduction="none")
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-6)
    expected_count = (logits.float().abs() > 100).sum()
    assert num_clamped.item() == expected_count.item() >= 4 + logits.shape[1]
    assert num_nan.item() == 0
    grad = torch.autograd.grad(loss.sum(), x)[0]
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    ref_grad = torch.autograd.grad(expected.sum(), clamped_ref)[0] * (logits.float().abs() <= 100)
    torch.testing.assert_close(grad.float(), ref_grad, atol=1e-2 if dtype == torch.bfloat16 else 1e-3, rtol=1e-2)


def test_stock_upcast_fails_where_fastops_is_finite():
    logits = fp16_overflow_logits()
    labels = torch.randint(0, logits.shape[1], (logits.shape[0],))
    stock = F.cross_entropy(logits.float(), labels, reduction="none")
    assert not torch.isfinite(stock).all()
    loss, num_clamped, _ = fastops.safe_cross_entropy(logits, labels)
    assert torch.isfinite(loss).all()
    assert num_clamped.item() == int((logits.float().abs() > 100).sum())


def test_num_clamped_counts_inf_and_nan_separately():
    logits = torch.zeros(3, 4)
    logits[0, 0], logits[0, 1], logits[1, 2], logits[2, 3] = INF, -INF, 150.0, float("nan")
    loss, num_clamped, num_nan = fastops.safe_cross_entropy(logits, torch.tensor([0, 1, 2]), clamp=100)
    assert num_clamped.item() == 3 and num_nan.item() == 1
    assert torch.isfinite(loss[:2]).all() and torch.isnan(loss[2])  # NaN is never hidden


def test_nan_raises_in_debug_mode():
    logits = torch.zeros(2, 4)
    logits[1, 1] = float("nan")
    fastops.set_debug(True)
    with pytest.raises(FloatingPointError, match="NaN"):
        fastops.safe_cross_entropy(logits, torch.tensor([0, 1]))


def test_straight_through_passes_gradient_to_clamped_logits():
    logits = torch.tensor([[200.0, 0.0, -INF]], requires_grad=True)
    labels = torch.tensor([1])
    zero = torch.autograd.grad(fastops.safe_cross_entropy(logits, labels)[0].sum(), logits)[0]
    through = torch.autograd.grad(
        fastops.safe_cross_entropy(logits, labels, clamp_grad="straight_through")[0].sum(), logits)[0]
    assert zero[0, 0] == 0 and zero[0, 2] == 0
    expected = torch.softmax(torch.tensor([[100.0, 0.0, -100.0]]), 1) - torch.tensor([[0.0, 1.0, 0.0]])
    torch.testing.assert_close(through, expected)
    with pytest.raises(ValueError, match="clamp_grad"):
        fastops.safe_cross_entropy(logits, labels, clamp_grad="sometimes")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(4, 3), torch.tensor([0, 1, 3, 0])), r"labels\[2\] = 3 is out of range"),
        (lambda: (torch.randn(4, 3), torch.tensor([0, -1, 0, 0])), r"labels\[1\] = -1"),
        (lambda: (torch.randn(4, 3), torch.tensor([0, 1, 2, 0], dtype=torch.int32)), "labels must be int64"),
        (lambda: (torch.randn(4, 3, 2), torch.tensor([0, 1, 2, 0])), "logits must be 2-D"),
        (lambda: (torch.randint(0, 3, (4, 3)), torch.tensor([0, 1, 2, 0])), "logits must be float"),
        (lambda: (torch.randn(4, 3), torch.tensor([0, 1, 2])), "labels has N=3 but logits has N=4"),
    ],
)
def test_bad_input_names_the_argument(make, match):
    logits, labels = make()
    with pytest.raises(RuntimeError, match=match):
        fastops.safe_cross_entropy(logits, labels)


def test_bad_class_weight_and_sigmoid_targets():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(RuntimeError, match=r"class_weight must have shape \[C\] = \[3\]"):
        fastops.safe_cross_entropy(logits, labels, torch.ones(4))
    with pytest.raises(RuntimeError, match=r"labels\[0\] = 4"):
        fastops.safe_sigmoid_cross_entropy(logits, torch.tensor([4, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="float targets must have the logits' shape"):
        fastops.safe_sigmoid_cross_entropy(logits, torch.rand(4, 2))


@requires_cuda
def test_mixed_devices_are_rejected():
    with pytest.raises(ValueError, match="labels is on cpu"):
        fastops.safe_cross_entropy(torch.randn(2, 3, device="cuda"), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="labels is on cpu"):  # the op's own check
        torch.ops.fastops.safe_cross_entropy(torch.randn(2, 3, device="cuda"), torch.tensor([0, 1]),
                                             None, -100, 100.0, False)


def test_device_mismatch_is_rejected():
    with pytest.raises(ValueError, match="labels is on meta but logits is on cpu"):
        fastops.safe_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1], device="meta"))
    with pytest.raises(ValueError, match="pos_weight is on meta"):
        fastops.safe_sigmoid_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), torch.ones(3, device="meta"))


def test_empty_input():
    logits = torch.empty(0, 5, requires_grad=True)
    loss, num_clamped, num_nan = fastops.safe_cross_entropy(logits, torch.empty(0, dtype=torch.long))
    assert loss.shape == (0,) and num_clamped.item() == 0 and num_nan.item() == 0
    assert loss.sum().item() == 0
    assert torch.autograd.grad(loss.sum(), logits)[0].shape == (0, 5)
    bce, _, _ = fastops.safe_sigmoid_cross_entropy(torch.empty(0, 5), torch.empty(0, dtype=torch.long))
    assert bce.shape == (0, 5)


def test_gradcheck_float64():
    logits = (torch.randn(6, 5, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.tensor([0, 4, 2, -100, 1, 3])
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda x: fastops.safe_cross_entropy(x, labels, weight, clamp=5.0)[0], (logits,))
    assert torch.autograd.gradcheck(
        lambda x: fastops.safe_sigmoid_cross_entropy(x, torch.tensor([0, 5, 2, -100, 1, 3]), weight, clamp=5.0)[0],
        (logits,))


def test_opcheck():
    logits, labels = random_case(n=16, c=9)
    logits[0, 0] = 500.0
    weight = torch.rand(9)
    for dtype in (torch.float32, torch.float16, torch.float64):
        x = logits.to(dtype).requires_grad_()
        torch.library.opcheck(torch.ops.fastops.safe_cross_entropy, (x, labels, weight, -100, 100.0, False))
        torch.library.opcheck(torch.ops.fastops.safe_sigmoid_cross_entropy, (x, labels, weight, -100, 100.0, True))
        torch.library.opcheck(torch.ops.fastops.safe_sigmoid_cross_entropy,
                              (x, torch.rand(16, 9, dtype=dtype), None, -100, 100.0, False))


def test_torch_compile_fullgraph():
    logits, labels = random_case(n=32, c=11)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def mean_loss(x, y):
        loss, num_clamped, _ = fastops.safe_cross_entropy(x, y)
        return loss.mean(), num_clamped

    x = logits.clone().requires_grad_()
    loss, _ = mean_loss(x, labels)
    loss.backward()
    x_ref = logits.clone().requires_grad_()
    F.cross_entropy(x_ref, labels).backward()
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels), **TOL)
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)


def test_reference_agrees_with_op():
    logits = fp16_overflow_logits()
    labels = torch.randint(0, logits.shape[1], (logits.shape[0],))
    for mode in ("zero", "straight_through"):
        x, x_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        got = fastops.safe_cross_entropy(x, labels, clamp_grad=mode)
        want = reference.safe_cross_entropy(x_ref, labels, clamp_grad=mode)
        torch.testing.assert_close(got.loss, want[0], atol=1e-5, rtol=1e-6)
        assert got.num_clamped == want[1]
        torch.testing.assert_close(torch.autograd.grad(got.loss.sum(), x)[0],
                                   torch.autograd.grad(want[0].sum(), x_ref)[0], atol=1e-3, rtol=1e-3)


def test_cuda_kernel_registered_when_built():
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("fastops::safe_cross_entropy", "CUDA")
    assert has_cuda_kernel == fastops.cuda_built()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastops::safe_cross_entropy", "CPU")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c", [81, 1204])
def test_cuda_matches_cpu(dtype, c):
    logits = fp16_overflow_logits(n=513, c=c).to(dtype)
    labels = torch.randint(0, c, (513,))
    labels[::9] = -100
    weight = torch.rand(c) + 0.5
    for fn, tgt in ((fastops.safe_cross_entropy, labels), (fastops.safe_sigmoid_cross_entropy, labels.clamp(max=c))):
        x_cpu, x_gpu = logits.clone().requires_grad_(), logits.cuda().requires_grad_()
        cpu, gpu = fn(x_cpu, tgt, weight), fn(x_gpu, tgt.cuda(), weight.cuda())
        torch.testing.assert_close(gpu.loss.cpu(), cpu.loss, atol=1e-4, rtol=1e-5)
        assert gpu.num_clamped.item() == cpu.num_clamped.item()
        g = torch.rand_like(cpu.loss)
        torch.testing.assert_close(torch.autograd.grad(gpu.loss, x_gpu, g.cuda())[0].cpu().float(),
                                   torch.autograd.grad(cpu.loss, x_cpu, g)[0].float(), atol=2e-3, rtol=1e-2)


@requires_cuda
def test_cuda_invalid_label_raises():
    with pytest.raises(ValueError, match="out of range"):
        fastops.safe_cross_entropy(torch.randn(3, 4, device="cuda"), torch.tensor([0, 9, 1], device="cuda"))

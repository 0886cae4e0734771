"""safe_cross_entropy / safe_sigmoid_cross_entropy against plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F

import fastops
from fastops.reference import safe_cross_entropy as reference
import ce_cases
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


def grad_of(loss, x, grad_out):
    return torch.autograd.grad(loss, x, grad_out)[0]


# Gradients of fp32 logits: the clamped logits reach ±100 here, where the fp32 ulp of lse (7.6e-6)
# times a probability near 1 bounds any agreement. fp16/bf16 gradients: the reference's, rounded.
GRAD_TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=1e-5, rtol=1e-3),
            torch.bfloat16: dict(atol=1e-5, rtol=1.6e-2)}


@pytest.mark.parametrize("clamp_grad", ["zero", "straight_through"])
@pytest.mark.parametrize("dtype", ce_cases.DTYPES, ids=str)
@pytest.mark.parametrize("c", ce_cases.SOFTMAX_CS)
def test_softmax_kernel_paths_match_reference(c, dtype, clamp_grad):
    """Tiled and per-row rows, clean and adversarial, around the tile limit (C = 256)."""
    logits, labels = ce_cases.softmax_case(c, dtype)
    x, x_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = fastops.safe_cross_entropy(x, labels, clamp_grad=clamp_grad)
    want = reference.safe_cross_entropy(x_ref, labels, clamp_grad=clamp_grad)
    torch.testing.assert_close(got.loss, want[0], atol=1e-5, rtol=1e-6, equal_nan=True)
    assert (got.num_clamped.item(), got.num_nan.item()) == (want[1].item(), want[2].item())
    assert torch.isnan(got.loss).sum() == 2 and torch.isfinite(got.loss[~torch.isnan(got.loss)]).all()
    grad_out = torch.rand_like(want[0])
    torch.testing.assert_close(grad_of(got.loss, x, grad_out), grad_of(want[0], x_ref, grad_out).to(dtype),
                               equal_nan=True, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", ce_cases.DTYPES + (torch.float64,), ids=str)
@pytest.mark.parametrize("c", ce_cases.SOFTMAX_CS)
def test_clean_batch_backward_is_the_masked_one(c, dtype):
    """A batch with nothing clamped and no NaN (stats (0, 0)) takes the CPU backward's unmasked
    path: the same bits as the masked path, which stats (1, 0) select, and the reference's values."""
    logits, labels = ce_cases.clean_softmax_case(c, dtype)
    weight = torch.rand(c, generator=torch.Generator().manual_seed(4)) + 0.5
    _, lse, stats = torch.ops.fastops.safe_cross_entropy(logits, labels, weight, -100, 100.0, False)
    assert stats.tolist() == [0, 0]
    grad_loss = torch.rand(len(labels), dtype=lse.dtype)
    for straight_through in (False, True):
        grads = [torch.ops.fastops.safe_cross_entropy_backward(grad_loss, logits, labels, weight, lse, counts, -100,
                                                               100.0, straight_through)
                 for counts in (stats, torch.tensor([1, 0]))]
        assert torch.equal(grads[0], grads[1])
    x_ref = logits.clone().requires_grad_()
    loss_ref = reference.safe_cross_entropy(x_ref, labels, weight)[0]
    want = grad_of(loss_ref, x_ref, grad_loss.to(loss_ref.dtype))
    torch.testing.assert_close(grads[0], want.to(dtype), **GRAD_TOL.get(dtype, GRAD_TOL[torch.float32]))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("index_targets", [False, True])
@pytest.mark.parametrize("dtype", ce_cases.DTYPES, ids=str)
@pytest.mark.parametrize("c", ce_cases.SIGMOID_CS)
def test_sigmoid_kernel_paths_match_reference(c, dtype, index_targets, weighted):
    """One and several rows per block, blocks split across threads, adversarial logits."""
    logits, labels, probs, pos_weight = ce_cases.sigmoid_case(c, dtype)
    targets, pos_weight = (labels if index_targets else probs), (pos_weight if weighted else None)
    for clamp_grad in ("zero", "straight_through"):
        x, x_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        got = fastops.safe_sigmoid_cross_entropy(x, targets, pos_weight, clamp_grad=clamp_grad)
        want = reference.safe_sigmoid_cross_entropy(x_ref, targets, pos_weight, clamp_grad=clamp_grad)
        torch.testing.assert_close(got.loss, want[0], atol=1e-5, rtol=1e-6, equal_nan=True)
        assert (got.num_clamped.item(), got.num_nan.item()) == (want[1].item(), want[2].item())
        grad_out = torch.rand_like(want[0])
        torch.testing.assert_close(grad_of(got.loss, x, grad_out), grad_of(want[0], x_ref, grad_out).to(dtype),
                                   equal_nan=True, **GRAD_TOL[dtype])


@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_sigmoid_float_targets_below_zero_or_ignore_index_are_ignored(ignore_index):
    """Zero loss and gradient there whatever the logit (NaN and inf included); a NaN target is not
    ignored (its loss is NaN, as torch's)."""
    logits = torch.randn(6, 3)
    logits[0, 0], logits[1, 1], logits[2, 2] = float("nan"), float("inf"), 1e4
    targets = torch.rand(6, 3)
    targets[0, 0], targets[1, 1], targets[2, 2], targets[3, 0] = -1.0, -0.5, -100.0, float(ignore_index)
    targets[4, 1] = float("nan")
    x = logits.clone().requires_grad_()
    loss = fastops.safe_sigmoid_cross_entropy(x, targets, ignore_index=ignore_index).loss
    ignored = (targets < 0) | (targets == ignore_index)
    grad = grad_of(loss, x, torch.ones_like(loss))
    assert (loss[ignored] == 0).all() and (grad[ignored] == 0).all()
    assert torch.isnan(loss[4, 1]) and torch.isfinite(loss[~ignored & ~torch.isnan(targets)]).all()
    kept = ~ignored & ~torch.isnan(targets)
    want = F.binary_cross_entropy_with_logits(logits.clamp(-100, 100), targets.nan_to_num(0), reduction="none")
    torch.testing.assert_close(loss[kept], want[kept])


@pytest.mark.parametrize("dtype", ce_cases.DTYPES, ids=str)
def test_sigmoid_backward_of_a_sum_reads_the_scalar_gradient(dtype):
    """loss.sum() / loss.mean() hand the backward one value broadcast to [N, C] (stride 0), read as
    such; the result is that of the materialised gradient, and of a row-broadcast one."""
    logits, labels, probs, _ = ce_cases.sigmoid_case(80, dtype)
    backward = torch.ops.fastops.safe_sigmoid_cross_entropy_backward
    for targets in (labels, probs):
        grads = [backward(grad_out, logits, targets, None, -100, 100.0, False)
                 for grad_out in (torch.tensor(0.37).expand(logits.shape), torch.full(logits.shape, 0.37),
                                  torch.full((logits.shape[0], 1), 0.37).expand(logits.shape))]
        assert torch.equal(grads[0], grads[1]) and torch.equal(grads[2], grads[1])
        x = logits.clone().requires_grad_()
        fastops.safe_sigmoid_cross_entropy(x, targets).loss.mul(0.37).sum().backward()
        assert torch.equal(x.grad, grads[1])


def test_non_contiguous_logits():
    logits, labels = ce_cases.softmax_case(81, torch.float16)
    wide = torch.zeros(logits.shape[0], 2 * logits.shape[1], dtype=logits.dtype)
    wide[:, ::2] = logits
    for strided in (wide[:, ::2], logits.t().contiguous().t()):
        assert not strided.is_contiguous()
        x, x_ref = strided.clone().requires_grad_(), logits.clone().requires_grad_()
        for op in (fastops.safe_cross_entropy, fastops.safe_sigmoid_cross_entropy):
            got, want = op(strided, labels).loss, op(logits, labels).loss
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        x = strided.detach().requires_grad_()
        grad_out = torch.rand(logits.shape[0])
        torch.testing.assert_close(grad_of(fastops.safe_cross_entropy(x, labels).loss, x, grad_out),
                                   grad_of(fastops.safe_cross_entropy(x_ref, labels).loss, x_ref, grad_out),
                                   rtol=0, atol=0, equal_nan=True)


def test_sigmoid_loss_accuracy_over_the_float_range():
    """The vectorised exp and log1p against float64, as accurate as torch's own fp32 op: |x| up to
    1e4 and float32's max, the subnormal region of exp(-|x|), ±inf and NaN."""
    x = torch.cat([torch.linspace(-1e4, 1e4, 20001), torch.linspace(-120, 120, 24001),
                   torch.logspace(-45, 4, 5000), -torch.logspace(-45, 4, 5000),
                   torch.tensor([INF, -INF, float("nan"), 3e38, -3e38, 65504, 1e-45, -1e-45])])[:, None]
    clamp = 3e38
    for t in (0.0, 1.0, 0.3):
        targets = torch.full_like(x, t)
        xg = x.clone().requires_grad_()
        loss = fastops.safe_sigmoid_cross_entropy(xg, targets, clamp=clamp, clamp_grad="straight_through").loss
        grad = torch.autograd.grad(loss.sum(), xg)[0]
        x32 = x.clamp(-clamp, clamp).requires_grad_()
        loss32 = F.binary_cross_entropy_with_logits(x32, targets, reduction="none")
        grad32 = torch.autograd.grad(loss32.sum(), x32)[0]
        x64 = x.double().clamp(-clamp, clamp).requires_grad_()
        loss64 = F.binary_cross_entropy_with_logits(x64, targets.double(), reduction="none")
        grad64 = torch.autograd.grad(loss64.sum(), x64)[0]
        # Errors relative to the largest term, as the results cancel: |x| + loss, and sigmoid + t.
        scales = (x64.abs() + loss64.abs(), torch.sigmoid(x64) + t)
        for got, torch32, exact, scale in ((loss, loss32, loss64, scales[0]), (grad, grad32, grad64, scales[1])):
            nan = torch.isnan(exact)
            assert torch.equal(torch.isnan(got), nan)
            err, torch_err = (got.double() - exact).abs()[~nan], (torch32.double() - exact).abs()[~nan]
            # 2.5e-7: two float32 ulps; 1e-37: exp(-|x|) is 0 below float32's normal range.
            assert (err <= torch_err + 2.5e-7 * scale.detach()[~nan] + 1e-37).all(), (t, err.max())


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

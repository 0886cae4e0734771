"""Tests of fastops.mlecc_loss_from_probs / mlecc_loss_from_logits and the LogMLECCLoss drop-in."""
import math

import pytest
import torch

import fastops
from fastops.reference import mlecc_loss as ref

K = 17
BINS = (192, 256)
STOCK_FLOOR = 1e-4


rtmo_case = ref.random_rtmo_case


def with_grad(case):
    return {name: t.clone().requires_grad_(name in ("logits_x", "logits_y", "sigmas", "bbox_cs"))
            for name, t in case.items()}


GRAD_NAMES = ("logits_x", "logits_y", "sigmas", "bbox_cs")


def stock_loss(case, floor=STOCK_FLOOR):
    """Stock graph in plain torch: DCC softmax + RTMO Laplace targets + MLECCLoss (per keypoint)."""
    assert floor == STOCK_FLOOR
    x_bins, y_bins = (ref.base_bins(case[n].shape[-1], case[n]) for n in ("logits_x", "logits_y"))
    probs = ref.dcc_softmax(case["logits_x"], case["logits_y"])
    targets = ref.laplace_target_heatmaps(case["keypoints"], case["bbox_cs"], case["sigmas"],
                                          case["areas"], x_bins, y_bins)
    return ref.stock_mlecc_elementwise(probs, targets) * case["weight"]


def fused_loss(case, floor=STOCK_FLOOR):
    loss, num_invalid = fastops.mlecc_loss_from_logits(**case, floor=floor)
    assert int(num_invalid) == 0
    return loss


def grads_of(loss_fn, case, **kwargs):
    inputs = with_grad(case)
    loss = loss_fn(inputs, **kwargs)
    grads = torch.autograd.grad(loss.sum(), [inputs[name] for name in GRAD_NAMES])
    return loss.detach(), dict(zip(GRAD_NAMES, grads))


def assert_grads_close(actual, expected, rel=1e-4):
    """Each gradient within `rel` of the largest magnitude of the stock gradient (or 1)."""
    for name in GRAD_NAMES:
        scale = max(1.0, expected[name].abs().max().item())
        err = (actual[name] - expected[name]).abs().max().item()
        assert err <= rel * scale, f"{name}: max error {err} vs scale {scale}"


# --------------------------------------------------------------------------- parity with stock


@pytest.mark.parametrize("n,seed", [(1, 0), (64, 1), (512, 2), (512, 3)])
def test_from_logits_matches_stock_graph(n, seed):
    case = rtmo_case(n, seed)
    fused, fused_grads = grads_of(fused_loss, case)
    stock, stock_grads = grads_of(stock_loss, case)
    assert torch.isfinite(stock).all()
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-5)
    # The per-instance loss MLECCLoss(reduction='mean') returns.
    torch.testing.assert_close(fused.mean(1), stock.mean(1), rtol=1e-5, atol=1e-6)
    assert_grads_close(fused_grads, stock_grads)


@pytest.mark.parametrize("seed", [0, 1])
def test_from_probs_matches_stock_mlecc(seed):
    case = with_grad(rtmo_case(256, seed))
    x_bins, y_bins = (ref.base_bins(w, case["logits_x"]) for w in BINS)
    probs = ref.dcc_softmax(case["logits_x"], case["logits_y"])
    targets = ref.laplace_target_heatmaps(case["keypoints"], case["bbox_cs"], case["sigmas"],
                                          case["areas"], x_bins, y_bins)
    leaves = [*probs, *targets]
    stock = ref.stock_mlecc_elementwise(probs, targets) * case["weight"]
    fused, num_invalid = fastops.mlecc_loss_from_probs(*probs, *targets, case["weight"])
    assert int(num_invalid) == 0
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-6)
    stock_grads = torch.autograd.grad(stock.sum(), leaves)
    fused_grads = torch.autograd.grad(fused.sum(), leaves)
    for got, want in zip(fused_grads, stock_grads):
        assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())


def test_loss_is_negative_for_good_predictions():
    """Densities, not probabilities: a sharp correct prediction has likelihood > 1."""
    case = rtmo_case(8, 5)
    loss = fused_loss(case)
    assert (loss[case["weight"] > 0] < 0).any()
    torch.testing.assert_close(loss, stock_loss(case), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- where stock fails


def float64_log_space(case, floor):
    """The log-space loss in float64 of the float32 Laplace exponents (rounded as stock rounds them)."""
    detached = {name: t.detach() for name, t in case.items()}
    return ref.mlecc_loss_from_logits(**detached, floor=floor, compute_dtype=torch.float64)


def far_keypoints_case():
    """sigma = 1e-3 and keypoints 50-250 px outside the box: every stock target bin underflows."""
    case = rtmo_case(32, 7)
    case["sigmas"] = torch.full_like(case["sigmas"], 1e-3)
    g = torch.Generator().manual_seed(8)
    half = case["bbox_cs"][:, None, 2:] / 2
    outside = half + 50 + 200 * torch.rand(case["keypoints"].shape, generator=g)
    case["keypoints"] = case["bbox_cs"][:, None, :2] + outside * torch.sign(torch.randn(outside.shape, generator=g))
    return case


def extreme_logits_case():
    """Logits of magnitude 1e4 (a one-hot stock softmax) and beyond the stock clamp (1e6)."""
    case = rtmo_case(32, 9)
    g = torch.Generator().manual_seed(10)
    for name in ("logits_x", "logits_y"):
        scaled = case[name] * 1e3
        beyond = torch.rand(scaled.shape, generator=g) < 0.05
        case[name] = torch.where(beyond, torch.randn(scaled.shape, generator=g).sign() * 1e6, scaled)
    return case


@pytest.mark.parametrize("make_case", [far_keypoints_case, extreme_logits_case])
@pytest.mark.parametrize("floor", [STOCK_FLOOR, 0.0])
def test_stock_failure_cases_are_finite_and_exact(make_case, floor):
    case = make_case()
    fused, grads = grads_of(fused_loss, case, floor=floor)
    expected = float64_log_space(case, floor)
    assert torch.isfinite(fused).all() and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(fused.double(), expected, rtol=1e-6, atol=1e-6)


def test_stock_saturates_where_log_space_keeps_the_gradient():
    case = far_keypoints_case()
    stock, stock_grads = grads_of(stock_loss, case)
    # Stock: every Laplace target underflows to 0, the loss is the constant -log(1e-4) and the
    # sigma gradient vanishes.
    torch.testing.assert_close(stock, case["weight"] * -math.log(STOCK_FLOOR))
    assert (stock_grads["sigmas"] == 0).all()
    _, pure_grads = grads_of(fused_loss, case, floor=0.0)
    visible = case["weight"] > 0
    assert (pure_grads["sigmas"][visible] < 0).all()  # larger sigma explains far keypoints


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logit_gradients_below_the_smallest_normal_are_zero(dtype):
    """Bins far from the target get d loss / d z of order exp(-100): written as 0, not as a
    subnormal (which slows every GEMM reading the gradient), and the rest as computed."""
    case = {name: t.to(dtype) if t.is_floating_point() else t for name, t in rtmo_case(64, 11).items()}
    for name in ("logits_x", "logits_y"):
        case[name] = case[name] * 60  # spreads the softmax over ~100 nats
    _, grads = grads_of(fused_loss, case)
    expected = float64_log_space_grads(case)
    tiny = torch.finfo(dtype).tiny
    for name in ("logits_x", "logits_y"):
        grad = grads[name]
        assert not ((grad != 0) & (grad.abs() < tiny)).any()
        assert (expected[name].abs() < tiny).any()  # the case does reach the subnormal range
        # Where the exact gradient is subnormal, the kernel writes 0, or (float32 rounding at the
        # boundary of the exp's range, 1.6e-38) a normal value of the same order.
        subnormal_exact = expected[name].abs() < tiny
        assert (grad[subnormal_exact] == 0).float().mean() > 0.99
        assert grad[subnormal_exact].abs().max() < 4 * tiny
        rtol = 1e-3 if dtype == torch.float32 else 1e-9  # float32 logits of ~100 nats carry ~1e-5 of rounding
        torch.testing.assert_close(grad.double(), expected[name], rtol=rtol, atol=rtol * expected[name].abs().max())


def float64_log_space_grads(case):
    inputs = with_grad({name: t.double() if t.is_floating_point() else t for name, t in case.items()})
    loss = ref.mlecc_loss_from_logits(**inputs, floor=STOCK_FLOOR, compute_dtype=torch.float64)
    return dict(zip(GRAD_NAMES, torch.autograd.grad(loss.sum(), [inputs[name] for name in GRAD_NAMES])))


# --------------------------------------------------------------------------- autograd & compile


def small_case(dtype=torch.float64, seed=0, n=3, k=2, bins=(5, 6)):
    case = rtmo_case(n, seed, dtype=dtype, k=k, bins=bins)
    case["sigmas"] = case["sigmas"].clamp(min=2e-3) * 20  # stay off the sigma clip's kink
    return case


@pytest.mark.parametrize("floor", [STOCK_FLOOR, 0.0])
def test_from_logits_gradcheck(floor):
    case = with_grad(small_case())

    def loss_of(lx, ly, sigmas, bbox_cs):
        inputs = dict(case, logits_x=lx, logits_y=ly, sigmas=sigmas, bbox_cs=bbox_cs)
        return fastops.mlecc_loss_from_logits(**inputs, floor=floor)[0]

    assert torch.autograd.gradcheck(loss_of, [case[name] for name in GRAD_NAMES])


@pytest.mark.parametrize("floor", [STOCK_FLOOR, 0.0])
def test_from_probs_gradcheck(floor):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.rand(3, 2, w, generator=g, dtype=torch.float64).add(0.05).requires_grad_()
               for w in (5, 6, 5, 6)]
    weight = torch.rand(3, 2, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda *t: fastops.mlecc_loss_from_probs(*t, weight, floor)[0], tensors)


def test_opcheck_from_logits():
    case = with_grad(small_case(torch.float32))
    bins = [ref.base_bins(case[n].shape[-1], case[n]) for n in ("logits_x", "logits_y")]
    args = (*case.values(), *bins, STOCK_FLOOR)
    torch.library.opcheck(torch.ops.fastops.mlecc_loss_from_logits.default, args)
    loss, _, stats = torch.ops.fastops.mlecc_loss_from_logits(*args)
    detached = [t.detach() for t in case.values()]
    assert not stats.requires_grad
    torch.library.opcheck(torch.ops.fastops.mlecc_loss_from_logits_backward.default,
                          (torch.ones_like(loss).detach(), *detached, *bins, stats, STOCK_FLOOR))


def test_opcheck_from_probs():
    g = torch.Generator().manual_seed(1)
    tensors = [torch.rand(3, 2, w, generator=g).requires_grad_() for w in (5, 6, 5, 6)]
    weight = torch.rand(3, 2, generator=g)
    torch.library.opcheck(torch.ops.fastops.mlecc_loss_from_probs.default, (*tensors, weight, 0.0))
    torch.library.opcheck(torch.ops.fastops.mlecc_loss_from_probs_backward.default,
                          (torch.ones(3, 2), *[t.detach() for t in tensors], None, STOCK_FLOOR))


def test_torch_compile_fullgraph():
    case = rtmo_case(16, 11)
    x_bins, y_bins = (torch.linspace(-0.5, 0.5, w) for w in BINS)  # DCC's eager buffers

    def total_loss(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight):
        loss, _ = fastops.mlecc_loss_from_logits(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight,
                                                 x_bins=x_bins, y_bins=y_bins)
        return loss.mean()

    compiled = torch.compile(total_loss, fullgraph=True)
    eager_inputs, compiled_inputs = with_grad(case), with_grad(case)
    eager = total_loss(**eager_inputs)
    got = compiled(**compiled_inputs)
    torch.testing.assert_close(got, eager)
    eager.backward()
    got.backward()
    for name in GRAD_NAMES:
        torch.testing.assert_close(compiled_inputs[name].grad, eager_inputs[name].grad)


# --------------------------------------------------------------------------- invalid inputs


def test_nonfinite_rows_are_counted_not_silently_zeroed():
    case = rtmo_case(4, 12)
    clean = fused_loss(case)
    case["logits_x"][2, 5, 10] = float("nan")
    case["sigmas"][0, 1] = float("inf")
    inputs = with_grad(case)
    loss, num_invalid = fastops.mlecc_loss_from_logits(**inputs)
    assert int(num_invalid) == 2
    assert loss[2, 5] == 0 and loss[0, 1] == 0
    keep = torch.ones_like(clean, dtype=torch.bool)
    keep[2, 5] = keep[0, 1] = False
    torch.testing.assert_close(loss[keep], clean[keep])
    grads = torch.autograd.grad(loss.sum(), [inputs[name] for name in GRAD_NAMES])
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][2, 5] == 0).all() and grads[2][0, 1] == 0


def test_debug_mode_raises_with_index():
    case = rtmo_case(4, 13)
    case["logits_y"][3, 7, 0] = float("inf")
    fastops.set_debug(True)
    try:
        with pytest.raises(ValueError, match=r"logits_y .*instance 3, keypoint 7"):
            fastops.mlecc_loss_from_logits(**case)
        probs = [torch.rand(2, 3, w) for w in (4, 5, 4, 5)]
        probs[3][1, 2, 0] = -1.0
        with pytest.raises(ValueError, match=r"target_y .*instance 1, keypoint 2"):
            fastops.mlecc_loss_from_probs(*probs)
    finally:
        fastops.set_debug(False)


def test_from_probs_counts_negative_and_nonfinite():
    probs = [torch.rand(2, 3, w) for w in (4, 5, 4, 5)]
    probs[0][0, 0, 1] = float("nan")
    probs[3][1, 2, 0] = -1.0
    loss, num_invalid = fastops.mlecc_loss_from_probs(*probs)
    assert int(num_invalid) == 2 and loss[0, 0] == 0 and loss[1, 2] == 0
    assert torch.isfinite(loss).all()


def test_empty_input():
    case = with_grad(rtmo_case(0, 0))
    loss, num_invalid = fastops.mlecc_loss_from_logits(**case)
    assert loss.shape == (0, K) and int(num_invalid) == 0
    loss.sum().backward()
    assert case["logits_x"].grad.shape == case["logits_x"].shape
    assert case["bbox_cs"].grad.shape == (0, 4)
    loss, num_invalid = fastops.mlecc_loss_from_probs(*[torch.rand(0, K, w) for w in (*BINS, *BINS)])
    assert loss.shape == (0, K) and int(num_invalid) == 0


def test_non_contiguous_inputs():
    case = rtmo_case(6, 17)
    expected = fused_loss(case)
    strided = {name: torch.stack([t, t], -1)[..., 0] for name, t in case.items()}
    assert not strided["logits_x"].is_contiguous()
    torch.testing.assert_close(fused_loss(strided), expected, rtol=0, atol=0)


def _bad(name, value):
    def mutate(case):
        case[name] = value(case[name])
        return case
    return mutate


@pytest.mark.parametrize("mutate,match", [
    (_bad("logits_x", lambda t: t[0]), "logits_x must have 3 dimensions"),
    (_bad("logits_y", lambda t: t[:, :3]), "logits_y must have the same"),
    (_bad("keypoints", lambda t: t[..., :1]), "keypoints must have shape"),
    (_bad("bbox_cs", lambda t: t[:, :2]), "bbox_cs must have shape"),
    (_bad("sigmas", lambda t: t.long()), "sigmas must be float32 or float64"),
    (_bad("areas", lambda t: t.double()), "areas has dtype"),
    (_bad("weight", lambda t: t[:, :1]), "weight must have shape"),
    (_bad("logits_x", lambda t: t.half()), "logits_x must be float32 or float64"),
])
def test_bad_arguments_name_the_argument(mutate, match):
    case = mutate(rtmo_case(2, 14))
    with pytest.raises(RuntimeError, match=match):
        fastops.mlecc_loss_from_logits(**case)


def test_bad_floor_and_bins():
    case = rtmo_case(2, 15)
    with pytest.raises(RuntimeError, match="floor must be"):
        fastops.mlecc_loss_from_logits(**case, floor=-1.0)
    with pytest.raises(RuntimeError, match="x_bins must have shape"):
        fastops.mlecc_loss_from_logits(**case, x_bins=torch.linspace(-0.5, 0.5, 7))
    with pytest.raises(RuntimeError, match="target_x must have shape"):
        fastops.mlecc_loss_from_probs(torch.rand(2, 3, 4), torch.rand(2, 3, 5), torch.rand(2, 3, 6),
                                      torch.rand(2, 3, 5))


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 64])
def test_cuda_matches_cpu(dtype, n):
    case = rtmo_case(n, 16, dtype=dtype)
    case["logits_x"][:1, :1, :1] = float("nan")
    cpu_inputs = with_grad(case)
    cuda_inputs = with_grad({name: t.cuda() for name, t in case.items()})
    results = []
    for inputs in (cpu_inputs, cuda_inputs):
        loss, num_invalid = fastops.mlecc_loss_from_logits(**inputs)
        loss.sum().backward()
        results.append((loss, num_invalid, [inputs[name].grad for name in GRAD_NAMES]))
    (loss_cpu, count_cpu, grads_cpu), (loss_cuda, count_cuda, grads_cuda) = results
    assert int(count_cpu) == int(count_cuda)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss_cuda.cpu(), loss_cpu, **tol)
    for got, want in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))
    probs = [torch.rand(max(n, 1), K, w, dtype=dtype) for w in (*BINS, *BINS)]
    loss_cpu, _ = fastops.mlecc_loss_from_probs(*probs)
    loss_cuda, _ = fastops.mlecc_loss_from_probs(*[p.cuda() for p in probs])
    torch.testing.assert_close(loss_cuda.cpu(), loss_cpu, **tol)


# --------------------------------------------------------------------------- mmpose drop-in


@pytest.fixture(scope="module")
def mm():
    """mmpose's own DCC (softmax, bins, target generation) and the registry with LogMLECCLoss."""
    pytest.importorskip("mmpose")
    from mmpose.models.heads.hybrid_heads.rtmo_head import DCC
    from mmpose.registry import MODELS

    import fastops.mm  # noqa: F401  (registers LogMLECCLoss)
    # gau_cfg as in RTMO's configs (DCC's own default passes an argument GAUEncoder rejects).
    gau_cfg = dict(s=128, expansion_factor=2, dropout_rate=0.0, drop_path=0.0, act_fn="SiLU", pos_enc="add")
    dcc = DCC(in_channels=8, num_keypoints=K, feat_channels=8, num_bins=BINS, gau_cfg=gau_cfg)
    return dcc, MODELS


def mmpose_pieces(dcc, case):
    probs = dcc._apply_softmax(case["logits_x"], case["logits_y"])
    targets = dcc.generate_target_heatmap(case["keypoints"], case["bbox_cs"], case["sigmas"], case["areas"])
    return probs, targets


@pytest.mark.parametrize("n,seed", [(64, 20), (512, 21)])
def test_fused_matches_mmpose_rtmo_loss(mm, n, seed):
    """Fused op vs RTMOHead's loss_mle path: DCC softmax + DCC targets + mmpose MLECCLoss."""
    dcc, models = mm
    stock_module = models.build(dict(type="MLECCLoss", use_target_weight=True))
    case = with_grad(rtmo_case(n, seed))
    stock = stock_module(*mmpose_pieces(dcc, case), case["weight"])
    stock_grads = torch.autograd.grad(stock.sum(), [case[name] for name in GRAD_NAMES])
    case = with_grad(rtmo_case(n, seed))
    loss, num_invalid = fastops.mlecc_loss_from_logits(**case, x_bins=dcc.x_bins, y_bins=dcc.y_bins)
    fused = loss.mean(1)  # MLECCLoss(reduction='mean') per instance
    fused_grads = torch.autograd.grad(fused.sum(), [case[name] for name in GRAD_NAMES])
    assert int(num_invalid) == 0 and torch.isfinite(stock).all()
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-6)
    assert_grads_close(dict(zip(GRAD_NAMES, fused_grads)), dict(zip(GRAD_NAMES, stock_grads)))


@pytest.mark.parametrize("mode", ["log", "linear", "square"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_target_weight", [True, False])
def test_log_mlecc_module_matches_mmpose(mm, mode, reduction, use_target_weight):
    dcc, models = mm
    cfg = dict(mode=mode, reduction=reduction, use_target_weight=use_target_weight, loss_weight=0.7)
    case = rtmo_case(32, 22)
    results = []
    for loss_type in ("MLECCLoss", "LogMLECCLoss"):
        inputs = with_grad(case)
        loss = models.build(dict(type=loss_type, **cfg))(*mmpose_pieces(dcc, inputs), inputs["weight"])
        grads = torch.autograd.grad(loss.sum(), [inputs[name] for name in GRAD_NAMES])
        results.append((loss, dict(zip(GRAD_NAMES, grads))))
    (stock, stock_grads), (ours, our_grads) = results
    assert ours.shape == stock.shape
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    assert_grads_close(our_grads, stock_grads)


def test_log_mlecc_counts_nonfinite_in_message_hub(mm):
    from mmengine.logging import MessageHub
    dcc, models = mm
    module = models.build(dict(type="LogMLECCLoss", use_target_weight=True))
    (pred_x, pred_y), targets = mmpose_pieces(dcc, rtmo_case(8, 23))
    pred_x = pred_x.clone()
    pred_x[4, 2, 7] = float("nan")
    loss = module((pred_x, pred_y), targets, torch.ones(8, K))
    hub = MessageHub.get_current_instance()
    assert hub.get_scalar("train/mlecc_nonfinite").current() == 1
    assert torch.isfinite(loss).all()
    fastops.set_debug(True)
    try:
        with pytest.raises(ValueError, match=r"pred_x .*instance 4, keypoint 2"):
            module((pred_x, pred_y), targets, torch.ones(8, K))
    finally:
        fastops.set_debug(False)


def test_log_mlecc_survives_stock_fp16_overflow(mm):
    """fp16 heatmaps with sigma = 1e-3: the stock product of axes exceeds 65504 and its loss is -inf."""
    dcc, models = mm
    case = rtmo_case(16, 24)
    case["sigmas"] = torch.full_like(case["sigmas"], 1e-3)
    for name in ("logits_x", "logits_y"):
        case[name] = case[name] * 4  # confident, correct predictions
    probs, targets = mmpose_pieces(dcc, case)
    half = [t.half() for t in (*probs, *targets)]
    stock = models.build(dict(type="MLECCLoss", reduction="none"))(half[:2], half[2:])
    assert not torch.isfinite(stock).all()
    ours = models.build(dict(type="LogMLECCLoss", reduction="none"))(half[:2], half[2:])
    expected = ref.mlecc_loss_from_probs(*[t.double() for t in half])
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=1e-6)


def test_log_mlecc_floor_zero_is_pure_likelihood(mm):
    dcc, models = mm
    probs, targets = mmpose_pieces(dcc, far_keypoints_case())
    stock = models.build(dict(type="MLECCLoss", reduction="none"))(probs, targets)
    pure = models.build(dict(type="LogMLECCLoss", reduction="none", floor=0.0))(probs, targets)
    torch.testing.assert_close(stock, torch.full_like(stock, -math.log(STOCK_FLOOR)))
    expected = ref.mlecc_loss_from_probs(*[t.double() for t in (*probs, *targets)], floor=0.0)
    assert (pure > 100).all()
    torch.testing.assert_close(pure.double(), expected, rtol=1e-6, atol=0)

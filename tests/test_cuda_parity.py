"""Every op's CUDA kernel against its CPU kernel and fastops/reference, gradients included, on random
and adversarial inputs (±inf / NaN, every row ignored, ties, images without gts, G = 500, P = 8400);
non-contiguous inputs; inputs on a second GPU; no host synchronisation (sync debug mode 'error');
CUDA-graph capture and replay against eager. Every test needs a GPU and skips without one.

Invalid labels are not tried: on CUDA they end the process with a device-side assert."""
import contextlib

import pytest
import torch

import fastops
from conftest import requires_cuda
from cuda_graphs import capture
from fastops.reference import mlecc_loss as mlecc_reference
from fastops.reference import safe_cross_entropy as ce_reference
from fastops.reference.simota_assign import simota_assign_reference
from mlecc_cases import with_invalid_rows
from simota_cases import (IOU_VIS_CONFIG, RTMO_CONFIG, YOLOX_CONFIG, batch_to, first_priors, no_images, random_batch,
                          with_nonfinite, without_gt_slots)
from test_mlecc_loss import GRAD_NAMES, assert_grads_close, extreme_logits_case, far_keypoints_case
from test_safe_cross_entropy import fp16_overflow_logits
from test_simota_assign import assert_same_assignment

pytestmark = [requires_cuda, pytest.mark.cuda]
requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")

NAN = float("nan")
rtmo_case = mlecc_reference.random_rtmo_case


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def grad_like(output):
    """The seeded upstream gradient of `output` (same values on every device)."""
    return torch.rand(output.shape, generator=seeded(0)).to(output)


def strided(t):
    """`t`'s values in a non-contiguous view (every stride doubled)."""
    return torch.stack([t, t], -1)[..., 0]


@contextlib.contextmanager
def host_syncs_raise():
    """Any call that synchronises the host with the GPU raises inside (sync debug mode 'error')."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def copy_into(statics, values):
    with torch.no_grad():
        for static, value in zip(statics, values):
            static.copy_(value)


# ------------------------------------------------------------------------------- cross-entropy


def labelled(logits, ignore_every=9):
    """(logits, labels) with every `ignore_every`-th row ignored (-100)."""
    labels = torch.randint(0, logits.shape[1], (logits.shape[0], ), generator=seeded(logits.numel()))
    labels[::ignore_every] = -100
    return logits, labels


def nan_logits():
    logits = torch.randn(64, 81, generator=seeded(1)) * 4
    logits[3, 7] = logits[10, 0] = NAN  # rows that are not ignored: an ignored NaN row is 0 or NaN by op
    return logits


CE_CASES = {
    "random": lambda: labelled(torch.randn(513, 81, generator=seeded(0)) * 4),
    "wide": lambda: labelled(torch.randn(129, 1204, generator=seeded(2)) * 8),
    "fp16_overflow": lambda: labelled(fp16_overflow_logits(257, 81).float()),  # ±inf, ±65504, a row of +inf
    "nan": lambda: labelled(nan_logits()),
    "ties": lambda: labelled(torch.zeros(64, 81)),
    "one_class": lambda: labelled(torch.randn(33, 1, generator=seeded(3))),
    "all_ignored": lambda: (torch.randn(40, 81, generator=seeded(4)), torch.full((40, ), -100)),
    "empty": lambda: labelled(torch.empty(0, 81)),
}
CE_OPS = {  # name: (fastops op, reference)
    "softmax": (fastops.safe_cross_entropy, ce_reference.safe_cross_entropy),
    "sigmoid_index": (fastops.safe_sigmoid_cross_entropy, ce_reference.safe_sigmoid_cross_entropy),
    "sigmoid_float": (fastops.safe_sigmoid_cross_entropy, ce_reference.safe_sigmoid_cross_entropy),
}
LOSS_TOL = dict(rtol=1e-5, atol=1e-4)  # fp32 losses up to ~200 (logits clamped at 100)
GRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float16: dict(rtol=1e-2, atol=2e-3),
            torch.bfloat16: dict(rtol=1e-2, atol=2e-3)}


def ce_targets(op, logits, labels):
    if op == "softmax":
        return labels
    if op == "sigmoid_index":
        return torch.where(labels == 0, logits.shape[1], labels)  # index C = background
    return torch.rand(logits.shape, generator=seeded(5))


def ce_fwd_bwd(op, logits, targets, weight=None, **kwargs):
    """(loss, num_clamped, num_nan, gradient to the logits) of one op call, on the CPU."""
    x = logits.detach().clone().requires_grad_()
    loss, num_clamped, num_nan = op(x, targets, weight, **kwargs)
    grad, = torch.autograd.grad(loss, x, grad_like(loss))
    assert loss.device == grad.device == logits.device
    return loss.detach().cpu(), int(num_clamped), int(num_nan), grad.cpu()


def assert_ce_close(got, want, dtype, rows=slice(None)):
    """Losses (NaN where NaN), counts, and gradients on `rows` agree."""
    torch.testing.assert_close(got[0], want[0], equal_nan=True, **LOSS_TOL)
    assert got[1:3] == want[1:3]
    torch.testing.assert_close(got[3][rows], want[3][rows], equal_nan=True, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", list(GRAD_TOL))
@pytest.mark.parametrize("case", CE_CASES)
@pytest.mark.parametrize("op", CE_OPS)
def test_cross_entropy_cuda_matches_cpu_and_reference(op, case, dtype):
    logits, labels = CE_CASES[case]()
    logits, targets = logits.to(dtype), ce_targets(op, logits, labels)
    weight = torch.rand(logits.shape[1], generator=seeded(6)) + 0.5
    fused, reference = CE_OPS[op]
    for clamp_grad in ("zero", "straight_through"):
        on_cpu = ce_fwd_bwd(fused, logits, targets, weight, clamp_grad=clamp_grad)
        on_cuda = ce_fwd_bwd(fused, logits.cuda(), targets.cuda(), weight.cuda(), clamp_grad=clamp_grad)
        assert_ce_close(on_cuda, on_cpu, dtype)
        # the reference's gradient of a NaN row is not part of the contract
        assert_ce_close(on_cuda, ce_fwd_bwd(reference, logits, targets, weight, clamp_grad=clamp_grad), dtype,
                        rows=~logits.isnan().any(1))


@pytest.mark.parametrize("op", CE_OPS)
def test_cross_entropy_non_contiguous_inputs(op):
    logits = (torch.randn(81, 300, generator=seeded(7)) * 40).t().cuda()  # column-major
    targets = strided(ce_targets(op, *labelled(logits.cpu())).cuda())
    weight = strided(torch.rand(81, generator=seeded(8)).cuda() + 0.5)
    assert not (logits.is_contiguous() or targets.is_contiguous() or weight.is_contiguous())
    fused = CE_OPS[op][0]
    assert_ce_close(ce_fwd_bwd(fused, logits, targets, weight),
                    ce_fwd_bwd(fused, logits.contiguous(), targets.contiguous(), weight.contiguous()), torch.float32)


@requires_two_gpus
@pytest.mark.parametrize("op", CE_OPS)
def test_cross_entropy_on_a_second_gpu(op):
    logits, labels = CE_CASES["fp16_overflow"]()
    targets, fused = ce_targets(op, logits, labels), CE_OPS[op][0]
    on_first = ce_fwd_bwd(fused, logits.half().to("cuda:0"), targets.to("cuda:0"))
    assert torch.cuda.current_device() == 0
    assert_ce_close(ce_fwd_bwd(fused, logits.half().to("cuda:1"), targets.to("cuda:1")), on_first, torch.float16)


@pytest.mark.parametrize("op", CE_OPS)
def test_cross_entropy_never_syncs_with_the_host(op):
    logits, labels = CE_CASES["nan"]()
    x = logits.half().cuda().requires_grad_()
    targets, weight = ce_targets(op, logits, labels).cuda(), torch.rand(81).cuda()
    with host_syncs_raise():
        loss = CE_OPS[op][0](x, targets, weight).loss
        loss.backward(torch.ones_like(loss))


@pytest.mark.parametrize("op", CE_OPS)
def test_cross_entropy_cuda_graph_replay_matches_eager(op):
    fused = CE_OPS[op][0]
    logits, labels = CE_CASES["fp16_overflow"]()
    x, targets = logits.half().cuda().requires_grad_(), ce_targets(op, logits, labels).cuda()
    grad_out = grad_like(fused(x.detach(), targets).loss)

    def step():
        x.grad = None
        out = fused(x, targets)
        out.loss.backward(grad_out)
        return out, x.grad

    graph, (out, grad) = capture(step)
    new_logits, new_labels = labelled(torch.randn(logits.shape, generator=seeded(9)) * 150, ignore_every=4)
    copy_into((x, targets), (new_logits.half(), ce_targets(op, new_logits, new_labels)))
    graph.replay()
    replayed = (out.loss.cpu(), int(out.num_clamped), int(out.num_nan), grad.cpu())
    assert replayed[1] > 0
    assert_ce_close(replayed, ce_fwd_bwd(fused, x, targets), torch.float16)


# ------------------------------------------------------------------------------------ SimOTA

SIMOTA_SETTINGS = {"rtmo": (RTMO_CONFIG, True), "iou_vis": (IOU_VIS_CONFIG, True), "yolox": (YOLOX_CONFIG, False)}
P_8400 = (8, 16, 32)  # strides of a 640x640 image with 8400 priors (the default (16, 32): 2000)


def simota_case(config, seed, num_gts=(0, 1, 7, 40), **batch_options):
    """(args, kwargs, settings): a 640x640 batch in the settings named `config`."""
    settings, pose = SIMOTA_SETTINGS[config]
    args, kwargs = random_batch(seed, 640, list(num_gts), (17, 5)[seed % 2], num_classes=1 if pose else 80,
                                pose=pose, **batch_options)
    return args, kwargs, settings


def assign_on(device, args, kwargs, settings):
    args, kwargs = batch_to(args, kwargs, device)
    result = fastops.simota_assign(*args, **kwargs, **settings)
    assert all(t.device == torch.device(device) for t in result)
    return result


def assert_bitwise_same(got, want):
    """gt_inds and labels identical, max_overlaps equal bit for bit."""
    got, want = [t.cpu() for t in got], [t.cpu() for t in want]
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert torch.equal(got[1].view(torch.int32), want[1].view(torch.int32))


def check_simota(args, kwargs, settings, reference=True):
    """CUDA bit for bit as the CPU kernel, and as the reference (run on the CPU)."""
    on_cuda = assign_on("cuda", args, kwargs, settings)
    assert_bitwise_same(on_cuda, fastops.simota_assign(*args, **kwargs, **settings))
    if reference:
        assert_same_assignment([t.cpu() for t in on_cuda], simota_assign_reference(*args, **kwargs, **settings))
    return on_cuda


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", ["normal", "tiny", "outside", "nowhere"])
@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_cuda_matches_cpu_and_reference(config, kind, seed):
    on_cuda = check_simota(*simota_case(config, seed, kind=kind))
    assert not on_cuda[0][0].any()  # the image without gts
    if kind == "normal":
        assert (on_cuda[0][1:] > 0).any()


@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_500_gts_and_8400_priors(config):
    check_simota(*simota_case(config, 10, num_gts=(500, 3), strides=P_8400))


@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_nonfinite_predictions(config):
    """NaN / ±inf anywhere in the predictions: CUDA as the CPU kernel. In the boxes only: also as the
    reference (its BCE rejects non-finite probabilities, and for a NaN keypoint of an invisible gt
    keypoint it has OKS = NaN * 0 = NaN where the kernels leave the keypoint out)."""
    args, kwargs, settings = simota_case(config, 11)
    check_simota(*with_nonfinite(args, kwargs, seed=12, rate=0.01), settings, reference=False)
    check_simota(*with_nonfinite(args, kwargs, seed=13, names=("pred_bboxes", ), rate=0.01), settings)


@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_ties_go_to_the_lower_prior(config):
    """Every prior predicts the same box, score and keypoints: costs tie within each gt's candidates."""
    (priors, boxes, scores, *gts), kwargs, settings = simota_case(config, 14, num_gts=(3, 12))
    boxes, scores = boxes[:, :1].expand_as(boxes).clone(), torch.full_like(scores, 0.5)
    kwargs = {name: t[:, :1].expand_as(t).clone() if name.startswith("pred_") else t for name, t in kwargs.items()}
    check_simota((priors, boxes, scores, *gts), kwargs, settings)


@pytest.mark.parametrize("empty", ["no_gt_slots", "no_images", "no_priors", "one_prior"])
def test_simota_empty_shapes(empty):
    args, kwargs, settings = simota_case("rtmo", 15, num_gts=(0, 2))
    args, kwargs = dict(no_gt_slots=lambda: without_gt_slots(args, kwargs), no_images=lambda: no_images(args, kwargs),
                        no_priors=lambda: first_priors(args, kwargs, 0),
                        one_prior=lambda: first_priors(args, kwargs, 1))[empty]()
    on_cuda = check_simota(args, kwargs, settings)
    assert on_cuda[0].shape == (args[1].size(0), args[0].size(0))


@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_non_contiguous_inputs(config):
    args, kwargs, settings = simota_case(config, 16)
    cuda_args, cuda_kwargs = batch_to(args, kwargs, "cuda")
    contiguous = fastops.simota_assign(*cuda_args, **cuda_kwargs, **settings)
    views = fastops.simota_assign(*map(strided, cuda_args), **{k: strided(v) for k, v in cuda_kwargs.items()},
                                  **settings)
    assert_bitwise_same(views, contiguous)


@requires_two_gpus
def test_simota_on_a_second_gpu():
    args, kwargs, settings = simota_case("rtmo", 17)
    assert_bitwise_same(assign_on("cuda:1", args, kwargs, settings), fastops.simota_assign(*args, **kwargs, **settings))
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_never_syncs_with_the_host(config):
    args, kwargs, settings = simota_case(config, 18)
    args, kwargs = batch_to(args, kwargs, "cuda")
    with host_syncs_raise():
        fastops.simota_assign(*args, **kwargs, **settings)


@pytest.mark.parametrize("config", SIMOTA_SETTINGS)
def test_simota_cuda_graph_replay_matches_eager(config):
    args, kwargs, settings = simota_case(config, 19)
    static_args, static_kwargs = batch_to(args, kwargs, "cuda")
    graph, replayed = capture(lambda: fastops.simota_assign(*static_args, **static_kwargs, **settings))
    new_args, new_kwargs, _ = simota_case(config, 21)  # same shapes (K follows the seed's parity), other values
    copy_into([*static_args, *static_kwargs.values()], [*new_args, *new_kwargs.values()])
    graph.replay()
    assert_bitwise_same(replayed, fastops.simota_assign(*new_args, **new_kwargs, **settings))


# ------------------------------------------------------------------------------------- MLECC


def as_dtype(case, dtype):
    return {name: t.to(dtype) if t is not None and t.is_floating_point() else t for name, t in case.items()}


MLECC_CASES = {  # name: () -> (keyword arguments of mlecc_loss_from_logits, [N, K] mask of invalid rows)
    "random": lambda: (rtmo_case(64, 21), None),
    "far_keypoints": lambda: (far_keypoints_case(), None),  # every stock target bin underflows
    "extreme_logits": lambda: (extreme_logits_case(), None),  # |logits| up to 1e6
    "invalid_rows": lambda: with_invalid_rows(rtmo_case(16, 22)),
    "one_bin": lambda: (rtmo_case(8, 23, k=3, bins=(1, 3)), None),
    "unweighted": lambda: (dict(rtmo_case(8, 24, k=5, bins=(33, 65)), weight=None), None),
    "empty": lambda: (rtmo_case(0, 25), None),
}


def mlecc_fwd_bwd(loss_fn, case, device):
    """(loss, num_invalid or None, {name: gradient}) of one call on `device`, returned on the CPU."""
    inputs = {name: None if t is None else t.detach().to(device).requires_grad_(name in GRAD_NAMES)
              for name, t in case.items()}
    loss, num_invalid = loss_fn(inputs)
    grads = torch.autograd.grad(loss, [inputs[name] for name in GRAD_NAMES], grad_like(loss))
    return loss.detach().cpu(), num_invalid, {name: g.cpu() for name, g in zip(GRAD_NAMES, grads)}


def fused_from_logits(inputs):
    loss, num_invalid = fastops.mlecc_loss_from_logits(**inputs)
    return loss, int(num_invalid)


def reference_from_logits(inputs):
    return mlecc_reference.mlecc_loss_from_logits(**inputs, compute_dtype=torch.float64), None


def assert_mlecc_close(got, want, valid):
    """Losses of the `valid` rows, and the gradients of their rows and of instances with no invalid row."""
    torch.testing.assert_close(got[0][valid].double(), want[0][valid].double(), rtol=1e-5, atol=1e-5)
    if not valid.any():
        return  # no gradient to compare (assert_grads_close takes the max of each)
    rows = dict(logits_x=valid, logits_y=valid, sigmas=valid, bbox_cs=valid.all(1))
    assert_grads_close({name: g[rows[name]].double() for name, g in got[2].items()},
                       {name: g[rows[name]].double() for name, g in want[2].items()})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", MLECC_CASES)
def test_mlecc_from_logits_cuda_matches_cpu_and_reference(case, dtype):
    inputs, invalid = MLECC_CASES[case]()
    inputs = as_dtype(inputs, dtype)
    invalid = torch.zeros(inputs["sigmas"].shape, dtype=torch.bool) if invalid is None else invalid
    on_cuda = mlecc_fwd_bwd(fused_from_logits, inputs, "cuda")
    on_cpu = mlecc_fwd_bwd(fused_from_logits, inputs, "cpu")
    assert on_cuda[1] == on_cpu[1] == int(invalid.sum())
    assert_mlecc_close(on_cuda, on_cpu, torch.ones_like(invalid))
    assert_mlecc_close(on_cuda, mlecc_fwd_bwd(reference_from_logits, inputs, "cpu"), ~invalid)
    loss, _, grads = on_cuda
    assert (loss[invalid] == 0).all() and (grads["sigmas"][invalid] == 0).all()
    assert (grads["logits_x"][invalid] == 0).all() and (grads["logits_y"][invalid] == 0).all()


def probs_inputs(n, k, bins, seed):
    """(pred_x, pred_y, target_x, target_y, weight): random heatmaps (softmax rows, density targets)."""
    gen = seeded(seed)
    preds = [torch.randn(n, k, w, generator=gen).softmax(-1) for w in bins]
    targets = [torch.rand(n, k, w, generator=gen) * 10 for w in bins]
    return (*preds, *targets, torch.rand(n, k, generator=gen))


def probs_fwd_bwd(loss_fn, heatmaps, weight, device):
    """(loss, num_invalid or None, [gradient per heatmap]) of one call on `device`, returned on the CPU."""
    leaves = [h.detach().to(device).requires_grad_() for h in heatmaps]
    loss, num_invalid = loss_fn(*leaves, weight.to(device))
    return loss.detach().cpu(), num_invalid, [g.cpu() for g in torch.autograd.grad(loss, leaves, grad_like(loss))]


def reference_from_probs(*args):
    return mlecc_reference.mlecc_loss_from_probs(*(t.double() for t in args)), None


@pytest.mark.parametrize("shape", [(64, 17, (192, 256)), (5, 3, (1, 33)), (0, 17, (8, 8))])
@pytest.mark.parametrize("invalid", [False, True])
def test_mlecc_from_probs_cuda_matches_cpu_and_reference(shape, invalid):
    *heatmaps, weight = probs_inputs(*shape, seed=26)
    bad_rows = torch.zeros(shape[:2], dtype=torch.bool)
    if invalid and shape[0] > 2:
        heatmaps[0][0, 0, 0], heatmaps[3][2, 1, -1] = NAN, -1.0
        bad_rows[0, 0] = bad_rows[2, 1] = True
    on_cuda = probs_fwd_bwd(fastops.mlecc_loss_from_probs, heatmaps, weight, "cuda")
    on_cpu = probs_fwd_bwd(fastops.mlecc_loss_from_probs, heatmaps, weight, "cpu")
    reference = probs_fwd_bwd(reference_from_probs, heatmaps, weight, "cpu")
    assert int(on_cuda[1]) == int(on_cpu[1]) == int(bad_rows.sum())
    good = ~bad_rows
    torch.testing.assert_close(on_cuda[0], on_cpu[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(on_cuda[0][good].double(), reference[0][good], rtol=1e-5, atol=1e-5)
    for got, want, on_reference in zip(on_cuda[2], on_cpu[2], reference[2]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got[good], on_reference[good], rtol=1e-4, atol=1e-6)
        assert (got[bad_rows] == 0).all()


def test_mlecc_non_contiguous_inputs():
    inputs, _ = MLECC_CASES["invalid_rows"]()
    inputs = {name: t.cuda() for name, t in inputs.items()}
    contiguous = mlecc_fwd_bwd(fused_from_logits, inputs, "cuda")
    views = mlecc_fwd_bwd(fused_from_logits, {name: strided(t) for name, t in inputs.items()}, "cuda")
    assert views[1] == contiguous[1]
    assert_mlecc_close(views, contiguous, torch.ones(inputs["sigmas"].shape, dtype=torch.bool))
    *heatmaps, weight = [t.cuda() for t in probs_inputs(6, 17, (192, 256), seed=27)]
    torch.testing.assert_close(
        probs_fwd_bwd(fastops.mlecc_loss_from_probs, [strided(h) for h in heatmaps], strided(weight), "cuda"),
        probs_fwd_bwd(fastops.mlecc_loss_from_probs, heatmaps, weight, "cuda"))


@requires_two_gpus
def test_mlecc_on_a_second_gpu():
    inputs, invalid = MLECC_CASES["invalid_rows"]()
    on_second = mlecc_fwd_bwd(fused_from_logits, inputs, "cuda:1")
    assert torch.cuda.current_device() == 0
    assert_mlecc_close(on_second, mlecc_fwd_bwd(fused_from_logits, inputs, "cuda:0"), torch.ones_like(invalid))
    *heatmaps, weight = probs_inputs(6, 17, (192, 256), seed=28)
    torch.testing.assert_close(probs_fwd_bwd(fastops.mlecc_loss_from_probs, heatmaps, weight, "cuda:1")[0],
                               probs_fwd_bwd(fastops.mlecc_loss_from_probs, heatmaps, weight, "cuda:0")[0])


def test_mlecc_never_syncs_with_the_host():
    inputs, _ = MLECC_CASES["invalid_rows"]()
    inputs = {name: t.cuda().requires_grad_(name in GRAD_NAMES) for name, t in inputs.items()}
    *heatmaps, weight = probs_inputs(6, 17, (192, 256), seed=29)
    heatmaps, weight = [h.cuda().requires_grad_() for h in heatmaps], weight.cuda()
    with host_syncs_raise():
        loss, _ = fastops.mlecc_loss_from_logits(**inputs)
        loss.backward(torch.ones_like(loss))
        loss, _ = fastops.mlecc_loss_from_probs(*heatmaps, weight)
        loss.backward(torch.ones_like(loss))


def test_mlecc_from_logits_cuda_graph_replay_matches_eager():
    inputs, _ = MLECC_CASES["invalid_rows"]()
    static = {name: t.cuda().requires_grad_(name in GRAD_NAMES) for name, t in inputs.items()}
    grad_out = grad_like(fastops.mlecc_loss_from_logits(**{k: v.detach() for k, v in static.items()})[0])

    def step():
        for name in GRAD_NAMES:
            static[name].grad = None
        loss, num_invalid = fastops.mlecc_loss_from_logits(**static)
        loss.backward(grad_out)
        return loss, num_invalid, [static[name].grad for name in GRAD_NAMES]

    graph, (loss, num_invalid, grads) = capture(step)
    new_inputs = rtmo_case(16, 30)  # same shapes, other values, every row valid
    copy_into(static.values(), new_inputs.values())
    graph.replay()
    replayed = (loss.detach().cpu(), int(num_invalid), {name: g.cpu() for name, g in zip(GRAD_NAMES, grads)})
    eager = mlecc_fwd_bwd(fused_from_logits, new_inputs, "cuda")
    assert replayed[1] == eager[1] == 0
    assert_mlecc_close(replayed, eager, torch.ones(new_inputs["sigmas"].shape, dtype=torch.bool))


def test_mlecc_from_probs_cuda_graph_replay_matches_eager():
    *heatmaps, weight = probs_inputs(32, 17, (192, 256), seed=31)
    static, weight = [h.cuda().requires_grad_() for h in heatmaps], weight.cuda()
    grad_out = grad_like(fastops.mlecc_loss_from_probs(*(h.detach() for h in static), weight)[0])

    def step():
        for leaf in static:
            leaf.grad = None
        loss, _ = fastops.mlecc_loss_from_probs(*static, weight)
        loss.backward(grad_out)
        return loss, [leaf.grad for leaf in static]

    graph, (loss, grads) = capture(step)
    *new_heatmaps, _ = probs_inputs(32, 17, (192, 256), seed=32)
    copy_into(static, new_heatmaps)
    graph.replay()
    eager = probs_fwd_bwd(fastops.mlecc_loss_from_probs, new_heatmaps, weight, "cuda")
    torch.testing.assert_close(loss.detach().cpu(), eager[0])
    torch.testing.assert_close([g.cpu() for g in grads], eager[2])

"""The defects of the CUDA-path review (issue 12), one section per item, each shown on CPU where the
defect or its contract can be, and on CUDA (skipped without a GPU) for the rest."""
import ast
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastops
from fastops.ops import _dispatch
from fastops.reference import mlecc_loss as mlecc_ref
from fastops.reference.simota_assign import simota_assign_reference
from conftest import CUDA, requires_cuda
from simota_cases import RTMO_CONFIG, YOLOX_CONFIG, random_batch
from test_simota_assign import _image_instances, assert_same_assignment, metainfo_files  # noqa: F401

INF, NAN = float("inf"), float("nan")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_KEYSET = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def probs_case(device="cpu", dtype=torch.float32, n=4, k=3, wx=7, wy=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, k, w, generator=g, dtype=dtype).add(0.05).to(device) for w in (wx, wy, wx, wy)]


def logits_case(device="cpu", n=4, seed=3):
    case = mlecc_ref.random_rtmo_case(n, seed, k=5, bins=(12, 16))
    return {name: t.to(device) for name, t in case.items()}


MLECC_LOGIT_GRADS = ("logits_x", "logits_y", "sigmas", "bbox_cs")


# --------------------------------------------------------------------- 1. zero gradient on invalid rows


@pytest.mark.parametrize("bad", [(2, 1, INF), (0, 0, INF), (0, 2, NAN), (1, 0, -1.0)])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_mlecc_from_probs_invalid_row_has_zero_gradient(bad, device):
    tensor_index, row, value = bad
    tensors = probs_case(device)
    tensors[tensor_index][1, row, 3] = value
    inputs = [t.clone().requires_grad_() for t in tensors]
    loss, num_invalid = fastops.mlecc_loss_from_probs(*inputs)
    assert int(num_invalid) == 1 and loss[1, row] == 0
    loss.sum().backward()
    for t in inputs:
        assert torch.isfinite(t.grad).all()
        assert (t.grad[1, row] == 0).all()
        assert (t.grad[0] != 0).any()  # the valid rows keep theirs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_mlecc_from_logits_invalid_row_has_zero_gradient(device):
    case = logits_case(device)
    case["logits_x"][1, 2, 4] = INF
    case["keypoints"][2, 0, 1] = NAN
    inputs = {name: t.clone().requires_grad_(name in MLECC_LOGIT_GRADS) for name, t in case.items()}
    loss, num_invalid = fastops.mlecc_loss_from_logits(**inputs)
    assert int(num_invalid) == 2
    loss.sum().backward()
    for name in MLECC_LOGIT_GRADS:
        assert torch.isfinite(inputs[name].grad).all(), name
    for n, k in ((1, 2), (2, 0)):
        assert (inputs["logits_x"].grad[n, k] == 0).all() and (inputs["logits_y"].grad[n, k] == 0).all()
        assert inputs["sigmas"].grad[n, k] == 0


# --------------------------------------------------------------------- 2. fakes return the kernels' strides


def non_contiguous_views(t):
    """The tensor as a transposed, a sliced and an expanded view (same values)."""
    transposed = t.transpose(0, 1).contiguous().transpose(0, 1)
    sliced = torch.cat([t, torch.zeros_like(t)], dim=-1)[..., :t.shape[-1]]
    expanded = t[:1].expand(t.shape) if t.shape[0] else t
    return {"transposed": transposed, "sliced": sliced, "expanded": expanded}


LAYOUTS = ["transposed", "sliced", "expanded"]


def _compiled_matches_eager(fn, inputs, grad_inputs):
    eager_inputs = [t.detach().clone().requires_grad_(i in grad_inputs) for i, t in enumerate(inputs)]
    compiled_inputs = [t.detach().requires_grad_(i in grad_inputs) for i, t in enumerate(inputs)]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    eager, got = fn(*eager_inputs), compiled(*compiled_inputs)
    torch.testing.assert_close(got, eager)
    eager.backward()
    got.backward()
    for i in grad_inputs:
        torch.testing.assert_close(compiled_inputs[i].grad, eager_inputs[i].grad)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_safe_cross_entropy_non_contiguous(layout):
    logits = non_contiguous_views(torch.randn(64, 5) * 3)[layout]
    labels = torch.randint(0, 5, (64,))
    _compiled_matches_eager(lambda x, y: fastops.safe_cross_entropy(x, y).loss.sum(), [logits, labels], {0})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_safe_sigmoid_cross_entropy_non_contiguous(layout):
    logits = non_contiguous_views(torch.randn(64, 5) * 3)[layout]
    targets = non_contiguous_views(torch.rand(64, 5))[layout]
    _compiled_matches_eager(lambda x, t: fastops.safe_sigmoid_cross_entropy(x, t).loss.sum(), [logits, targets],
                            {0})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_mlecc_from_probs_non_contiguous(layout):
    tensors = [non_contiguous_views(t)[layout] for t in probs_case(n=5)]
    _compiled_matches_eager(lambda *t: fastops.mlecc_loss_from_probs(*t)[0].sum(), tensors, {0, 1, 2, 3})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_mlecc_from_logits_non_contiguous(layout):
    case = logits_case(n=5)
    names = list(case)
    tensors = [non_contiguous_views(case[name])[layout] if case[name].dim() > 1 else case[name] for name in names]
    x_bins, y_bins = (torch.linspace(-0.5, 0.5, case[n].shape[-1]) for n in ("logits_x", "logits_y"))

    def total(*t):
        return fastops.mlecc_loss_from_logits(**dict(zip(names, t)), x_bins=x_bins, y_bins=y_bins)[0].sum()

    _compiled_matches_eager(total, tensors, {names.index(n) for n in MLECC_LOGIT_GRADS})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_simota_assign_non_contiguous(layout):
    args, kwargs = random_batch(5, 128, [3, 0], num_keypoints=5)
    args = [non_contiguous_views(t)[layout] if t.dim() > 1 else t for t in args]
    kwargs = {name: non_contiguous_views(t)[layout] if t.dim() > 1 else t for name, t in kwargs.items()}
    settings = dict(RTMO_CONFIG)
    compiled = torch.compile(lambda *a: fastops.simota_assign(*a, **kwargs, **settings), fullgraph=True)
    torch._dynamo.reset()
    for got, expected in zip(compiled(*args), fastops.simota_assign(*args, **kwargs, **settings)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _backward_ops_cases():
    logits = torch.randn(6, 4).t()  # [4, 6] transposed
    labels = torch.tensor([0, 5, 2, -100])
    loss, lse, stats = torch.ops.fastops.safe_cross_entropy(logits, labels, None, -100, 10.0, False)
    sig_targets = torch.rand(6, 4).t()
    px, py, tx, ty = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in probs_case()]
    return [
        (torch.ops.fastops.safe_cross_entropy_backward.default,
         (torch.rand(4), logits, labels, None, lse, stats, -100, 10.0, False)),
        (torch.ops.fastops.safe_sigmoid_cross_entropy_backward.default,
         (torch.rand(6, 4).t(), logits, sig_targets, None, -100, 10.0, False)),
        (torch.ops.fastops.mlecc_loss_from_probs_backward.default,
         (torch.rand(3, 4).t(), px, py, tx, ty, None, 1e-4)),
    ]


@pytest.mark.parametrize("case", range(3))
def test_opcheck_backward_ops_on_transposed_inputs(case):
    op, args = _backward_ops_cases()[case]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


# --------------------------------------------------------------------- 3. clamp bound, all -inf rows


@pytest.mark.parametrize("clamp", [INF, NAN, 0.0, -1.0, 1e39])
@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_clamp_outside_the_accumulator_is_rejected(clamp, sigmoid, device):
    logits, labels = torch.randn(4, 3, device=device), torch.tensor([0, 1, 2, 0], device=device)
    fn = fastops.safe_sigmoid_cross_entropy if sigmoid else fastops.safe_cross_entropy
    with pytest.raises(RuntimeError, match="clamp must be a finite positive number"):
        fn(logits, labels, clamp=clamp)


def test_clamp_bound_is_the_accumulators_max():
    labels = torch.tensor([0, 1])
    fastops.safe_cross_entropy(torch.randn(2, 3, dtype=torch.float64), labels, clamp=1e39)  # fp64 holds it
    fastops.safe_cross_entropy(torch.randn(2, 3), labels, clamp=3e38)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_all_minus_inf_row_matches_torch_on_the_clamped_logits(dtype, device):
    logits = torch.randn(5, 40).to(dtype)
    logits[1] = -INF
    logits[3, :7] = -INF
    labels = torch.tensor([0, 3, 39, 6, -100])
    result = fastops.safe_cross_entropy(logits.to(device), labels.to(device), clamp=50.0)
    expected = F.cross_entropy(logits.float().clamp(-50, 50), labels, reduction="none")
    torch.testing.assert_close(result.loss.cpu(), expected)
    assert int(result.num_clamped) == 47


# --------------------------------------------------------------------- 4. no host sync (CUDA)


def _each_op_forward_backward(device):
    """Calls every differentiable op forward + backward, and simota_assign, on `device`."""
    logits = (torch.randn(256, 81, device=device) * 50).half().requires_grad_()
    labels = torch.randint(0, 81, (256,), device=device)
    fastops.safe_cross_entropy(logits, labels).loss.sum().backward()
    fastops.safe_sigmoid_cross_entropy(logits, labels).loss.sum().backward()
    probs = [t.requires_grad_() for t in probs_case(device)]
    fastops.mlecc_loss_from_probs(*probs)[0].sum().backward()
    case = logits_case(device)
    inputs = {name: t.requires_grad_(name in MLECC_LOGIT_GRADS) for name, t in case.items()}
    fastops.mlecc_loss_from_logits(**inputs)[0].sum().backward()
    args, kwargs = random_batch(1, 256, [4, 0, 9], num_keypoints=17)
    return fastops.simota_assign(*[t.to(device) for t in args], **{k: t.to(device) for k, t in kwargs.items()},
                                 **RTMO_CONFIG)


@requires_cuda
def test_no_host_sync_in_any_op():
    _each_op_forward_backward("cuda")  # warm-up: allocator, lazy init
    torch.cuda.set_sync_debug_mode("error")
    try:
        _each_op_forward_backward("cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)


@requires_cuda
def test_cuda_graph_capture_and_replay_of_each_op():
    logits = torch.randn(128, 81, device="cuda") * 30
    labels = torch.randint(0, 81, (128,), device="cuda")
    probs = probs_case("cuda")
    args, kwargs = random_batch(2, 256, [5, 0], num_keypoints=17)
    args = [t.cuda() for t in args]
    kwargs = {k: t.cuda() for k, t in kwargs.items()}
    calls = [
        lambda: torch.ops.fastops.safe_cross_entropy(logits, labels, None, -100, 100.0, False),
        lambda: torch.ops.fastops.safe_sigmoid_cross_entropy(logits, labels, None, -100, 100.0, False),
        lambda: torch.ops.fastops.mlecc_loss_from_probs(*probs, None, 1e-4),
        lambda: fastops.simota_assign(*args, **kwargs, **RTMO_CONFIG),
    ]
    for call in calls:
        eager = call()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()  # warm-up on the side stream, as torch.cuda.graphs requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = call()
        graph.replay()
        torch.cuda.synchronize()
        for got, expected in zip(captured, eager):
            torch.testing.assert_close(got, expected, equal_nan=True)


def _mm_modules_forward_backward(device, metainfo_files):
    """SafeCrossEntropyLoss (softmax and sigmoid, avg_non_ignore), LogMLECCLoss and the mmpose
    FusedSimOTAAssigner's assign_batch, forward + backward, on `device`."""
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmpose.registry import MODELS as MMPOSE_MODELS, TASK_UTILS
    logits = (torch.randn(64, 81, device=device) * 50).half().requires_grad_()
    labels = torch.randint(0, 81, (64,), device=device)
    for use_sigmoid in (False, True):
        loss = MMDET_MODELS.build(dict(type="SafeCrossEntropyLoss", use_sigmoid=use_sigmoid, avg_non_ignore=True))
        loss(logits, labels).backward()
    probs = [t.requires_grad_() for t in probs_case(device, k=17)]
    mle = MMPOSE_MODELS.build(dict(type="LogMLECCLoss", use_target_weight=True))
    mle(tuple(probs[:2]), tuple(probs[2:]), torch.ones(4, 17, device=device)).sum().backward()
    assigner = TASK_UTILS.build(dict(RTMO_CONFIG, type="FusedSimOTAAssigner",
                                     oks_calculator=dict(type="PoseOKS", metainfo=metainfo_files[17])))
    args, kwargs = random_batch(3, 256, [4, 0, 2], num_keypoints=17)
    args, kwargs = [t.to(device) for t in args], {name: t.to(device) for name, t in kwargs.items()}
    gts = [_image_instances(args, kwargs, b)[1] for b in range(3)]
    return assigner.assign_batch(args[0], args[1], args[2], kwargs["pred_keypoints"],
                                 kwargs["pred_keypoints_visible"], gts)


@pytest.fixture
def mm_stack(metainfo_files):
    pytest.importorskip("mmpose")
    pytest.importorskip("mmdet")
    import fastops.mm  # noqa: F401  (registers the drop-ins)
    return metainfo_files


def test_mm_counters_reach_the_message_hub_at_once_on_cpu(mm_stack):
    from mmengine.logging import MessageHub
    from mmdet.registry import MODELS
    logits = torch.randn(8, 5)
    logits[0, :3] = INF
    MODELS.build(dict(type="SafeCrossEntropyLoss", log_key="hardening_clamped"))(logits, torch.zeros(8).long())
    assert MessageHub.get_current_instance().get_scalar("train/hardening_clamped").current() == 3


def test_mm_modules_sync_free_path_runs_on_cpu(mm_stack):
    result = _mm_modules_forward_backward("cpu", mm_stack)
    assert result["gt_inds"].shape == (3, 320) and torch.equal(result["num_gts"], torch.tensor([4, 0, 2]))


@requires_cuda
def test_mm_modules_make_no_host_sync_and_log_one_call_late(mm_stack):
    from mmengine.logging import MessageHub
    _mm_modules_forward_backward("cuda", mm_stack)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        _mm_modules_forward_backward("cuda", mm_stack)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    _mm_modules_forward_backward("cuda", mm_stack)  # emits the counts of the calls before
    hub = MessageHub.get_current_instance()
    assert hub.get_scalar("train/num_clamped").current() > 0
    assert hub.get_scalar("train/mlecc_nonfinite").current() == 0


# --------------------------------------------------------------------- 5. invalid labels, same error everywhere


def test_invalid_label_raises_from_the_op_itself():
    with pytest.raises(RuntimeError, match=r"safe_cross_entropy: labels\[1\] = 9 is out of range \[0, 4\)"):
        torch.ops.fastops.safe_cross_entropy(torch.randn(3, 4), torch.tensor([0, 9, 1]), None, -100, 10.0, False)
    with pytest.raises(RuntimeError, match=r"safe_sigmoid_cross_entropy: labels\[2\] = 5 is out of range \[0, 5\)"):
        torch.ops.fastops.safe_sigmoid_cross_entropy(torch.randn(3, 4), torch.tensor([0, 4, 5]), None, -100, 10.0,
                                                      False)


def test_backward_op_checks_labels_too():
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    _, lse, stats = torch.ops.fastops.safe_cross_entropy(logits, labels, None, -100, 10.0, False)
    with pytest.raises(RuntimeError, match=r"safe_cross_entropy_backward: labels\[0\] = -3 is out of range"):
        torch.ops.fastops.safe_cross_entropy_backward(torch.ones(3), logits, torch.tensor([-3, 1, 2]), None, lse,
                                                      stats, -100, 10.0, False)


@requires_cuda
def test_cuda_invalid_label_fails_with_the_cpu_message():
    """A device-side assert poisons the CUDA context, so it runs in a child process."""
    script = ("import torch, fastops\n"
              "torch.ops.fastops.safe_cross_entropy(torch.randn(3, 4, device='cuda'), "
              "torch.tensor([0, 9, 1], device='cuda'), None, -100, 10.0, False)\n"
              "torch.cuda.synchronize()\n")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    assert "safe_cross_entropy: labels[1] = 9 is out of range [0, 4) and is not ignore_index (-100)" in child.stderr


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_debug_mode_raises_the_same_label_error_on_every_device(device):
    fastops.set_debug(True)
    with pytest.raises(RuntimeError, match=r"safe_cross_entropy: labels\[1\] = 9 is out of range \[0, 4\) and is "
                                           r"not ignore_index \(-100\)"):
        fastops.safe_cross_entropy(torch.randn(3, 4, device=device), torch.tensor([0, 9, 1], device=device))


@requires_cuda
def test_cuda_simota_invalid_num_gts_fails_with_the_cpu_message():
    script = ("import torch, fastops, sys\n"
              f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
              "from simota_cases import random_batch, YOLOX_CONFIG\n"
              "args, _ = random_batch(0, 128, [2, 1], pose=False)\n"
              "args = [t.cuda() for t in args[:5]] + [torch.tensor([2, 5], device='cuda')]\n"
              "fastops.simota_assign(*args, **YOLOX_CONFIG)\n"
              "torch.cuda.synchronize()\n")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    assert "simota_assign: num_gts[1] = 5 is outside [0, G = 2]" in child.stderr


# --------------------------------------------------------------------- 6. backward ops check every argument


def _softmax_backward_args():
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    _, lse, stats = torch.ops.fastops.safe_cross_entropy(logits, labels, None, -100, 10.0, False)
    return [torch.ones(3), logits, labels, None, lse, stats, -100, 10.0, False]


@pytest.mark.parametrize("position, value, match", [
    (0, torch.ones(4), r"grad_loss has shape \[4\], expected \[3\]"),
    (0, torch.ones(3, dtype=torch.long), "grad_loss must be floating point"),
    (4, torch.ones(5), r"lse has shape \[5\], expected \[3\]"),
    (4, torch.ones(3, dtype=torch.float16), "lse must be Float"),
    (5, torch.zeros(3, dtype=torch.long), r"stats must be int64 of shape \[2\]"),
    (5, torch.zeros(2), r"stats must be int64 of shape \[2\]"),
])
def test_softmax_backward_checks_grad_lse_and_stats(position, value, match):
    args = _softmax_backward_args()
    args[position] = value
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastops.safe_cross_entropy_backward(*args)


@pytest.mark.parametrize("position, name", [(0, "grad_loss"), (4, "lse"), (5, "stats")])
def test_softmax_backward_checks_devices(position, name):
    """The CPU kernel, called directly with one argument elsewhere (meta here), names it."""
    args = _softmax_backward_args()
    args[position] = args[position].to("meta")
    with pytest.raises(RuntimeError, match=f"{name} is on meta but logits are on cpu"):
        torch.ops.fastops.safe_cross_entropy_backward.default.redispatch(CPU_KEYSET, *args)


def test_sigmoid_backward_checks_grad_loss():
    logits, targets = torch.randn(3, 4), torch.rand(3, 4)
    args = [torch.ones(3, 4), logits, targets, None, -100, 10.0, False]
    for value, match in ((torch.ones(4, 3), "grad_loss has shape"), (torch.ones(3, 4).long(), "floating point"),
                         (torch.ones(3, 4, device="meta"), "grad_loss is on meta but logits are on cpu")):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fastops.safe_sigmoid_cross_entropy_backward.default.redispatch(
                CPU_KEYSET, value, *args[1:])


@requires_cuda
@pytest.mark.parametrize("name", ["grad_loss", "lse", "stats"])
def test_cuda_backward_rejects_host_tensors(name):
    logits, labels = torch.randn(3, 4, device="cuda"), torch.tensor([0, 1, 2], device="cuda")
    _, lse, stats = torch.ops.fastops.safe_cross_entropy(logits, labels, None, -100, 10.0, False)
    args = {"grad_loss": torch.ones(3, device="cuda"), "lse": lse, "stats": stats}
    args[name] = args[name].cpu()
    with pytest.raises(RuntimeError, match=f"{name} is on cpu but logits are on cuda"):
        torch.ops.fastops.safe_cross_entropy_backward(args["grad_loss"], logits, labels, None, args["lse"],
                                                      args["stats"], -100, 10.0, False)
    torch.cuda.synchronize()  # the context is still healthy


# --------------------------------------------------------------------- 7. CUDA arches, has_kernel, info


@pytest.mark.parametrize("capability, expected", [
    ((7, 5), "7.5"), ((8, 0), "8.0"), ((8, 6), "8.0"), ((8, 9), "8.0"), ((9, 0), "9.0"), ((10, 0), "10.0"),
    ((10, 3), "10.0"), ((11, 0), "11.0"), ((12, 0), "12.0+PTX"), ((12, 1), "12.0+PTX"), ((13, 0), "12.0+PTX"),
    ((7, 0), None), ((6, 1), None),
])
def test_default_arches_cover_turing_to_newest_with_ptx(capability, expected):
    setup_py = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    default = next(node.value.value for node in setup_py.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "DEFAULT_CUDA_ARCHES")
    assert _dispatch.kernel_arch_for(capability, default) == expected


def test_only_gpus_newer_than_every_cubin_need_the_ptx_jit():
    default = "7.5;8.0;9.0;10.0;11.0;12.0+PTX"
    assert not _dispatch.kernel_is_jit((12, 1), default)  # the 12.0 cubin of the "+PTX" entry runs
    assert not _dispatch.kernel_is_jit((8, 9), default)
    assert _dispatch.kernel_is_jit((13, 0), default)


def test_kernel_arch_for_old_default_misses_turing_and_blackwell():
    assert _dispatch.kernel_arch_for((7, 5), "8.0;9.0") is None
    assert _dispatch.kernel_arch_for((12, 0), "8.0;9.0") is None
    assert _dispatch.kernel_arch_for((9, 0), "9.0a") == "9.0a"
    assert _dispatch.kernel_arch_for((9, 1), "9.0a") is None


def test_has_kernel_falls_back_with_one_warning_naming_the_arch(monkeypatch):
    monkeypatch.setattr(fastops, "cuda_built", lambda: True)
    monkeypatch.setattr(fastops, "cuda_arches", lambda: "8.0;9.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (12, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Blackwell GPU")
    monkeypatch.setattr(_dispatch, "_warned_devices", set())
    with pytest.warns(RuntimeWarning, match=r"no CUDA kernel for Blackwell GPU \(sm_120\).*8\.0;9\.0"):
        assert not _dispatch.has_kernel(torch.device("cuda", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _dispatch.has_kernel(torch.device("cuda", 0))  # warned once


def test_info_command_prints_the_build():
    out = subprocess.run([sys.executable, "-m", "fastops", "info"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"fastops built against {torch.__version__}" in out.stdout
    assert f"instruction set taken: {fastops._C.cpu_isa()}" in out.stdout
    assert "CUDA kernels:" in out.stdout
    assert ("GPUs: none visible" in out.stdout) != CUDA


# --------------------------------------------------------------------- 8. one rule for NaN in SimOTA


def _nan_case(pose):
    args, kwargs = random_batch(7, 256, [6, 3], num_keypoints=17, pose=pose)
    boxes = args[1].clone()
    boxes[0, ::3] = NAN  # NaN IoU, and NaN cost, for a third of the priors of image 0
    boxes[1, 5:40, 2] = INF
    return (args[0], boxes, *args[2:]), kwargs


@pytest.mark.parametrize("pose", [True, False])
def test_simota_nan_is_never_picked_and_kernels_match_reference(pose):
    args, kwargs = _nan_case(pose)
    settings = RTMO_CONFIG if pose else YOLOX_CONFIG
    got = fastops.simota_assign(*args, **kwargs, **settings)
    assert_same_assignment(got, simota_assign_reference(*args, **kwargs, **settings))
    nan_priors = torch.zeros_like(got[0], dtype=torch.bool)
    nan_priors[0, ::3] = True
    if not pose:  # YOLOX: the IoU term makes every NaN-box pair's cost NaN
        assert (got[0][nan_priors] == 0).all()
    assert (got[0][~nan_priors] > 0).any()


def test_simota_nan_indicator_does_not_count_toward_dynamic_k():
    """A gt whose best candidates have NaN IoU takes its dynamic_k from the others (not NaN)."""
    args, kwargs = random_batch(11, 128, [1], pose=False)
    boxes = args[1].clone()
    boxes[0, :40] = NAN
    args = (args[0], boxes, *args[2:])
    got = fastops.simota_assign(*args, **YOLOX_CONFIG)
    assert_same_assignment(got, simota_assign_reference(*args, **YOLOX_CONFIG))
    assert not torch.isnan(got[1]).any()


@requires_cuda
@pytest.mark.parametrize("pose", [True, False])
def test_cuda_simota_nan_rule_matches_cpu(pose):
    args, kwargs = _nan_case(pose)
    settings = RTMO_CONFIG if pose else YOLOX_CONFIG
    cpu = fastops.simota_assign(*args, **kwargs, **settings)
    gpu = fastops.simota_assign(*[t.cuda() for t in args], **{k: t.cuda() for k, t in kwargs.items()}, **settings)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=0, equal_nan=True)

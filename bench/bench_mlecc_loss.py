"""Forward+backward benchmarks of the MLECC loss: fastops vs stock mmpose, K=17, bins (192, 256).

Two groups per N, each holding fastops and stock in the same run:
  * ``probs-N``: ``LogMLECCLoss`` vs mmpose ``MLECCLoss`` on the same heatmaps and targets;
  * ``logits-N``: ``fastops.mlecc_loss_from_logits`` vs stock DCC softmax + DCC target generation
    + ``MLECCLoss`` (RTMOHead's loss_mle path).
Each benchmark also records the peak memory of one forward+backward (``extra_info['peak_mib']``,
see bench/conftest.py).

    PYTHONPATH=. python -m pytest bench/bench_mlecc_loss.py --benchmark-group-by=group \
        --benchmark-columns=min,median,mean,rounds
"""
import pytest
import torch

import fastops
from fastops.reference import mlecc_loss as ref

K = 17
BINS = (192, 256)
SIZES = (64, 512, 4096)
ROUNDS = {64: 20, 512: 8, 4096: 3}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_INPUTS = ("logits_x", "logits_y", "sigmas", "bbox_cs")


def mmpose_modules():
    from mmpose.models.heads.hybrid_heads.rtmo_head import DCC
    from mmpose.registry import MODELS

    import fastops.mm  # noqa: F401  (registers LogMLECCLoss)
    gau_cfg = dict(s=128, expansion_factor=2, dropout_rate=0.0, drop_path=0.0, act_fn="SiLU", pos_enc="add")
    dcc = DCC(in_channels=8, num_keypoints=K, feat_channels=8, num_bins=BINS, gau_cfg=gau_cfg).to(DEVICE)
    stock = MODELS.build(dict(type="MLECCLoss", use_target_weight=True))
    ours = MODELS.build(dict(type="LogMLECCLoss", use_target_weight=True))
    return dcc, stock, ours


def logits_inputs(n, device=DEVICE):
    """Fresh leaves (gradients to logits, sigmas and bbox_cs as in RTMO) for one round."""
    case = {name: t.to(device) for name, t in ref.random_rtmo_case(n, seed=n).items()}
    return {name: t.requires_grad_(name in GRAD_INPUTS) for name, t in case.items()}


def probs_inputs(dcc, n):
    case = logits_inputs(n)
    with torch.no_grad():
        probs = dcc._apply_softmax(case["logits_x"], case["logits_y"])
        targets = dcc.generate_target_heatmap(case["keypoints"], case["bbox_cs"], case["sigmas"], case["areas"])
    return [t.requires_grad_() for t in (*probs, *targets)], case["weight"]


def make_step(variant, modules):
    """A function running one forward+backward of `variant` on the inputs of `make_inputs`."""
    dcc, stock, ours = modules
    if variant in ("stock_mlecc", "log_mlecc"):
        module = stock if variant == "stock_mlecc" else ours

        def step(tensors, weight):
            module(tensors[:2], tensors[2:], weight).sum().backward()
        return step, lambda n: probs_inputs(dcc, n)

    if variant == "stock_dcc_mlecc":
        def step(case):
            probs = dcc._apply_softmax(case["logits_x"], case["logits_y"])
            targets = dcc.generate_target_heatmap(case["keypoints"], case["bbox_cs"], case["sigmas"], case["areas"])
            stock(probs, targets, case["weight"]).sum().backward()
    else:
        def step(case):
            loss, _ = fastops.mlecc_loss_from_logits(**case, x_bins=dcc.x_bins, y_bins=dcc.y_bins)
            loss.mean(1).sum().backward()
    return step, logits_inputs


@pytest.fixture(scope="module")
def modules():
    pytest.importorskip("mmpose")
    return mmpose_modules()


def run_benchmark(measure, benchmark, modules, variant, n):
    step, make_inputs = make_step(variant, modules)
    args = _as_args(make_inputs(n))
    benchmark.extra_info.update(op=f"mlecc_{benchmark.group.split('-')[0]}", impl=variant,
                                series=f"{variant} {DEVICE}", size=n, size_label="N (K=17, bins 192x256)")
    leaves = [t for t in torch.utils._pytree.tree_leaves(args) if isinstance(t, torch.Tensor) and t.requires_grad]

    def fresh_step():  # gradients are allocated anew each call, as in training
        for leaf in leaves:
            leaf.grad = None
        step(*args)

    measure(fresh_step, torch.device(DEVICE), rounds=ROUNDS[n])


def _as_args(inputs):
    return inputs if isinstance(inputs, tuple) else (inputs,)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", ["stock_mlecc", "log_mlecc"])
def test_probs(measure, benchmark, modules, variant, n):
    benchmark.group = f"probs-N{n}"
    run_benchmark(measure, benchmark, modules, variant, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", ["stock_dcc_mlecc", "fused_from_logits"])
def test_logits(measure, benchmark, modules, variant, n):
    benchmark.group = f"logits-N{n}"
    run_benchmark(measure, benchmark, modules, variant, n)


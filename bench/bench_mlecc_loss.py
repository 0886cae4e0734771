"""Forward+backward benchmarks of the MLECC loss: fastops vs stock mmpose, K=17, bins (192, 256).

Two groups per N, each holding fastops and stock in the same run:
  * ``probs-N``: ``LogMLECCLoss`` vs mmpose ``MLECCLoss`` on the same heatmaps and targets;
  * ``logits-N``: ``fastops.mlecc_loss_from_logits`` vs stock DCC softmax + DCC target generation
    + ``MLECCLoss`` (RTMOHead's loss_mle path).
Each benchmark also records the peak memory of one forward+backward in ``extra_info``
(``peak_mib``: CUDA max_memory_allocated, or on CPU the growth of the process' peak RSS over the
inputs, measured in a fresh subprocess after a warm-up run, with glibc's mmap threshold fixed).

    PYTHONPATH=. python -m pytest bench/bench_mlecc_loss.py --benchmark-group-by=group \
        --benchmark-columns=min,median,mean,rounds
"""
import json
import os
import re
import subprocess
import sys

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


def logits_inputs(n):
    """Fresh leaves (gradients to logits, sigmas and bbox_cs as in RTMO) for one round."""
    case = {name: t.to(DEVICE) for name, t in ref.random_rtmo_case(n, seed=n).items()}
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


def _status_kib(field):
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1))


def measure_peak_mib(variant, n):
    """Peak memory of one forward+backward after a warm-up run (CUDA allocator or CPU RSS)."""
    step, make_inputs = make_step(variant, mmpose_modules())
    step(*_as_args(make_inputs(n)))
    args = _as_args(make_inputs(n))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(*args)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak RSS (VmHWM)
        f.write("5")
    base = _status_kib("VmRSS")
    step(*args)
    return (_status_kib("VmHWM") - base) / 1024


def _as_args(inputs):
    return inputs if isinstance(inputs, tuple) else (inputs,)


def peak_in_subprocess(variant, n):
    # A fixed mmap threshold makes glibc return every large freed block to the OS, so the RSS
    # follows the live tensors instead of the allocator's retained heap.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, variant, str(n)], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def modules():
    pytest.importorskip("mmpose")
    return mmpose_modules()


def run_benchmark(benchmark, modules, variant, n):
    step, make_inputs = make_step(variant, modules)

    def setup():
        return _as_args(make_inputs(n)), {}

    def timed(*args):
        step(*args)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(device=DEVICE, torch=torch.__version__, n=n, k=K, bins=BINS,
                                peak_mib=round(peak_in_subprocess(variant, n), 1))
    benchmark.pedantic(timed, setup=setup, rounds=ROUNDS[n], warmup_rounds=1)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", ["stock_mlecc", "log_mlecc"])
def test_probs(benchmark, modules, variant, n):
    benchmark.group = f"probs-N{n}"
    run_benchmark(benchmark, modules, variant, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", ["stock_dcc_mlecc", "fused_from_logits"])
def test_logits(benchmark, modules, variant, n):
    benchmark.group = f"logits-N{n}"
    run_benchmark(benchmark, modules, variant, n)


if __name__ == "__main__":
    print(json.dumps(measure_peak_mib(sys.argv[1], int(sys.argv[2]))))

"""Every instruction-set path of the CPU kernels gives the same results. The kernels pick AVX-512
or AVX2 paths at run time; FASTOPS_CPU_ISA caps that choice, so each path runs here in a
subprocess and is compared with the uncapped one."""
import os
import subprocess
import sys

import pytest
import torch

# Forward and backward of the ops with run-time ISA paths (cross-entropy rows, MLECC rows), saved;
# argv: the output file, this directory.
SCRIPT = r'''
import sys
import torch
import fastops
from fastops.reference.mlecc_loss import random_rtmo_case

out = {}
g = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.float32):
    logits = torch.randn(301, 81, generator=g) * 30
    logits[::7, 3] = float("inf")
    logits[::11, 5] = 65504.0
    logits = logits.to(dtype).requires_grad_()
    labels = torch.randint(0, 81, (301,), generator=g)
    loss, num_clamped, _ = fastops.safe_cross_entropy(logits, labels)
    loss.sum().backward()
    out[f"ce_{dtype}"] = (loss.detach(), logits.grad, num_clamped)

# Every path of the cross-entropy kernels (tests/ce_cases.py), forward and backward.
sys.path.insert(0, sys.argv[2])
import ce_cases
for dtype in ce_cases.DTYPES:
    for c in ce_cases.SOFTMAX_CS:
        logits, labels = ce_cases.softmax_case(c, dtype)
        for mode in ("zero", "straight_through"):
            x = logits.clone().requires_grad_()
            loss, num_clamped, num_nan = fastops.safe_cross_entropy(x, labels, clamp_grad=mode)
            loss.sum().backward()
            out[f"ce_paths_{dtype}_{c}_{mode}"] = (loss.detach(), x.grad, num_clamped, num_nan)
        logits, labels = ce_cases.clean_softmax_case(c, dtype)
        x = logits.clone().requires_grad_()
        loss, num_clamped, num_nan = fastops.safe_cross_entropy(x, labels)
        loss.sum().backward()
        out[f"ce_clean_{dtype}_{c}"] = (loss.detach(), x.grad, num_clamped, num_nan)
    for c in ce_cases.SIGMOID_CS:
        logits, labels, probs, pos_weight = ce_cases.sigmoid_case(c, dtype)
        for name, targets, weight, mode in (("index", labels, None, "zero"),
                                            ("float", probs, pos_weight, "straight_through")):
            x = logits.clone().requires_grad_()
            loss, num_clamped, num_nan = fastops.safe_sigmoid_cross_entropy(x, targets, weight, clamp_grad=mode)
            loss.sum().backward()
            out[f"bce_{dtype}_{c}_{name}"] = (loss.detach(), x.grad, num_clamped, num_nan)

case = random_rtmo_case(37, seed=1)
grad_names = ("logits_x", "logits_y", "sigmas", "bbox_cs")
inputs = {name: t.requires_grad_(name in grad_names) for name, t in case.items()}
loss, _ = fastops.mlecc_loss_from_logits(**inputs)
loss.sum().backward()
out["mlecc_logits"] = (loss.detach(),) + tuple(inputs[name].grad for name in grad_names)

probs = [torch.rand(37, 17, w, generator=g).requires_grad_() for w in (192, 256, 192, 256)]
loss, _ = fastops.mlecc_loss_from_probs(*probs)
loss.sum().backward()
out["mlecc_probs"] = (loss.detach(),) + tuple(p.grad for p in probs)
torch.save(out, sys.argv[1])
'''


def results_under(isa, tmp_path):
    path = tmp_path / f"{isa or 'default'}.pt"
    env = dict(os.environ)
    env.pop("FASTOPS_CPU_ISA", None)
    if isa is not None:
        env["FASTOPS_CPU_ISA"] = isa
    subprocess.run([sys.executable, "-c", SCRIPT, str(path), os.path.dirname(__file__)], env=env, check=True,
                   timeout=300)
    return torch.load(path)


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_capped_isa_paths_match_the_default(isa, tmp_path):
    default, capped = results_under(None, tmp_path), results_under(isa, tmp_path)
    assert default.keys() == capped.keys()
    for key, expected in default.items():
        for got, want in zip(capped[key], expected):
            # The paths differ in summation order (8 vs 16 lanes, vector vs scalar) and in FMA
            # use; gradients that are differences of probabilities (r - p) carry that rounding
            # relative to the row, so the tolerance scales with the largest value. fp16/bf16
            # gradients, rounded from it, may then differ in their last bit.
            finite = want[torch.isfinite(want)] if want.is_floating_point() else want
            scale = float(finite.abs().max()) if want.is_floating_point() and finite.numel() else 0.0
            rtol = torch.finfo(want.dtype).eps if want.dtype in (torch.float16, torch.bfloat16) else 1e-5
            torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True, msg=key)


def test_unknown_isa_name_is_an_error():
    env = dict(os.environ, FASTOPS_CPU_ISA="avx3")
    code = "import torch, fastops; fastops.safe_cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "FASTOPS_CPU_ISA must be baseline, avx2 or avx512, got 'avx3'" in run.stderr

"""Every fastops kernel, forward and backward, on small and edge-case inputs: the program that
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, initcheck, synccheck).

    python scripts/gpu_check/sanitizer_cases.py [--device cuda|cpu]

Cross-entropy, softmax and sigmoid (index and float targets), every logits dtype, both clamp_grad
modes: N = 0, C = 1, every row ignored, ±inf / NaN / 65504 logits, C = 1204, transposed logits.
MLECC from logits and from probabilities: N = 0, one bin, bin counts off the warp size, rows with
non-finite or negative inputs, no weight, float64. SimOTA (RTMO, IoU + visibility and YOLOX
settings): images without gts, G = 0, B = 0, P = 0 and 1, gts far from every prior, tiny boxes,
NaN / ±inf predictions. Dynamic soft-label assignment: the same edges, many classes, crowded
images, given gt centres. `--device cpu` makes the same calls on the CPU kernels, which checks the
cases without a GPU. Exit status: 0 done, 3 no CUDA device.
"""
import argparse
import sys
from itertools import product

import torch

from gpu_check_common import NO_CUDA_DEVICE, cuda_missing

import fastops  # after gpu_check_common, which puts the checkout (and tests/) on sys.path
from fastops.reference.mlecc_loss import random_rtmo_case
from mlecc_cases import with_invalid_rows
from soft_label_cases import RTMDET_CONFIG
from soft_label_cases import random_batch as soft_label_batch
from simota_cases import (IOU_VIS_CONFIG, RTMO_CONFIG, YOLOX_CONFIG, batch_to, first_priors, no_images, random_batch,
                          with_nonfinite, without_gt_slots)

INF, NAN = float("inf"), float("nan")
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
CLAMP_GRAD_MODES = ("zero", "straight_through")
MLECC_GRAD_INPUTS = ("logits_x", "logits_y", "sigmas", "bbox_cs")


def leaf(t, device, requires_grad=True):
    """A fresh leaf copy of `t` on `device` (None stays None)."""
    return None if t is None else t.detach().to(device).requires_grad_(requires_grad)


# ------------------------------------------------------------------------------- cross-entropy


def random_labels(logits, gen):
    labels = torch.randint(0, logits.shape[1], (logits.shape[0],), generator=gen)
    labels[::3] = -100
    return labels


def cross_entropy_cases():
    """(logits [N, C] float32, labels [N]) pairs, each an edge the kernels must handle."""
    gen = torch.Generator().manual_seed(0)
    wild = torch.randn(9, 7, generator=gen) * 50
    wild[0, 0], wild[1, 1], wild[2, 2], wild[3] = INF, -INF, NAN, 65504
    logits = [torch.empty(0, 5), torch.randn(7, 1, generator=gen), wild, torch.randn(3, 1204, generator=gen) * 8,
              torch.randn(40, 33, generator=gen).t()]
    cases = [(x, random_labels(x, gen)) for x in logits]
    return cases + [(torch.randn(6, 4, generator=gen), torch.full((6,), -100))]


def run_cross_entropy(device):
    calls = 0
    for logits, labels in cross_entropy_cases():
        num_classes = logits.shape[1]
        weight = (torch.rand(num_classes) + 0.5).to(device)
        background = torch.where(labels == 0, num_classes, labels)  # sigmoid: index C = background
        for dtype, clamp_grad in product(LOGIT_DTYPES, CLAMP_GRAD_MODES):
            x = leaf(logits.to(dtype), device)
            calls += 3
            for op, targets in ((fastops.safe_cross_entropy, labels),
                                (fastops.safe_sigmoid_cross_entropy, background),
                                (fastops.safe_sigmoid_cross_entropy, torch.rand(logits.shape).to(dtype))):
                op(x, targets.to(device), weight, clamp_grad=clamp_grad).loss.sum().backward()
    return calls


# ------------------------------------------------------------------------------------- MLECC


def mlecc_cases():
    """Keyword arguments of mlecc_loss_from_logits (float32 unless stated)."""
    rtmo = random_rtmo_case(3, seed=0)
    unweighted = dict(random_rtmo_case(4, seed=1, k=3, bins=(33, 65)), weight=None)
    return [rtmo, random_rtmo_case(0, seed=2), random_rtmo_case(5, seed=3, k=2, bins=(1, 3)), unweighted,
            with_invalid_rows(random_rtmo_case(4, seed=4, k=3, bins=(31, 40)))[0],
            random_rtmo_case(2, seed=5, dtype=torch.float64, k=4, bins=(20, 24))]


def probs_cases():
    """(pred_x, pred_y, target_x, target_y, weight) of mlecc_loss_from_probs."""
    gen = torch.Generator().manual_seed(6)

    def heatmaps(n, k, bins):
        return [torch.rand(n, k, w, generator=gen) for w in (*bins, *bins)]

    invalid = heatmaps(3, 2, (5, 7))
    invalid[0][0, 0, 1], invalid[1][1, 1, 0], invalid[3][2, 0, 4] = NAN, INF, -1.0
    return [(*heatmaps(3, 17, (192, 256)), torch.rand(3, 17, generator=gen)), (*heatmaps(0, 17, (8, 8)), None),
            (*heatmaps(4, 1, (1, 33)), None), (*invalid, torch.ones(3, 2))]


def run_mlecc(device):
    calls = 0
    for case in mlecc_cases():
        inputs = {name: leaf(t, device, name in MLECC_GRAD_INPUTS) for name, t in case.items()}
        fastops.mlecc_loss_from_logits(**inputs)[0].sum().backward()
        calls += 1
    for *heatmaps, weight in probs_cases():
        loss, _ = fastops.mlecc_loss_from_probs(*(leaf(h, device) for h in heatmaps), leaf(weight, device, False))
        loss.sum().backward()
        calls += 1
    return calls


# ------------------------------------------------------------------------------------ SimOTA


def simota_cases():
    """(args, kwargs, settings) of simota_assign: 64x64 images (P = 20) unless stated."""
    rtmo = random_batch(0, 64, [0, 1, 5], 17)
    five_keypoints = random_batch(1, 64, [3, 0, 2], 5)
    yolox = random_batch(2, 160, [40, 7], num_classes=3, pose=False)  # P = 125, G above candidate_topk
    return [(*rtmo, RTMO_CONFIG), (*five_keypoints, IOU_VIS_CONFIG), (*yolox, YOLOX_CONFIG),
            (*random_batch(3, 64, [4, 2], 17, kind="nowhere"), RTMO_CONFIG),
            (*random_batch(4, 64, [6, 1], 17, kind="tiny"), RTMO_CONFIG),
            (*random_batch(5, 64, [2, 3], 17, kind="outside"), IOU_VIS_CONFIG),
            (*with_nonfinite(*random_batch(6, 64, [5, 4], 17), seed=6, rate=0.05), RTMO_CONFIG),
            (*with_nonfinite(*yolox, seed=7, rate=0.05), YOLOX_CONFIG),
            (*without_gt_slots(*rtmo), RTMO_CONFIG), (*no_images(*rtmo), RTMO_CONFIG),
            (*first_priors(*rtmo, 0), RTMO_CONFIG), (*first_priors(*rtmo, 1), RTMO_CONFIG),
            (*first_priors(*yolox, 1), YOLOX_CONFIG)]


def run_simota(device):
    cases = simota_cases()
    for args, kwargs, settings in cases:
        args, kwargs = batch_to(args, kwargs, device)
        fastops.simota_assign(*args, **kwargs, **settings)
    return len(cases)


# ------------------------------------------------------------------- dynamic soft-label assignment


def soft_label_cases():
    """(args, keyword arguments) of dynamic_soft_label_assign: 64x64 images (P = 84) unless stated."""
    base = soft_label_batch(0, 64, [0, 1, 5], 80)
    crowded = soft_label_batch(1, 160, [120, 7], 3)  # P = 525, G far above topk
    nonfinite, _ = with_nonfinite(soft_label_batch(2, 64, [5, 4], 7), {}, seed=2, rate=0.05)
    priors, boxes, scores, gt_boxes, labels, num_gts = base
    centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2 + 3
    return [(base, {}), (crowded, {}), (nonfinite, {}), (base, dict(gt_centers=centres)),
            (soft_label_batch(3, 64, [4, 2], 1, kind="nowhere"), {}),
            (soft_label_batch(4, 64, [6, 1], 80, kind="tiny"), dict(topk=1, iou_weight=0.0)),
            ((priors, boxes, scores, gt_boxes[:, :0], labels[:, :0], torch.zeros_like(num_gts)), {}),
            ((priors, boxes[:0], scores[:0], gt_boxes[:0], labels[:0], num_gts[:0]), {}),
            ((priors[:0], boxes[:, :0], scores[:, :0], gt_boxes, labels, num_gts), {}),
            ((priors[:1], boxes[:, :1], scores[:, :1], gt_boxes, labels, num_gts), {})]


def run_soft_label(device):
    cases = soft_label_cases()
    for args, kwargs in cases:
        kwargs = {name: t.to(device) if torch.is_tensor(t) else t for name, t in kwargs.items()}
        fastops.dynamic_soft_label_assign(*(a.to(device) for a in args), **{**RTMDET_CONFIG, **kwargs})
    return len(cases)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    if cuda_missing(args.device):
        return NO_CUDA_DEVICE
    device = torch.device(args.device)
    for op, run in (("cross-entropy", run_cross_entropy), ("mlecc", run_mlecc), ("simota_assign", run_simota),
                    ("dynamic_soft_label_assign", run_soft_label)):
        print(f"{op}: {run(device)} calls on {device}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("sanitizer cases: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

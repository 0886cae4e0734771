"""Assigner bitwise sweep: the CUDA kernel of simota_assign or dynamic_soft_label_assign against its
CPU kernel on thousands of seeded random images.

    python scripts/gpu_check/assign_sweep.py [--op simota|soft_label] [--images 4096] [--batch 32]
                                             [--device cuda|cpu]

simota: batch i (seed i) holds 640x640 images with P = 2000 priors (strides 16, 32), every P_8400_EVERY-th
P = 8400 (8, 16, 32); batches cycle through the RTMO, IoU + visibility and YOLOX (C = 80) settings
of tests/simota_cases.py, K = 17 and 5, and gts placed normally, tiny, partly outside the image or
far from every prior; each image draws its number of gts in [0, 40]. Every LARGE_EVERY-th batch
has LARGE_IMAGES images with up to 500 gts, every NONFINITE_EVERY-th NaN / ±inf predictions.
soft_label: the same batches with C = 80 class logits (tests/soft_label_cases.py), RTMDet settings
and every third batch radius 2, topk 5, IoU weight 1. Building the inputs takes most of the time: ~25 s of one CPU core for the default 4096 images.
gt_inds and labels must be identical, max_overlaps equal bit for bit. Prints the count of each
kind of difference and the first differing images. Exit status: 0 identical, 1 any difference,
3 no CUDA device. `--device cpu` compares the CPU kernel with itself: a check of the sweep
itself without a GPU.
"""
import argparse
import sys
import time

import torch

from gpu_check_common import NO_CUDA_DEVICE, cuda_missing

import fastops  # after gpu_check_common, which puts the checkout (and tests/) on sys.path
from simota_cases import IOU_VIS_CONFIG, RTMO_CONFIG, YOLOX_CONFIG, batch_to, random_batch, with_nonfinite
from soft_label_cases import RTMDET_CONFIG
from soft_label_cases import random_batch as soft_label_batch

SETTINGS = ((RTMO_CONFIG, True), (IOU_VIS_CONFIG, True), (YOLOX_CONFIG, False))  # (settings, pose)
SOFT_LABEL_SETTINGS = (RTMDET_CONFIG, RTMDET_CONFIG, dict(soft_center_radius=2.0, topk=5, iou_weight=1.0))
KINDS = ('normal', 'tiny', 'normal', 'outside', 'normal', 'nowhere')
MAX_GTS, LARGE_GTS, LARGE_IMAGES = 40, 500, 3
P_8400_EVERY, LARGE_EVERY, NONFINITE_EVERY = 4, 7, 5  # coprime with 3 settings and each other
OUTPUTS = ('gt_inds', 'max_overlaps', 'labels')
SHOWN_DIFFERENCES = 10


def sweep_gts(index: int, batch_size: int):
    """Gts per image of batch `index`: [0, MAX_GTS], every LARGE_EVERY-th batch a few up to LARGE_GTS."""
    gen = torch.Generator().manual_seed(index)
    num_gts = torch.randint(0, MAX_GTS + 1, (batch_size, ), generator=gen)
    if index % LARGE_EVERY == 0:  # a few images with many gts, the first with LARGE_GTS
        num_gts[:LARGE_IMAGES].random_(MAX_GTS, LARGE_GTS + 1, generator=gen)
        num_gts[0] = LARGE_GTS
    return num_gts.tolist()


def sweep_batch(index: int, batch_size: int):
    """(args, kwargs, settings) of simota batch `index`, seeded by it."""
    settings, pose = SETTINGS[index % 3]
    strides = (8, 16, 32) if index % P_8400_EVERY == P_8400_EVERY - 1 else (16, 32)
    args, kwargs = random_batch(index, 640, sweep_gts(index, batch_size), (17, 5)[index // 12 % 2],
                                num_classes=1 if pose else 80, pose=pose, kind=KINDS[index // 24 % len(KINDS)],
                                strides=strides)
    if index % NONFINITE_EVERY == NONFINITE_EVERY - 1:
        args, kwargs = with_nonfinite(args, kwargs, seed=index)
    return args, kwargs, settings


def soft_label_sweep_batch(index: int, batch_size: int):
    """(args, {}, settings) of dynamic soft-label batch `index`, seeded by it."""
    strides = (8, 16, 32) if index % P_8400_EVERY == P_8400_EVERY - 1 else (16, 32)
    args = soft_label_batch(index, 640, sweep_gts(index, batch_size), 80, kind=KINDS[index // 24 % len(KINDS)],
                            strides=strides)
    if index % NONFINITE_EVERY == NONFINITE_EVERY - 1:
        args, _ = with_nonfinite(args, {}, seed=index)
    return args, {}, SOFT_LABEL_SETTINGS[index % 3]


OPS = dict(simota=(sweep_batch, 'simota_assign'), soft_label=(soft_label_sweep_batch, 'dynamic_soft_label_assign'))


def differing_priors(expected, got):
    """[3, B]: per output (gt_inds, max_overlaps bits, labels) and image, the priors that differ."""
    inds, overlaps, labels = (t.cpu() for t in got)
    return torch.stack([(expected[0] != inds).sum(1),
                        (expected[1].view(torch.int32) != overlaps.view(torch.int32)).sum(1),
                        (expected[2] != labels).sum(1)])


def sweep(op: str, num_images: int, batch_size: int, device: torch.device):
    """(images with a difference [3], priors that differ [3], first differences, priors assigned)."""
    make_batch, op_name = OPS[op]
    assign = getattr(fastops, op_name)
    images_differing, priors_differing = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    first, assigned = [], 0
    for index in range((num_images + batch_size - 1) // batch_size):
        args, kwargs, settings = make_batch(index, min(batch_size, num_images - index * batch_size))
        expected = assign(*args, **kwargs, **settings)
        device_args, device_kwargs = batch_to(args, kwargs, device)
        counts = differing_priors(expected, assign(*device_args, **device_kwargs, **settings))
        images_differing += (counts > 0).sum(1)
        priors_differing += counts.sum(1)
        assigned += int((expected[0] > 0).sum())
        first += [(index, image) for image in (counts.sum(0) > 0).nonzero()[:, 0].tolist()]
    return images_differing, priors_differing, first[:SHOWN_DIFFERENCES], assigned


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--op', choices=tuple(OPS), default='simota')
    parser.add_argument('--images', type=int, default=4096)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    args = parser.parse_args(argv)
    if cuda_missing(args.device):
        return NO_CUDA_DEVICE
    start = time.perf_counter()
    images, priors, first, assigned = sweep(args.op, args.images, args.batch, torch.device(args.device))
    batches = (args.images + args.batch - 1) // args.batch
    large, nonfinite = (batches + LARGE_EVERY - 1) // LARGE_EVERY, batches // NONFINITE_EVERY
    print(f'{OPS[args.op][1]} sweep, {args.device} vs cpu kernel: {args.images} images in {batches} batches (P 2000, every '
          f'{P_8400_EVERY}th 8400; G 0-{MAX_GTS}, {large} batches with up to {LARGE_GTS} gts, {nonfinite} with NaN/inf '
          f'predictions; {assigned} priors assigned), {time.perf_counter() - start:.1f} s')
    for name, num_images, num_priors in zip(OUTPUTS, images.tolist(), priors.tolist()):
        print(f'  {name} differ: {num_images} images, {num_priors} priors')
    if first:
        print('  first differing (batch = seed, image): ' + ', '.join(f'({b}, {i})' for b, i in first))
    print('result: identical' if not first else 'result: DIFFERENT')
    return 1 if first else 0


if __name__ == '__main__':
    sys.exit(main())

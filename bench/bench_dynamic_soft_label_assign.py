"""Dynamic soft-label (RTMDet) assignment: fastops (one batched call) vs the stock mmdet
DynamicSoftLabelAssigner called per image, as RTMDet's head does, per image and per batch of 32.

Run: python -m fastops bench bench/bench_dynamic_soft_label_assign.py
Groups are `P=8400 G=<gts per image> B=<images>`; C=80, RTMDet settings (radius 3, topk 13, IoU weight 3).
"""
import os
import sys

import pytest
import torch

import fastops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from soft_label_cases import RTMDET_CONFIG, random_batch  # noqa: E402

SLOW_ROUNDS = 3  # the stock rows (seconds per call at B=32)
WORKLOADS = [(g, b) for g in (20, 100) for b in (1, 32)]


def _batch(num_gts, batch):
    return random_batch(0, 640, [num_gts] * batch, 80)


def _label(benchmark, impl, num_gts, batch, device='cpu'):
    benchmark.group = f'dynamic_soft_label_assign P=8400 G={num_gts} B={batch} {device}'
    benchmark.extra_info.update(op='dynamic_soft_label_assign', impl=impl, series=f'{impl} B={batch} {device}',
                                size=8400 * num_gts, size_label=f'P·G (batch of {batch})')


@pytest.mark.parametrize('num_gts, batch', WORKLOADS)
def test_fastops_batched(measure, benchmark, num_gts, batch):
    _label(benchmark, 'fastops', num_gts, batch)
    args = _batch(num_gts, batch)
    measure(lambda: fastops.dynamic_soft_label_assign(*args, **RTMDET_CONFIG), rounds=10)


@pytest.mark.parametrize('num_gts, batch', WORKLOADS)
def test_stock_mmdet_per_image(measure, benchmark, num_gts, batch):
    pytest.importorskip('mmdet')
    from mmdet.models.task_modules.assigners import DynamicSoftLabelAssigner
    from mmengine.structures import InstanceData
    _label(benchmark, 'mmdet', num_gts, batch)
    priors, boxes, scores, gt_boxes, labels, _ = _batch(num_gts, batch)
    stock = DynamicSoftLabelAssigner(**RTMDET_CONFIG)
    images = [(InstanceData(priors=priors, bboxes=boxes[b], scores=scores[b]),
               InstanceData(bboxes=gt_boxes[b], labels=labels[b])) for b in range(batch)]
    measure(lambda: [stock.assign(pred, gt) for pred, gt in images], rounds=SLOW_ROUNDS, warmup_rounds=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('num_gts, batch', WORKLOADS)
def test_fastops_batched_cuda(measure, benchmark, num_gts, batch):
    _label(benchmark, 'fastops', num_gts, batch, 'cuda')
    args = [a.cuda() for a in _batch(num_gts, batch)]
    measure(lambda: fastops.dynamic_soft_label_assign(*args, **RTMDET_CONFIG), torch.device('cuda'), rounds=20,
            warmup_rounds=2)

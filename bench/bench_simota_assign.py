"""SimOTA assignment of a 32-image batch: fastops (one batched call) vs the stock mmpose
SimOTAAssigner called per image, as RTMO's head does, vs the pure-PyTorch reference.

Run: PYTHONPATH=. python -m pytest bench/bench_simota_assign.py --benchmark-group-by=group
Groups are `P=<priors> G=<gts per image>`; RTMO settings (OKS dynamic-k, keypoint centres), K=17.
"""
import os
import sys

import pytest
import torch

import fastops
from fastops.reference.simota_assign import simota_assign_reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from simota_cases import RTMO_CONFIG, batch_to, random_batch  # noqa: E402

BATCH = 32
SLOW_ROUNDS = 3  # the stock and reference rows (seconds per call at the big workloads)
STRIDES = {2000: (16, 32), 8400: (8, 16, 32)}  # priors of a 640x640 image
WORKLOADS = [(p, g) for p in (2000, 8400) for g in (20, 100)]


def _batch(num_priors, num_gts):
    return random_batch(0, 640, [num_gts] * BATCH, 17, strides=STRIDES[num_priors])


def _stock_per_image(args, kwargs):
    from mmengine.structures import InstanceData
    from mmpose.registry import TASK_UTILS
    stock = TASK_UTILS.build(dict(type='SimOTAAssigner', **RTMO_CONFIG, oks_calculator=dict(type='PoseOKS')))
    priors, boxes, scores, gt_boxes, labels, _ = args
    images = []
    for b in range(BATCH):
        pred = InstanceData(priors=priors, bboxes=boxes[b], scores=scores[b], keypoints=kwargs['pred_keypoints'][b],
                            keypoints_visible=kwargs['pred_keypoints_visible'][b])
        gt = InstanceData(bboxes=gt_boxes[b], labels=labels[b], keypoints=kwargs['gt_keypoints'][b],
                          keypoints_visible=kwargs['gt_keypoints_visible'][b], areas=kwargs['gt_areas'][b])
        images.append((pred, gt))
    return lambda: [stock.assign(pred, gt) for pred, gt in images]


def _label(benchmark, impl, num_priors, num_gts, device='cpu'):
    benchmark.group = f'simota_assign P={num_priors} G={num_gts} {device}'
    benchmark.extra_info.update(op='simota_assign', impl=impl, series=f'{impl} {device}',
                                size=num_priors * num_gts, size_label='P·G (batch of 32)')


@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_fastops_batched(measure, benchmark, num_priors, num_gts):
    _label(benchmark, 'fastops', num_priors, num_gts)
    args, kwargs = _batch(num_priors, num_gts)
    measure(lambda: fastops.simota_assign(*args, **kwargs, **RTMO_CONFIG), rounds=10)


@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_stock_mmpose_per_image(measure, benchmark, num_priors, num_gts):
    pytest.importorskip('mmpose')
    import mmpose.models  # noqa: F401  (registers SimOTAAssigner and PoseOKS)
    _label(benchmark, 'mmpose', num_priors, num_gts)
    args, kwargs = _batch(num_priors, num_gts)
    measure(_stock_per_image(args, kwargs), rounds=SLOW_ROUNDS, warmup_rounds=0)


@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_reference(measure, benchmark, num_priors, num_gts):
    _label(benchmark, 'reference', num_priors, num_gts)
    args, kwargs = _batch(num_priors, num_gts)
    measure(lambda: simota_assign_reference(*args, **kwargs, **RTMO_CONFIG), rounds=SLOW_ROUNDS,
            warmup_rounds=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_fastops_batched_cuda(measure, benchmark, num_priors, num_gts):
    _label(benchmark, 'fastops', num_priors, num_gts, 'cuda')
    args, kwargs = batch_to(*_batch(num_priors, num_gts), 'cuda')
    measure(lambda: fastops.simota_assign(*args, **kwargs, **RTMO_CONFIG), torch.device('cuda'), rounds=20,
            warmup_rounds=2)

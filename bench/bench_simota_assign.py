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
from simota_cases import RTMO_CONFIG, random_batch  # noqa: E402

BATCH = 32
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


def _rounds(num_priors, num_gts):
    """Rounds for the slow (stock, reference) rows: one at the big workloads to keep the run short."""
    return 3 if num_priors * num_gts <= 2000 * 20 else 1


@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_fastops_batched(benchmark, num_priors, num_gts):
    benchmark.group = f'P={num_priors} G={num_gts}'
    args, kwargs = _batch(num_priors, num_gts)
    gt_inds = benchmark.pedantic(lambda: fastops.simota_assign(*args, **kwargs, **RTMO_CONFIG)[0], rounds=10,
                                 warmup_rounds=1)
    assert (gt_inds > 0).any()


@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_stock_mmpose_per_image(benchmark, num_priors, num_gts):
    pytest.importorskip('mmpose')
    import mmpose.models  # noqa: F401  (registers SimOTAAssigner and PoseOKS)
    benchmark.group = f'P={num_priors} G={num_gts}'
    args, kwargs = _batch(num_priors, num_gts)
    results = benchmark.pedantic(_stock_per_image(args, kwargs), rounds=_rounds(num_priors, num_gts))
    assert len(results) == BATCH


@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_reference(benchmark, num_priors, num_gts):
    benchmark.group = f'P={num_priors} G={num_gts}'
    args, kwargs = _batch(num_priors, num_gts)
    gt_inds = benchmark.pedantic(lambda: simota_assign_reference(*args, **kwargs, **RTMO_CONFIG)[0],
                                 rounds=_rounds(num_priors, num_gts))
    assert gt_inds.shape == (BATCH, num_priors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('num_priors, num_gts', WORKLOADS)
def test_fastops_batched_cuda(benchmark, num_priors, num_gts):
    benchmark.group = f'P={num_priors} G={num_gts}'
    args, kwargs = _batch(num_priors, num_gts)
    args = [a.cuda() for a in args]
    kwargs = {k: v.cuda() for k, v in kwargs.items()}

    def run():
        out = fastops.simota_assign(*args, **kwargs, **RTMO_CONFIG)[0]
        torch.cuda.synchronize()
        return out

    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    benchmark.extra_info['peak_cuda_MiB'] = torch.cuda.max_memory_allocated() / 2**20

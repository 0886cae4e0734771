"""Peak extra host memory of one SimOTA assignment at P=8400 (640x640, strides 8/16/32), G=500.

Usage: python bench/simota_stress_memory.py {fastops,stock,fastops_yolox,stock_yolox}
Prints one line: `<which> peak_extra_MiB <peak RSS rise of the call> seconds <s> matched <n>`
(peak memory as the benchmarks measure it: bench/conftest.py). `stock` is mmpose's SimOTAAssigner
(RTMO settings, K=17), `stock_yolox` mmdet's (C=80). One assigner per process.
"""
import os
import sys
import time

import torch
from conftest import peak_memory_mib  # bench/conftest.py, beside this script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from simota_cases import RTMO_CONFIG, YOLOX_CONFIG, random_batch  # noqa: E402


def assigner(which: str):
    """A no-argument callable returning gt_inds [P] of the stress case for the chosen assigner."""
    yolox = which.endswith('yolox')
    args, kwargs = random_batch(7, 640, [500], 17, num_classes=80 if yolox else 1, pose=not yolox,
                                strides=(8, 16, 32))
    if which.startswith('fastops'):
        import fastops
        settings = YOLOX_CONFIG if yolox else RTMO_CONFIG
        return lambda: fastops.simota_assign(*args, **kwargs, **settings)[0][0]
    from mmengine.structures import InstanceData
    pred = InstanceData(priors=args[0], bboxes=args[1][0], scores=args[2][0])
    gt = InstanceData(bboxes=args[3][0], labels=args[4][0])
    if yolox:
        import mmdet.models  # noqa: F401  (registers the assigners)
        from mmdet.registry import TASK_UTILS
        stock = TASK_UTILS.build(dict(type='SimOTAAssigner', **YOLOX_CONFIG))
        return lambda: stock.assign(pred, gt).gt_inds
    import mmpose.models  # noqa: F401
    from mmpose.registry import TASK_UTILS
    stock = TASK_UTILS.build(dict(type='SimOTAAssigner', **RTMO_CONFIG, oks_calculator=dict(type='PoseOKS')))
    pred.keypoints, pred.keypoints_visible = kwargs['pred_keypoints'][0], kwargs['pred_keypoints_visible'][0]
    gt.keypoints, gt.keypoints_visible = kwargs['gt_keypoints'][0], kwargs['gt_keypoints_visible'][0]
    gt.areas = kwargs['gt_areas'][0]
    return lambda: stock.assign(pred, gt)['gt_inds']


def main(which: str) -> None:
    run = assigner(which)
    results = []
    start = time.perf_counter()
    extra = peak_memory_mib(lambda: results.append(run()), torch.device('cpu'))
    seconds = time.perf_counter() - start
    print(f'{which} peak_extra_MiB {extra:.1f} seconds {seconds:.2f} matched {int((results[0] > 0).sum())}')


if __name__ == '__main__':
    main(sys.argv[1])

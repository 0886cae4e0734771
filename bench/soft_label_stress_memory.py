"""Peak extra host memory and time of one dynamic soft-label assignment in a crowded scene: P=8400
(640x640, strides 8/16/32), C=80, G gts in each of B images.

Usage: python bench/soft_label_stress_memory.py {fastops,stock} G B
Prints one line: `<which> G <G> B <B> peak_extra_MiB <peak RSS rise of the call> seconds <s> matched <n>`
(peak memory as the benchmarks measure it: bench/conftest.py). `stock` is mmdet's
DynamicSoftLabelAssigner called per image, as RTMDet's head does; `fastops` one batched call.
One assigner per process. A stock run that fails prints its error instead of the figures.
"""
import os
import sys
import time

import torch
from conftest import peak_memory_mib  # bench/conftest.py, beside this script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from soft_label_cases import RTMDET_CONFIG, random_batch  # noqa: E402


def assigner(which: str, num_gts: int, batch: int):
    """A no-argument callable returning the number of foreground priors of the stress case."""
    args = random_batch(7, 640, [num_gts] * batch, 80)
    if which == 'fastops':
        import fastops
        return lambda: int((fastops.dynamic_soft_label_assign(*args, **RTMDET_CONFIG)[0] > 0).sum())
    from mmdet.models.task_modules.assigners import DynamicSoftLabelAssigner
    from mmengine.structures import InstanceData
    stock = DynamicSoftLabelAssigner(**RTMDET_CONFIG)
    priors, boxes, scores, gt_boxes, labels, _ = args
    images = [(InstanceData(priors=priors, bboxes=boxes[b], scores=scores[b]),
               InstanceData(bboxes=gt_boxes[b], labels=labels[b])) for b in range(batch)]
    return lambda: sum(int((stock.assign(pred, gt).gt_inds > 0).sum()) for pred, gt in images)


def main(which: str, num_gts: int, batch: int) -> None:
    run = assigner(which, num_gts, batch)
    results = []
    start = time.perf_counter()
    try:
        extra = peak_memory_mib(lambda: results.append(run()), torch.device('cpu'))
    except (RuntimeError, MemoryError) as err:
        print(f'{which} G {num_gts} B {batch} failed {type(err).__name__}: {err}')
        return
    seconds = time.perf_counter() - start
    print(f'{which} G {num_gts} B {batch} peak_extra_MiB {extra:.1f} seconds {seconds:.2f} matched {results[0]}')


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

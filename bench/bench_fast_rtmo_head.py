"""One RTMO-s head training step (``head.loss()`` forward + backward of the summed losses, the head
alone) at 640x640 with 5-20 people per image: mmpose RTMOHead vs FastRTMOHead, same weights and
batch, batch 8 and 32.

Run: PYTHONPATH=. python -m pytest bench/bench_fast_rtmo_head.py --benchmark-group-by=group
Rows per group ``B=<batch>``:
  stock             mmpose RTMOHead (per-image SimOTA loop, materialised DCC heatmaps)
  stock-nhwc        the same with the neck features in channels-last layout (what the layout alone buys)
  fast-nchw         FastRTMOHead with ``channels_last_on_cpu=False``
  fast              FastRTMOHead as shipped
  conv-floor        only the head convolutions (with their norms and activations) that any RTMO head
                    must run, forward and backward, channels-last: no targets, no loss. stock time /
                    this time bounds the speed-up of any head that keeps the same float32 convolutions.
Each row also records ``cpu_s_min``/``cpu_s_median`` (extra_info): process CPU seconds per call
(all threads), which a machine shared with other jobs disturbs less than wall time.

Interleaved run (the variants alternate call by call, so a change in the machine's load hits all
of them alike): PYTHONPATH=. python bench/bench_fast_rtmo_head.py --batch 8 --threads 1 --repeats 4
"""
import argparse
import os
import sys
import time

import pytest
import torch

pytest.importorskip('mmpose')

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from rtmo_head_cases import head_loss_and_backward, stock_and_fast_heads, synthetic_batch  # noqa: E402

SIZE = 640
MIN_PEOPLE, MAX_PEOPLE = 5, 20
VARIANTS = ['stock', 'stock-nhwc', 'fast-nchw', 'fast', 'conv-floor']


@pytest.fixture(scope='module')
def heads():
    return stock_and_fast_heads()


def realistic_batch(batch_size: int, device: torch.device):
    people = torch.randint(MIN_PEOPLE, MAX_PEOPLE + 1, (batch_size, ),
                           generator=torch.Generator().manual_seed(batch_size)).tolist()
    feats, samples = synthetic_batch(batch_size, people, SIZE)
    feats = tuple(feat.to(device) for feat in feats)
    for sample in samples:
        sample.gt_instance_labels = sample.gt_instance_labels.to(device)
    return feats, samples


def head_step(heads, variant: str, batch_size: int, device: torch.device):
    stock, fast = (head.to(device) for head in heads)
    feats, samples = realistic_batch(batch_size, device)
    if variant == 'conv-floor':
        return lambda: head_convolutions_and_backward(fast, feats)
    if variant.startswith('stock'):
        if variant == 'stock-nhwc':
            feats = tuple(feat.contiguous(memory_format=torch.channels_last) for feat in feats)
        return lambda: head_loss_and_backward(stock, feats, samples)

    def fast_step():
        fast.channels_last_on_cpu = variant == 'fast'
        return head_loss_and_backward(fast, feats, samples)

    return fast_step


def head_convolutions_and_backward(fast, feats):
    """FastRTMOHead's convolution outputs (channels-last on CPU), and backward of their sum."""
    fast.zero_grad(set_to_none=True)
    fast.channels_last_on_cpu = True
    outputs = fast._head_outputs(feats)
    sum(output.sum() for level_outputs in outputs for output in level_outputs).backward()


class CpuTimed:
    """Calls ``fn`` and keeps the process CPU time of each call."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = []

    def __call__(self):
        start = time.process_time()
        self.fn()
        self.seconds.append(time.process_time() - start)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('batch_size', [8, 32])
def test_head_loss_step_cpu(measure, benchmark, heads, variant, batch_size):
    benchmark.group = f'B={batch_size} cpu'
    step = CpuTimed(head_step(heads, variant, batch_size, torch.device('cpu')))
    measure(step, rounds=5 if batch_size == 8 else 3, warmup_rounds=0)
    timed = sorted(step.seconds[2:])  # the rounds (measure's first two calls warm up and take memory)
    benchmark.extra_info['cpu_s_min'] = round(timed[0], 3)
    benchmark.extra_info['cpu_s_median'] = round(timed[len(timed) // 2], 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('variant', ['stock', 'fast'])
@pytest.mark.parametrize('batch_size', [8, 32])
def test_head_loss_step_cuda(measure, benchmark, heads, variant, batch_size):
    benchmark.group = f'B={batch_size} cuda'
    device = torch.device('cuda')
    measure(head_step(heads, variant, batch_size, device), device=device, rounds=10)


def interleaved(batch_size: int, repeats: int) -> dict:
    """Wall seconds of each variant's calls, the variants called in turn; the first call of each
    is a warm-up and is dropped."""
    heads = stock_and_fast_heads()
    steps = {variant: head_step(heads, variant, batch_size, torch.device('cpu')) for variant in VARIANTS}
    seconds = {variant: [] for variant in VARIANTS}
    for _ in range(repeats + 1):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[variant].append(time.perf_counter() - start)
    return {variant: sorted(times[1:]) for variant, times in seconds.items()}


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--repeats', type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = interleaved(args.batch, args.repeats)
    stock_median = results['stock'][len(results['stock']) // 2]
    print(f'B={args.batch} threads={args.threads} repeats={args.repeats} torch {torch.__version__}')
    for variant, times in results.items():
        median = times[len(times) // 2]
        print(f'{variant:17s} min {times[0]:7.3f} s  median {median:7.3f} s  '
              f'stock/this (median) {stock_median / median:5.2f}x  all {[round(t, 2) for t in times]}')

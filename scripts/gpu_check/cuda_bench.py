"""CUDA benchmarks of fastops against the stock computation, all from one run, written as JSON.

    python scripts/gpu_check/cuda_bench.py --out bench.json [--smoke] [--device cuda|cpu]
    python bench/report.py bench.json     # the tables: min, median, mean, ratio, memory, GB/s

The JSON has pytest-benchmark's layout (machine_info; benchmarks[] with group, name, stats in
seconds, extra_info) plus the formulas, the plan and any errors. Times are per call, taken with
CUDA events after WARMUP calls. Groups:

  copy                      dst.copy_(src) of a large buffer: the device-to-device bandwidth the
                            cross-entropy rows are compared with (bytes = 2 * numel * itemsize)
  safe_cross_entropy NxC    forward + backward of the mean loss at 65536x81, 8192x1204 and 262144x81
    {fp16,bf16,fp32}        in fp16/bf16/fp32: fastops vs `stock_torch`, F.cross_entropy on
    {eager,graph}           logits.float() (what mmdet runs under AMP). `eager` times each call,
                            launch overhead included; `graph` replays the same step from a CUDA
                            graph (GPU time only). GB/s = bytes / mean time, with its fraction of
                            the copy bandwidth
  simota_assign B P G       one batched call (B = 32, P = 8400, G = 20/100/500, RTMO settings) vs
                            `stock_reference`, the per-image loop of fastops/reference (the stock
                            semantics in pure PyTorch), on the same device
  dynamic_soft_label_assign one batched call (B = 32, P = 8400, C = 80, G = 20/100/500, RTMDet
    B P G                   settings) vs `stock_reference`, fastops/reference's per-image loop
  mlecc_from_logits N       forward + backward at N = 512/4096 (K = 17, bins 192x256) vs
                            `stock_reference`: RTMO's stock graph (DCC softmax, Laplace heatmaps,
                            MLECCLoss) from fastops/reference
Every row records extra_info.peak_mib (bench/conftest.py's peak_memory_mib: on CUDA the allocator's
peak during one call above the memory in use before it).

--smoke runs tiny shapes for 3 rounds, to check the script; with --device cpu it needs no GPU
(wall-clock times, no graph rows). Exit status: 0, 1 if some row failed (the others are written
and the errors listed in the JSON), 3 no CUDA device.
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from itertools import product

import torch

from gpu_check_common import NO_CUDA_DEVICE, cuda_missing

import fastops  # after gpu_check_common, which puts the checkout (bench/, tests/) on sys.path
from bench_mlecc_loss import GRAD_INPUTS, logits_inputs
from bench_safe_cross_entropy import bytes_moved, fastops_step, make_inputs, torch_step
from conftest import peak_memory_mib  # bench/conftest.py
from cuda_graphs import capture
from fastops.reference.mlecc_loss import stock_loss_from_logits
from fastops.reference.simota_assign import simota_assign_reference
from fastops.reference.dynamic_soft_label_assign import dynamic_soft_label_assign_reference
from simota_cases import RTMO_CONFIG, batch_to, random_batch
from soft_label_cases import RTMDET_CONFIG
from soft_label_cases import random_batch as soft_label_batch

WARMUP = 2
DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}
FORMULAS = {
    'copy bytes': '2 * numel * itemsize (read the source, write the destination)',
    'safe_cross_entropy bytes': '3 * N * C * itemsize + 8 * N: read the logits forward, read them again and write '
                                'the gradient backward, plus the int64 labels; per-row fp32 terms (loss, lse, '
                                'grad_loss) left out',
    'gbps': 'bytes / mean time',
    'copy_fraction': 'gbps / the copy row\'s gbps in the same run (the copy is far larger than the L2 cache; a '
                     'step whose inputs fit in it, e.g. 65536x81 fp16 on an H100/H200, can pass 1)',
}


@dataclasses.dataclass(frozen=True)
class Plan:
    copy_mib: int
    ce_shapes: tuple
    simota_batch: int
    simota_strides: tuple  # 640x640 image: (8, 16, 32) gives P = 8400
    simota_gts: tuple
    mlecc_sizes: tuple
    rounds: int  # fastops and copy rows
    stock_rounds: int


FULL = Plan(copy_mib=1024, ce_shapes=((65536, 81), (8192, 1204), (262144, 81)), simota_batch=32,
            simota_strides=(8, 16, 32), simota_gts=(20, 100, 500), mlecc_sizes=(512, 4096), rounds=20, stock_rounds=5)
SMOKE = Plan(copy_mib=4, ce_shapes=((256, 81), ), simota_batch=2, simota_strides=(32, ), simota_gts=(3, ),
             mlecc_sizes=(8, ), rounds=3, stock_rounds=3)


def seconds_per_call(fn, device, rounds):
    """Seconds of each of `rounds` calls of fn after WARMUP calls: CUDA events on a GPU."""
    for _ in range(WARMUP):
        fn()
    if device.type != 'cuda':
        return [wall_seconds(fn) for _ in range(rounds)]
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def wall_seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(group, impl, seconds, **extra):
    """One benchmark in pytest-benchmark's layout."""
    stats = dict(min=min(seconds), max=max(seconds), mean=statistics.fmean(seconds),
                 median=statistics.median(seconds), rounds=len(seconds))
    return dict(group=group, name=impl, stats=stats, extra_info=dict(impl=impl, **extra))


def copy_rows(plan, device):
    source = torch.rand(plan.copy_mib * 2**20 // 4, device=device)
    destination = torch.empty_like(source)
    seconds = seconds_per_call(lambda: destination.copy_(source), device, plan.rounds)
    yield row('copy', 'copy_', seconds, bytes=2 * source.numel() * source.element_size())


def cross_entropy_rows(plan, device, shape, dtype_name, impl):
    logits, labels = make_inputs(*shape, DTYPES[dtype_name], device)
    step = fastops_step if impl == 'fastops' else torch_step

    def fwd_bwd():
        logits.grad = None
        step(logits, labels)

    group = f'safe_cross_entropy {shape[0]}x{shape[1]} {dtype_name} {device.type}'
    eager = seconds_per_call(fwd_bwd, device, plan.rounds)
    extra = dict(bytes=bytes_moved(shape, DTYPES[dtype_name]), peak_mib=round(peak_memory_mib(fwd_bwd, device), 2))
    yield row(f'{group} eager', impl, eager, **extra)
    if device.type == 'cuda':
        graph, _ = capture(fwd_bwd)
        yield row(f'{group} graph', impl, seconds_per_call(graph.replay, device, plan.rounds), **extra)


def simota_rows(plan, device, num_gts, impl):
    args, kwargs = batch_to(*random_batch(0, 640, [num_gts] * plan.simota_batch, 17, strides=plan.simota_strides),
                            device)
    assign = fastops.simota_assign if impl == 'fastops' else simota_assign_reference

    def call():
        assign(*args, **kwargs, **RTMO_CONFIG)

    rounds = plan.rounds if impl == 'fastops' else plan.stock_rounds
    group = f'simota_assign B={plan.simota_batch} P={args[0].size(0)} G={num_gts} {device.type}'
    yield row(group, impl, seconds_per_call(call, device, rounds), peak_mib=round(peak_memory_mib(call, device), 2))


def soft_label_rows(plan, device, num_gts, impl):
    args = [a.to(device) for a in soft_label_batch(0, 640, [num_gts] * plan.simota_batch, 80,
                                                    strides=plan.simota_strides)]
    assign = fastops.dynamic_soft_label_assign if impl == 'fastops' else dynamic_soft_label_assign_reference

    def call():
        assign(*args, **RTMDET_CONFIG)

    rounds = plan.rounds if impl == 'fastops' else plan.stock_rounds
    group = f'dynamic_soft_label_assign B={plan.simota_batch} P={args[0].size(0)} G={num_gts} {device.type}'
    yield row(group, impl, seconds_per_call(call, device, rounds), peak_mib=round(peak_memory_mib(call, device), 2))


def mlecc_rows(plan, device, n, impl):
    case = logits_inputs(n, device)
    leaves = [case[name] for name in GRAD_INPUTS]

    def fwd_bwd():
        for leaf in leaves:
            leaf.grad = None
        loss = fastops.mlecc_loss_from_logits(**case)[0] if impl == 'fastops' else stock_loss_from_logits(**case)
        loss.sum().backward()

    rounds = plan.rounds if impl == 'fastops' else plan.stock_rounds
    yield row(f'mlecc_from_logits N={n} {device.type}', impl, seconds_per_call(fwd_bwd, device, rounds),
              peak_mib=round(peak_memory_mib(fwd_bwd, device), 2))


def jobs(plan, device):
    """(label, generator of rows) of every benchmark, the copy first."""
    yield 'copy', copy_rows(plan, device)
    for shape, dtype_name, impl in product(plan.ce_shapes, DTYPES, ('fastops', 'stock_torch')):
        yield f'cross-entropy {shape} {dtype_name} {impl}', cross_entropy_rows(plan, device, shape, dtype_name, impl)
    for num_gts, impl in product(plan.simota_gts, ('fastops', 'stock_reference')):
        yield f'simota_assign G={num_gts} {impl}', simota_rows(plan, device, num_gts, impl)
    for num_gts, impl in product(plan.simota_gts, ('fastops', 'stock_reference')):
        yield f'dynamic_soft_label_assign G={num_gts} {impl}', soft_label_rows(plan, device, num_gts, impl)
    for n, impl in product(plan.mlecc_sizes, ('fastops', 'stock_reference')):
        yield f'mlecc N={n} {impl}', mlecc_rows(plan, device, n, impl)


def run_all(plan, device):
    """Every row; a job that raises is recorded in the errors and the run goes on."""
    rows, errors = [], []
    for label, job in jobs(plan, device):
        try:
            for measured in job:
                rows.append(measured)
                print(f"{measured['group']:48s} {measured['name']:16s} median "
                      f"{measured['stats']['median'] * 1e3:9.3f} ms", flush=True)
        except Exception as error:  # one failed job must not lose the others' rows
            traceback.print_exc()
            errors.append(dict(job=label, error=repr(error)))
    return rows, errors


def add_bandwidth(rows):
    """GB/s of every row with a byte count, and its fraction of the copy bandwidth."""
    copy_gbps = next((r['extra_info']['bytes'] / r['stats']['mean'] / 1e9 for r in rows if r['group'] == 'copy'),
                     None)
    for measured in rows:
        extra = measured['extra_info']
        if 'bytes' in extra:
            extra['gbps'] = extra['bytes'] / measured['stats']['mean'] / 1e9
            if copy_gbps:
                extra['copy_fraction'] = extra['gbps'] / copy_gbps


def machine_info(device):
    info = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                fastops_cuda_arches=fastops.cuda_arches(), cpu=dict(count=os.cpu_count()))
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info['gpu'] = f'{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)'
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='path of the JSON to write')
    parser.add_argument('--smoke', action='store_true', help='tiny shapes, 3 rounds: checks the script')
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    args = parser.parse_args(argv)
    if cuda_missing(args.device):
        return NO_CUDA_DEVICE
    device, plan = torch.device(args.device), SMOKE if args.smoke else FULL
    rows, errors = run_all(plan, device)
    add_bandwidth(rows)
    result = dict(machine_info=machine_info(device), datetime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  plan=dataclasses.asdict(plan), warmup_calls=WARMUP, formulas=FORMULAS, benchmarks=rows,
                  errors=errors)
    with open(args.out, 'w') as out:
        json.dump(result, out, indent=1)
    print(f'{len(rows)} rows, {len(errors)} errors -> {args.out}')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())

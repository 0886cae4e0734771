"""Shared benchmark helpers: peak memory of one call, recorded next to the timing."""
import gc
import os

import ctypes

import pytest
import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIBC = ctypes.CDLL("libc.so.6")


def _malloc_thresholds(mmap_bytes: int) -> None:
    """Fixes glibc's mmap threshold (and the heap trim threshold at twice it, as glibc's own
    dynamic rule does). Fixed, glibc stops raising it on each free."""
    _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_bytes)


# Memory is measured with every tensor of 64 KiB or more a fresh mapping, so that it shows in the
# RSS peak; timing runs at 32 MiB, the ceiling of glibc's dynamic threshold and where it settles in
# a process that frees large tensors (a training loop), so freed blocks are reused, not re-faulted.
MEMORY_MMAP_THRESHOLD = 64 * 1024
TIMING_MMAP_THRESHOLD = 32 * 1024 * 1024
MIN_ROUNDS = 3  # every row, stock ones included, so that its min and median mean something


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def peak_memory_mib(fn, device: torch.device) -> float:
    """Peak memory one call of `fn` adds: CUDA allocator peak, or on CPU the rise of the process's
    peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before the call (leaves
    glibc's mmap threshold at MEMORY_MMAP_THRESHOLD)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _malloc_thresholds(MEMORY_MMAP_THRESHOLD)
    _LIBC.malloc_trim(0)  # free heap pages back to the OS, so that reusing them shows in the RSS
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    base = _vm_rss_kib()
    fn()
    return (_vm_hwm_kib() - base) / 1024


@pytest.fixture
def measure(benchmark):
    """measure(fn, device, rounds): times fn with pytest-benchmark and records its peak memory."""

    def run(fn, device=torch.device("cpu"), rounds=10, warmup_rounds=1):
        if rounds < MIN_ROUNDS:
            raise ValueError(f"a benchmark row needs at least {MIN_ROUNDS} rounds, got {rounds}")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def call():
            fn()
            sync()

        call()
        benchmark.extra_info["peak_mib"] = round(peak_memory_mib(call, device), 2)
        _malloc_thresholds(TIMING_MMAP_THRESHOLD)
        benchmark.extra_info["device"] = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{os.cpu_count()}"
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)

    return run


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

"""Helpers shared by the op wrappers: where a compiled kernel exists, and how to report counts."""
import warnings
from typing import List, Optional, Tuple

import torch

import fastops


def _parse_arch(entry: str) -> Tuple[int, int, bool, bool]:
    """'8.6' / '9.0a' / '12.0+PTX' -> (major, minor, arch-specific, with PTX)."""
    ptx = entry.endswith("+PTX")
    number = entry[:-4] if ptx else entry
    specific = number.endswith("a")
    major, minor = number.rstrip("a").split(".")
    return int(major), int(minor), specific, ptx


def _entries(arches: Optional[str]) -> List[str]:
    arches = fastops.cuda_arches() if arches is None else arches
    return [e.strip() for e in arches.replace(" ", ";").split(";") if e.strip()]


def _cubin_for(capability: Tuple[int, int], entries: List[str]) -> Optional[str]:
    """A cubin built for M.m runs on M.n for every n >= m (not across majors; an 'a' build only on
    its own M.m)."""
    for entry in entries:
        major, minor, specific, _ = _parse_arch(entry)
        if major == capability[0] and (minor == capability[1] or (not specific and minor < capability[1])):
            return entry
    return None


def _ptx_for(capability: Tuple[int, int], entries: List[str]) -> Optional[str]:
    """PTX built for M.m is JIT-compiled by the driver for any capability >= M.m."""
    for entry in entries:
        major, minor, _, ptx = _parse_arch(entry)
        if ptx and (major, minor) <= tuple(capability):
            return entry
    return None


def kernel_arch_for(capability: Tuple[int, int], arches: Optional[str] = None) -> Optional[str]:
    """The built arch entry that runs on a GPU of `capability` (a cubin first: no JIT), or None."""
    entries = _entries(arches)
    return _cubin_for(capability, entries) or _ptx_for(capability, entries)


def kernel_is_jit(capability: Tuple[int, int], arches: Optional[str] = None) -> bool:
    """Whether the kernel for `capability` (see kernel_arch_for) is PTX the driver compiles at first use."""
    return _cubin_for(capability, _entries(arches)) is None


_warned_devices = set()


@torch.compiler.assume_constant_result
def _cuda_kernel_runs_on(index: int) -> bool:
    capability = torch.cuda.get_device_capability(index)
    if kernel_arch_for(capability) is not None:
        return True
    if index not in _warned_devices:
        _warned_devices.add(index)
        warnings.warn(
            f"fastops: no CUDA kernel for {torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]}); "
            f"this build has {fastops.cuda_arches()}. Falling back to the pure-PyTorch reference; rebuild with "
            f"TORCH_CUDA_ARCH_LIST including {capability[0]}.{capability[1]} for the fused kernels.",
            RuntimeWarning, stacklevel=3)
    return False


def has_kernel(device: torch.device) -> bool:
    """Whether fastops._C has a kernel for tensors on `device` (else wrappers use the reference)."""
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not fastops.cuda_built():
        return False
    return _cuda_kernel_runs_on(device.index if device.index is not None else torch.cuda.current_device())


def is_compiling() -> bool:
    return torch.compiler.is_compiling()


def check_same_device(op: str, reference_name: str, reference, **tensors) -> None:
    """Raises ValueError naming the first tensor argument not on `reference`'s device."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {reference_name} is on {reference.device}")

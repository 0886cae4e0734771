"""Helpers shared by the op wrappers: where a compiled kernel exists, and how to report counts."""
import torch

import fastops


def has_kernel(device: torch.device) -> bool:
    """Whether fastops._C has a kernel for tensors on `device` (else wrappers use the reference)."""
    return device.type == "cpu" or (device.type == "cuda" and fastops.cuda_built())


def is_compiling() -> bool:
    return torch.compiler.is_compiling()


def check_same_device(op: str, reference_name: str, reference, **tensors) -> None:
    """Raises ValueError naming the first tensor argument not on `reference`'s device."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {reference_name} is on {reference.device}")

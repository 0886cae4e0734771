"""``python -m fastops info``: what this build of fastops runs on."""
import platform

import torch

import fastops
from fastops.ops._dispatch import kernel_arch_for, kernel_is_jit


def build_lines():
    lines = [f"fastops {fastops.__version__} ({fastops.__file__})",
             f"torch {torch.__version__} imported, fastops built against {fastops._C.torch_version_built()}",
             f"CPU kernels: {platform.machine()}, instruction set taken: {fastops._C.cpu_isa()} "
             "(FASTOPS_CPU_ISA=baseline|avx2|avx512 caps it)"]
    if fastops.cuda_built():
        lines.append(f"CUDA kernels: built for {fastops.cuda_arches()} (torch's CUDA {torch.version.cuda})")
    else:
        lines.append("CUDA kernels: not built (CUDA tensors run the pure-PyTorch reference)")
    return lines


def gpu_lines():
    if not torch.cuda.is_available():
        return ["GPUs: none visible"]
    lines = []
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        name = f"cuda:{index} {torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]})"
        arch = kernel_arch_for(capability) if fastops.cuda_built() else None
        if arch is not None:
            how = "PTX, JIT-compiled" if kernel_is_jit(capability) else "native"
            lines.append(f"{name}: fastops kernels from {arch} ({how})")
        else:
            lines.append(f"{name}: no fastops kernel, ops fall back to the pure-PyTorch reference")
    return lines


def main(argv) -> int:
    if argv:
        print("usage: python -m fastops info   (takes no arguments)")
        return 0 if argv[0] in ("-h", "--help") else 2
    print("\n".join(build_lines() + gpu_lines()))
    return 0

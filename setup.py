"""Build fastops._C: CPU kernels always, CUDA kernels when torch is a CUDA build and nvcc exists.

FASTOPS_CUDA=0|1 forces the CUDA kernels off or on. TORCH_CUDA_ARCH_LIST picks the
architectures (default DEFAULT_CUDA_ARCHES). MAX_JOBS bounds ninja's parallel compiles. No GPU is needed.
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

try:
    import torch
except ImportError:
    sys.exit(
        "fastops builds against the torch installed in the environment it is installed into, and "
        "found none: install torch there first (e.g. `pip install torch==2.14.1`), then run "
        "`pip install -e .` again. If torch is installed there, the build tool hid it: build "
        "without isolation (`pip install -e . --no-build-isolation`)."
    )


# One SASS build per major architecture from Turing (7.5) to Blackwell (12.x): a cubin runs on every
# later minor of its major (8.0 on 8.6/8.7/8.9, 10.0 on 10.3, 12.0 on 12.1), and PTX of the newest
# for GPUs newer than this nvcc (JIT-compiled by the driver at first use). nvcc 13 knows 7.5-12.1.
DEFAULT_CUDA_ARCHES = "7.5;8.0;9.0;10.0;11.0;12.0+PTX"


def find_cuda_home():
    """The toolkit root. The machine's nvcc may be a wrapper script, so ask nvcc itself."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    dryrun = subprocess.run([nvcc, "--dryrun", "-x", "cu", os.devnull],
                            capture_output=True, text=True).stderr
    top = re.search(r"^#\$ TOP=(.*)$", dryrun, re.MULTILINE)
    return os.path.realpath(top.group(1).strip()) if top else os.path.dirname(os.path.dirname(nvcc))


def want_cuda(cuda_home):
    forced = os.environ.get("FASTOPS_CUDA")
    if forced == "0":
        return False
    available = torch.version.cuda is not None and cuda_home is not None
    if forced == "1" and not available:
        sys.exit("FASTOPS_CUDA=1 but torch is a CPU build or nvcc was not found.")
    return available


cuda_home = find_cuda_home()
with_cuda = want_cuda(cuda_home)
if with_cuda:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHES)

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

root = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
# x86-64-v3 = AVX2/FMA/F16C (any x86 CPU since 2013; FASTOPS_CPU_ARCH=x86-64 for older ones).
# -fno-trapping-math lets GCC if-convert float compares so the row loops vectorise; NaN and inf
# semantics are unchanged (no -ffast-math).
# Elsewhere (aarch64, ...) the compiler's default target is kept unless FASTOPS_CPU_ARCH names one.
default_arch = "x86-64-v3" if platform.machine() in ("x86_64", "AMD64") else None
cpu_arch = os.environ.get("FASTOPS_CPU_ARCH", default_arch)
# -ffp-contract=off: every a*b+c rounds twice, as in the stock PyTorch graphs the ops must match
# bit for bit (common/rounded_math.h).
cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off"]
if cpu_arch:
    cxx_flags.append(f"-march={cpu_arch}")
nvcc_flags = ["-O3", "--expt-relaxed-constexpr"]  # no fast-math: the ops promise exact IEEE results
macros = [("TORCH_VERSION_BUILT", f'"{torch.__version__}"')]
include_dirs = [os.path.join(root, "csrc")]
extension = CppExtension
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    macros.append(("FASTOPS_WITH_CUDA", None))
    macros.append(("FASTOPS_CUDA_ARCHES", f'"{os.environ["TORCH_CUDA_ARCH_LIST"]}"'))
    # pip's CUDA 13 wheels keep some headers (cusparse.h, ...) outside the toolkit.
    for nvidia_include in glob.glob(os.path.join(os.path.dirname(torch.__path__[0]), "nvidia", "*", "include")):
        cxx_flags += ["-isystem", nvidia_include]
        nvcc_flags += ["-isystem", nvidia_include]
    extension = CUDAExtension

setup(
    packages=find_packages(include=["fastops", "fastops.*"]),
    ext_modules=[
        extension(
            "fastops._C",
            sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

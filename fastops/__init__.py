"""fastops: fused, exact, fp16-safe operators for OpenMMLab training.

Operators live in ``torch.ops.fastops`` (registered by the compiled ``fastops._C``) and are
wrapped with autograd and shape inference in :mod:`fastops.ops`. OpenMMLab drop-ins are in
:mod:`fastops.mm`, loaded by a config through ``custom_imports=dict(imports=['fastops.mm'])``.
"""
import os

import torch

__version__ = "0.1.0"

try:
    from . import _C
except ImportError as err:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"fastops' compiled extension could not be loaded ({err}). Build it against the torch "
        "you run: `pip install -e .` (see README.md)."
    ) from err


def _check_torch_version():
    built = _C.torch_version_built()
    if built.split("+")[0] != torch.__version__.split("+")[0]:
        raise ImportError(
            f"fastops was built against torch {built} but torch {torch.__version__} is imported; "
            "rebuild with `pip install -e .`."
        )


_check_torch_version()

_debug = os.environ.get("FASTOPS_DEBUG", "0") not in ("", "0")


def cuda_built() -> bool:
    """Whether the CUDA kernels are compiled into this build (a GPU need not be present)."""
    return _C.cuda_built()


def cuda_arches() -> str:
    """The CUDA architectures compiled in (TORCH_CUDA_ARCH_LIST at build time), '' on CPU builds."""
    return _C.cuda_arches()


def set_debug(enabled: bool) -> None:
    """Debug mode: ops raise on non-finite inputs (one host sync) instead of counting them.

    Also enabled by the environment variable ``FASTOPS_DEBUG=1``.
    """
    global _debug
    _debug = bool(enabled)


def debug_enabled() -> bool:
    return _debug


from .ops import *  # noqa: E402,F401,F403  (registers fake kernels and autograd)

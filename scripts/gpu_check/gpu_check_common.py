"""What the gpu_check helpers share: the checkout on sys.path, and the no-GPU exit status."""
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
NO_CUDA_DEVICE = 3  # exit status when a GPU is needed and none is visible (as scripts/gpu_check.sh)

# Searched in this order: fastops (an in-place build too), bench/ (its conftest, not the tests'),
# then tests/ (the shared case builders).
for folder in (REPO / "tests", REPO / "bench", REPO):
    sys.path.insert(0, str(folder))


def cuda_missing(device: str) -> bool:
    """True, after saying so on stderr, when `device` is CUDA and torch sees no GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees no GPU", file=sys.stderr)
        return True
    return False

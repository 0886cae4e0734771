import pytest
import torch

import fastops

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed_and_debug_off():
    torch.manual_seed(0)
    fastops.set_debug(False)
    yield
    fastops.set_debug(False)

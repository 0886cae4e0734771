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


def _default_scope(scope):
    """Registries resolve `type` in the default scope an earlier test may have left (mmpose's
    and mmdet's both have a `SimOTAAssigner`); pin it for the test."""
    registry = pytest.importorskip("mmengine.registry")
    with registry.DefaultScope.overwrite_default_scope(scope):
        yield


@pytest.fixture
def mmdet_scope():
    yield from _default_scope("mmdet")


@pytest.fixture
def mmpose_scope():
    yield from _default_scope("mmpose")


def _synthetic_set(tmp_path_factory, kind):
    from fastops import synth
    out = tmp_path_factory.mktemp(f"synth_{kind}")
    synth.generate(str(out), kind, images=24, size=320, seed=0)
    return out


@pytest.fixture(scope="session")
def keypoint_data(tmp_path_factory):
    """24 synthetic COCO-format keypoint images (320x320, seed 0), shared read-only."""
    return _synthetic_set(tmp_path_factory, "keypoints")


@pytest.fixture(scope="session")
def detection_data(tmp_path_factory):
    """24 synthetic COCO-format detection images (320x320, seed 0), shared read-only."""
    return _synthetic_set(tmp_path_factory, "detection")

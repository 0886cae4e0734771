"""RTMO-s and YOLOX-Pose-s heads and synthetic batches shared by tests/test_fast_rtmo_head.py,
tests/test_fast_yoloxpose_head.py and bench/bench_fast_rtmo_head.py (needs the mm stack)."""
import copy
import functools

import torch
from mmengine.hub import get_config
from mmengine.structures import InstanceData
from mmpose.registry import MODELS
from mmpose.structures import PoseDataSample

import fastops.mm  # noqa: F401  (registers FastRTMOHead, FastYOLOXPoseHead)

RTMO_S_CONFIG = 'mmpose::body_2d_keypoint/rtmo/coco/rtmo-s_8xb32-600e_coco-640x640.py'
YOLOXPOSE_S_CONFIG = 'mmpose::body_2d_keypoint/yoloxpose/coco/yoloxpose_s_8xb32-300e_coco-640.py'
NUM_KEYPOINTS = 17
# Per head family: its packaged -s config, stock and fastops head types, the channels of each
# neck output the head reads, and the strides of those outputs.
FAMILIES = {
    'rtmo': dict(config=RTMO_S_CONFIG, stock='RTMOHead', fast='FastRTMOHead', channels=256, strides=(16, 32)),
    'yoloxpose': dict(config=YOLOXPOSE_S_CONFIG, stock='YOLOXPoseHead', fast='FastYOLOXPoseHead', channels=128,
                      strides=(8, 16, 32)),
}
# RTMOModeSwitchHook's switch of the packaged config (epoch 280)
SWITCHED = {'proxy_target_cc': True, 'loss_mle.loss_weight': 5.0, 'loss_oks.loss_weight': 10.0}


@functools.lru_cache(maxsize=None)
def _packaged_head_cfg(config: str) -> dict:
    return get_config(config).model.head.to_dict()


def rtmo_s_head_cfg(head_type: str = 'RTMOHead', family: str = 'rtmo', **overrides) -> dict:
    """The packaged -s config's head dict of `family` as a plain dict, with ``type`` and fields replaced."""
    head = copy.deepcopy(_packaged_head_cfg(FAMILIES[family]['config']))
    head.update(type=head_type, **overrides)
    return head


def stock_and_fast_heads(seed: int = 0, family: str = 'rtmo', **overrides):
    """The stock head of `family` and its fastops head with identical weights (train mode)."""
    torch.manual_seed(seed)
    kinds = FAMILIES[family]
    stock = MODELS.build(rtmo_s_head_cfg(kinds['stock'], family, **copy.deepcopy(overrides)))
    stock.init_weights()
    fast = MODELS.build(rtmo_s_head_cfg(kinds['fast'], family, **copy.deepcopy(overrides)))
    fast.load_state_dict(stock.state_dict())
    return stock.train(), fast.train()


def random_people(generator: torch.Generator, num: int, size: int) -> InstanceData:
    """``num`` people: boxes inside a ``size`` image, keypoints inside their boxes, ~70% visible."""
    corner = torch.rand(num, 2, generator=generator) * size * 0.6
    extent = torch.rand(num, 2, generator=generator) * size * 0.35 + size * 0.05
    kpts = corner[:, None] + torch.rand(num, NUM_KEYPOINTS, 2, generator=generator) * extent[:, None]
    visible = (torch.rand(num, NUM_KEYPOINTS, generator=generator) > 0.3).float()
    return InstanceData(bboxes=torch.cat([corner, corner + extent], 1), labels=torch.zeros(num, dtype=torch.long),
                        keypoints=kpts, keypoints_visible=visible, areas=extent.prod(1))


def synthetic_batch(seed: int, people_per_image, size: int, family: str = 'rtmo'):
    """Neck features (one per stride) and data samples for ``len(people_per_image)`` images."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for num in people_per_image:
        sample = PoseDataSample(metainfo=dict(input_size=(size, size)))
        sample.gt_instance_labels = random_people(generator, num, size)
        samples.append(sample)
    channels = FAMILIES[family]['channels']
    feats = tuple(torch.randn(len(samples), channels, size // s, size // s, generator=generator)
                  for s in FAMILIES[family]['strides'])
    return feats, samples


def head_loss_and_backward(head, feats, samples) -> dict:
    """One training step of the head alone: ``loss()`` and backward of the summed loss terms."""
    head.zero_grad(set_to_none=True)
    losses = head.loss(feats, samples)
    sum(value.mean() for key, value in losses.items() if key.startswith('loss')).backward()
    return losses

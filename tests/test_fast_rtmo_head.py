"""FastRTMOHead vs mmpose RTMOHead: same losses and gradients, one batched assignment, no
materialised DCC heatmaps, RTMOModeSwitchHook, and one Runner iteration of the RTMO-s config."""
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip('mmpose')
pytest.importorskip('mmdet')

from mmcv.cnn.bricks.swish import Swish  # noqa: E402
from mmengine.hub import get_config  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmpose.engine.hooks import RTMOModeSwitchHook  # noqa: E402
from mmpose.registry import MODELS  # noqa: E402

import fastops.mm.assigners  # noqa: E402
from fastops.mm.heads import FastRTMOHead  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtmo_head_cases import (RTMO_S_CONFIG, head_loss_and_backward, rtmo_s_head_cfg,  # noqa: E402
                             stock_and_fast_heads, synthetic_batch)

SIZE = 128  # input size of the parity cases: 8x8 + 4x4 priors keep them fast
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3
# Parameters whose true gradient is 0 (a Linear bias followed by BatchNorm; bin-encoding biases,
# to which the softmax is invariant) hold rounding noise in both heads: compare those absolutely,
# at this fraction of the largest gradient of the head.
ZERO_GRAD_ATOL = 1e-5

PEOPLE = {
    '2 images': [3, 4],
    '2 images, one without gts': [0, 5],
    '8 images, two without gts': [3, 0, 5, 2, 1, 0, 6, 2],
}


def switch_mode(head):
    """Apply the packaged config's epoch-280 switch through the real RTMOModeSwitchHook."""
    hook_cfg = next(h for h in get_config(RTMO_S_CONFIG).custom_hooks if h['type'] == 'RTMOModeSwitchHook')
    hook = RTMOModeSwitchHook(epoch_attributes=hook_cfg['epoch_attributes'])
    runner = types.SimpleNamespace(epoch=280, model=types.SimpleNamespace(head=head),
                                   logger=types.SimpleNamespace(info=lambda msg: None))
    hook.before_train_epoch(runner)


def assert_losses_match(fast_losses, stock_losses):
    assert list(fast_losses) == list(stock_losses)
    for key, stock in stock_losses.items():
        stock = torch.as_tensor(stock, dtype=torch.float32).detach()
        fast = torch.as_tensor(fast_losses[key], dtype=torch.float32).detach()
        scale = float(stock.abs().max()) if stock.numel() else 0.0
        torch.testing.assert_close(fast, stock, rtol=LOSS_RTOL, atol=LOSS_RTOL * scale, msg=key)


def assert_grads_match(fast_head, stock_head):
    stock_grads = {name: p.grad for name, p in stock_head.named_parameters() if p.grad is not None}
    fast_grads = {name: p.grad for name, p in fast_head.named_parameters() if p.grad is not None}
    assert set(fast_grads) == set(stock_grads)
    largest = max(float(g.abs().max()) for g in stock_grads.values())
    for name, stock in stock_grads.items():
        atol = max(GRAD_RTOL * float(stock.abs().max()), ZERO_GRAD_ATOL * largest)
        torch.testing.assert_close(fast_grads[name], stock, rtol=GRAD_RTOL, atol=atol, msg=name)


def run_both(stock, fast, feats, samples):
    stock_losses = head_loss_and_backward(stock, feats, samples)
    fast_losses = head_loss_and_backward(fast, feats, samples)
    return fast_losses, stock_losses


@pytest.mark.parametrize('switched', [False, True], ids=['stage1', 'after mode switch'])
@pytest.mark.parametrize('people', list(PEOPLE.values()), ids=list(PEOPLE))
def test_loss_and_gradients_match_stock(people, switched):
    stock, fast = stock_and_fast_heads()
    if switched:
        switch_mode(stock)
        switch_mode(fast)
        assert fast.proxy_target_cc and fast.loss_mle.loss_weight == 5.0 and fast.loss_oks.loss_weight == 10.0
    feats, samples = synthetic_batch(len(people), people, SIZE)
    fast_losses, stock_losses = run_both(stock, fast, feats, samples)
    assert {'loss_bbox', 'loss_vis', 'loss_mle', 'loss_oks', 'loss_cls'} <= set(fast_losses)
    assert fast_losses['loss_mle'].shape == (int(fast_losses['num_samples']), )
    assert_losses_match(fast_losses, stock_losses)
    assert_grads_match(fast, stock)


def test_channels_first_layout_matches_stock():
    stock, fast = stock_and_fast_heads()
    fast.channels_last_on_cpu = False
    feats, samples = synthetic_batch(3, [3, 0, 5], SIZE)
    assert_losses_match(*run_both(stock, fast, feats, samples))
    assert_grads_match(fast, stock)


def test_swish_runs_as_silu_with_the_same_outputs():
    stock, fast = stock_and_fast_heads()
    assert not any(isinstance(module, Swish) for module in fast.modules())
    assert any(isinstance(module, Swish) for module in stock.modules())
    feats, _ = synthetic_batch(4, [1, 1], SIZE)
    with torch.no_grad():
        stock_outputs, fast_outputs = stock.eval()(feats), fast.eval()(feats)
    for stock_levels, fast_levels in zip(stock_outputs, fast_outputs):
        for stock_level, fast_level in zip(stock_levels, fast_levels):
            torch.testing.assert_close(fast_level, stock_level, rtol=1e-5, atol=1e-5)


def test_batch_without_gts_matches_stock():
    stock, fast = stock_and_fast_heads()
    feats, samples = synthetic_batch(1, [0, 0], SIZE)
    fast_losses, stock_losses = run_both(stock, fast, feats, samples)
    assert list(fast_losses) == ['loss_cls', 'num_samples']
    assert float(fast_losses['num_samples']) == 1.0
    assert_losses_match(fast_losses, stock_losses)
    assert_grads_match(fast, stock)


@pytest.mark.parametrize('switched', [False, True], ids=['stage1', 'after mode switch'])
def test_log_mlecc_loss_config_matches_stock_mlecc(switched):
    """loss_mle swapped for fastops' LogMLECCLoss (floor 1e-4) gives the stock MLECCLoss values."""
    stock, _ = stock_and_fast_heads()
    loss_mle = dict(type='LogMLECCLoss', use_target_weight=True, loss_weight=1.0)
    fast = MODELS.build(rtmo_s_head_cfg('FastRTMOHead', loss_mle=loss_mle)).train()
    fast.load_state_dict(stock.state_dict())
    if switched:
        switch_mode(stock)
        switch_mode(fast)
    feats, samples = synthetic_batch(3, [2, 4, 3], SIZE)
    fast_losses, stock_losses = run_both(stock, fast, feats, samples)
    assert_losses_match(fast_losses, stock_losses)
    assert_grads_match(fast, stock)


def test_non_log_mle_mode_uses_stock_heatmaps():
    """MLECCLoss(mode='linear') is not fused: FastRTMOHead runs the stock heatmap path for it."""
    loss_mle = dict(type='MLECCLoss', mode='linear', use_target_weight=True, loss_weight=1.0)
    stock, fast = stock_and_fast_heads(loss_mle=loss_mle)
    assert not fast._fused_mle_supported()
    feats, samples = synthetic_batch(4, [2, 3], SIZE)
    fast_losses, stock_losses = run_both(stock, fast, feats, samples)
    assert_losses_match(fast_losses, stock_losses)
    assert_grads_match(fast, stock)


def test_aux_bbox_loss_matches_stock():
    stock, fast = stock_and_fast_heads(use_aux_loss=True)
    feats, samples = synthetic_batch(7, [2, 3], SIZE)
    fast_losses, stock_losses = run_both(stock, fast, feats, samples)
    assert 'loss_bbox_aux' in fast_losses
    assert_losses_match(fast_losses, stock_losses)
    assert_grads_match(fast, stock)


def test_unlabelled_people_mask_and_visibility_weights_match_stock():
    """Stage-2 samples carry gt_fields.heatmap_mask (objectness weights 1 - mask at the mean
    keypoint); some datasets give keypoints_visible_weights (here only some images have them)."""
    stock, fast = stock_and_fast_heads()
    feats, samples = synthetic_batch(5, [3, 2, 4], SIZE)
    generator = torch.Generator().manual_seed(5)
    for sample in samples[:2]:
        mask = (torch.rand(1, SIZE, SIZE, generator=generator) > 0.5).float()
        sample.gt_fields = PixelData(heatmap_mask=mask)
    gts = samples[1].gt_instance_labels
    gts.keypoints_visible_weights = torch.rand(gts.keypoints_visible.shape, generator=generator)
    fast_losses, stock_losses = run_both(stock, fast, feats, samples)
    assert_losses_match(fast_losses, stock_losses)
    assert_grads_match(fast, stock)


def test_one_assignment_call_and_no_heatmaps(monkeypatch):
    """The batch is assigned in one simota_assign call, and without proxy_target_cc no softmax
    heatmap and no target heatmap is built."""
    _, fast = stock_and_fast_heads()
    calls = []
    fused = fastops.mm.assigners.simota_assign
    monkeypatch.setattr(fastops.mm.assigners, 'simota_assign', lambda *a, **k: calls.append(1) or fused(*a, **k))

    def forbidden(*args, **kwargs):
        raise AssertionError('heatmap materialised')

    monkeypatch.setattr(fast.dcc, '_apply_softmax', forbidden)
    monkeypatch.setattr(fast.dcc, 'generate_target_heatmap', forbidden)
    feats, samples = synthetic_batch(6, [3, 0, 5, 2, 1, 4, 6, 2], SIZE)
    losses = head_loss_and_backward(fast, feats, samples)
    assert len(calls) == 1
    assert torch.isfinite(losses['loss_mle']).all()


def test_rejects_other_assigners():
    cfg = rtmo_s_head_cfg('FastRTMOHead', assigner=dict(type='HungarianAssigner'))
    with pytest.raises(ValueError, match='assigner'):
        MODELS.build(cfg)


def test_is_an_rtmo_head():
    _, fast = stock_and_fast_heads()
    assert isinstance(fast, MODELS.get('RTMOHead'))
    assert isinstance(fast.assigner, fastops.mm.assigners.FusedSimOTAAssigner)
    assert isinstance(fast, FastRTMOHead)


# ----------------------------------------------------------------------------- Runner


COCO_CATEGORY = dict(id=1, name='person', supercategory='person', keypoints=[f'k{i}' for i in range(17)],
                     skeleton=[])


def write_tiny_coco(root, num_images: int, size: int, seed: int = 0) -> str:
    """A COCO person-keypoints set: ``num_images`` random images with 1-3 people each."""
    import cv2

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'images'))
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        name = f'{image_id:06d}.jpg'
        cv2.imwrite(os.path.join(root, 'images', name), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, size * 0.5, 2)
            w, h = rng.uniform(size * 0.2, size * 0.45, 2)
            kpts = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], 1)
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1, iscrowd=0,
                                    bbox=[x, y, w, h], area=w * h, num_keypoints=17,
                                    keypoints=kpts.reshape(-1).tolist()))
    ann_file = os.path.join(root, 'keypoints.json')
    with open(ann_file, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=[COCO_CATEGORY]), f)
    return ann_file


def tiny_rtmo_s_config(root: str, size: int):
    """The packaged RTMO-s config on the tiny set: FastRTMOHead, no pretrained weights, CPU-sized
    inputs, the epoch-280 mode switch applied at epoch 0, one iteration, no validation."""
    cfg = get_config(RTMO_S_CONFIG)
    cfg.custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)
    cfg.model.head.type = 'FastRTMOHead'
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.batch_augments = None
    for stage in ('train_pipeline_stage1', 'train_pipeline_stage2'):
        for step in cfg[stage]:
            for key in ('img_scale', 'input_size'):
                if key in step:
                    step[key] = (size, size)
            if step['type'] == 'GenerateTarget':
                step['encoder']['input_size'] = (size, size)
    switch = next(h for h in cfg.custom_hooks if h['type'] == 'RTMOModeSwitchHook')
    switch['epoch_attributes'] = {0: switch['epoch_attributes'][280]}
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False, pin_memory=False)
    cfg.train_dataloader.dataset.update(data_root=root, ann_file='keypoints.json',
                                        data_prefix=dict(img='images/'), pipeline=cfg.train_pipeline_stage1)
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10)
    cfg.param_scheduler = []
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10, save_last=False)
    cfg.work_dir = os.path.join(root, 'work_dir')
    return cfg


def test_runner_trains_one_iteration_of_rtmo_s(tmp_path):
    from mmengine.runner import Runner

    size = 96
    write_tiny_coco(str(tmp_path), num_images=2, size=size)
    runner = Runner.from_cfg(tiny_rtmo_s_config(str(tmp_path), size))
    head = runner.model.head
    assert type(head).__name__ == 'FastRTMOHead'
    before = {name: p.detach().clone() for name, p in head.named_parameters()}
    runner.train()
    assert runner.iter == 1
    assert head.proxy_target_cc and head.loss_mle.loss_weight == 5.0  # the switch reached the fast head
    scalars = runner.message_hub.log_scalars
    assert 'train/loss_mle' in scalars and 'train/loss_oks' in scalars
    assert np.isfinite(scalars['train/loss'].current())
    changed = [name for name, p in head.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert 'dcc.sigma_fc.0.weight' in changed and 'head_module.out_cls.0.weight' in changed

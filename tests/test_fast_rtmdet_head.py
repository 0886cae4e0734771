"""FastRTMDetHead / FastRTMDetSepBNHead / FastRTMDetInsSepBNHead vs mmdet's RTMDet heads: the same
losses per key and level and gradients per parameter, the same assignment of every image (up to
exact cost ties), one op call per batch, the inside-flags filter, the config swaps."""
import copy
import functools
import importlib

import pytest
import torch

pytest.importorskip('mmdet')

from mmdet.models.task_modules.assigners import DynamicSoftLabelAssigner  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmengine.hub import get_config  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import fastops.mm  # noqa: E402,F401
from fastops.mm.assigners import FusedDynamicSoftLabelAssigner  # noqa: E402
from fastops.mm.rtmdet_head import FastRTMDetInsSepBNHead, FastRTMDetSepBNHead  # noqa: E402
from assigner_checks import AssignmentSpy  # noqa: E402

pytestmark = pytest.mark.usefixtures('mmdet_scope')

RTMDET_S = 'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py'
RTMDET_INS_S = 'mmdet::rtmdet/rtmdet-ins_s_8xb32-300e_coco.py'
CHANNELS = 32  # of the neck outputs and the head's convolutions (128 in RTMDet-s): keeps the cases fast
STRIDES = (8, 16, 32)
# Both heads compute the same losses from the same targets (equal bit for bit: the assignment is
# the stock one); the bounds only allow float32 reordering, which was not seen (differences 0).
LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5
GRAD_ATOL = 1e-6  # of the head's largest gradient

# gts per image, input size (h, w), kind of boxes
CASES = {
    '3 images: 0, 3 and 60 gts': ([0, 3, 60], (128, 128), 'normal'),
    '2 images: tiny boxes, non-square input': ([5, 20], (96, 160), 'tiny'),
    '1 image: 7 gts': ([7], (128, 128), 'normal'),
    '4 images: boxes partly outside the image': ([2, 9, 1, 4], (128, 96), 'outside'),
    '2 images: crowded, 150 and 300 gts': ([150, 300], (128, 128), 'small'),
}


@functools.lru_cache(maxsize=2)
def published_model(config: str):
    return get_config(config).model


def head_cfg(config: str, head_type: str, **changes) -> dict:
    """The published head and train_cfg with ``CHANNELS`` channels and plain BN (one process)."""
    model = published_model(config)
    head = model.bbox_head.to_dict()
    if not head_type.endswith('SepBNHead'):  # RTMDetHead has no shared-conv / kernel-size options
        for key in ('exp_on_reg', 'share_conv', 'pred_kernel_size'):
            head.pop(key, None)
    head.update(type=head_type, in_channels=CHANNELS, feat_channels=CHANNELS, norm_cfg=dict(type='BN'),
                train_cfg=model.train_cfg.to_dict(), test_cfg=copy.deepcopy(model.test_cfg), **changes)
    return head


def stock_and_fast_heads(stock_type='RTMDetSepBNHead', config=RTMDET_S, seed=0, **changes):
    torch.manual_seed(seed)
    stock = MODELS.build(head_cfg(config, stock_type, **changes))
    stock.init_weights()
    fast = MODELS.build(head_cfg(config, 'Fast' + stock_type, **changes))
    fast.load_state_dict(stock.state_dict())
    return stock.train(), fast.train()


def random_gts(generator, num: int, size, kind: str, masks: bool = False) -> InstanceData:
    scale = torch.tensor([size[1], size[0]], dtype=torch.float32)
    center = torch.rand(num, 2, generator=generator) * scale
    if kind == 'tiny':
        wh = torch.rand(num, 2, generator=generator) * 3.5 + 0.5
    elif kind == 'small':
        wh = (torch.rand(num, 2, generator=generator) * 0.2 + 0.02) * scale
    else:
        wh = (torch.rand(num, 2, generator=generator) * 0.5 + 0.05) * scale
    if kind == 'outside':
        center = center * 1.4 - 0.2 * scale
    gt = InstanceData(bboxes=torch.cat([center - wh / 2, center + wh / 2], 1),
                      labels=torch.randint(0, 80, (num, ), generator=generator))
    if masks:
        ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing='ij')
        bitmaps = torch.zeros(num, *size, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(gt.bboxes.tolist()):
            bitmaps[i] = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < (y1 + y2) / 2 + 2)  # the box's upper half
        gt.masks = BitmapMasks(bitmaps.numpy(), *size)
    return gt


def synthetic_batch(seed: int, gts_per_image, size, kind: str = 'normal', masks: bool = False, pad_shapes=None):
    generator = torch.Generator().manual_seed(seed)
    gts = [random_gts(generator, num, size, kind, masks) for num in gts_per_image]
    feats = tuple(torch.randn(len(gts), CHANNELS, size[0] // s, size[1] // s, generator=generator) for s in STRIDES)
    pad_shapes = pad_shapes or [size] * len(gts)
    metas = [dict(img_shape=pad, pad_shape=pad, batch_input_shape=size) for pad in pad_shapes]
    return feats, gts, metas


def head_loss_and_backward(head, feats, gts, metas) -> dict:
    head.zero_grad(set_to_none=True)
    losses = head.loss_by_feat(*head(feats), copy.deepcopy(gts), metas)  # the Ins head converts gt masks in place
    total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
    total.backward()
    return losses


def flat_losses(losses: dict) -> dict:
    out = {}
    for key, value in losses.items():
        for level, item in enumerate(value if isinstance(value, list) else [value]):
            out[f'{key}[{level}]'] = item.detach()
    return out


def compare(fast, stock, fast_losses, stock_losses) -> tuple:
    """Asserts parity; returns (largest relative loss difference, largest gradient difference
    relative to the largest gradient)."""
    fast_flat, stock_flat = flat_losses(fast_losses), flat_losses(stock_losses)
    assert list(fast_flat) == list(stock_flat)
    loss_dev = 0.0
    for key, value in stock_flat.items():
        torch.testing.assert_close(fast_flat[key], value, rtol=LOSS_RTOL, atol=0, msg=key)
        loss_dev = max(loss_dev, float((fast_flat[key] - value).abs() / value.abs().clamp(min=1e-12)))
    stock_grads = {name: p.grad for name, p in stock.named_parameters() if p.grad is not None}
    fast_grads = {name: p.grad for name, p in fast.named_parameters() if p.grad is not None}
    assert set(fast_grads) == set(stock_grads) and stock_grads
    largest = max(float(g.abs().max()) for g in stock_grads.values())
    for name, grad in stock_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL * largest, msg=name)
    grad_dev = max(float((fast_grads[n] - g).abs().max()) for n, g in stock_grads.items()) / largest
    return loss_dev, grad_dev


def assert_same_assignments(spy, gts, batch_index=0):
    """Each image's stock assignment (images without gts and the batch assignment's rows)."""
    batch = spy.fast_batches[batch_index]
    assert len(spy.stock_results) == len(gts)
    for b, stock in enumerate(spy.stock_results):
        for key in ('gt_inds', 'labels'):
            assert torch.equal(batch[key][b], getattr(stock, key)), (b, key)
        pos = stock.gt_inds > 0
        assert torch.equal(batch['max_overlaps'][b][pos], stock.max_overlaps[pos]), b


def run_both(monkeypatch, stock, fast, feats, gts, metas, calls=1):
    spy = AssignmentSpy(monkeypatch, stock, fast)
    stock_losses = head_loss_and_backward(stock, feats, gts, metas)
    fast_losses = head_loss_and_backward(fast, feats, gts, metas)
    assert len(spy.fast_batches) == calls
    return fast_losses, stock_losses, spy


@pytest.mark.parametrize('case', list(CASES), ids=list(CASES))
def test_sepbn_head_loss_and_gradients_match_stock(case, monkeypatch):
    gts_per_image, size, kind = CASES[case]
    stock, fast = stock_and_fast_heads()
    feats, gts, metas = synthetic_batch(list(CASES).index(case), gts_per_image, size, kind)
    fast_losses, stock_losses, spy = run_both(monkeypatch, stock, fast, feats, gts, metas)
    assert set(fast_losses) == {'loss_cls', 'loss_bbox'}
    assert spy.fast_batches[0]['gt_inds'].any()
    assert_same_assignments(spy, gts)
    loss_dev, grad_dev = compare(fast, stock, fast_losses, stock_losses)
    print(f'\n{case}: loss {loss_dev:.1e}, gradients {grad_dev:.1e} (relative)')


def test_plain_head_with_objectness_matches_stock(monkeypatch):
    stock, fast = stock_and_fast_heads('RTMDetHead', with_objectness=True)
    feats, gts, metas = synthetic_batch(21, [4, 11], (96, 96))
    fast_losses, stock_losses, spy = run_both(monkeypatch, stock, fast, feats, gts, metas)
    assert_same_assignments(spy, gts)
    compare(fast, stock, fast_losses, stock_losses)


@pytest.mark.parametrize('gts_per_image', [[3, 0, 12], [40, 2]])
def test_ins_head_loss_and_gradients_match_stock(gts_per_image, monkeypatch):
    """RTMDet-Ins: the assigner measures to the masks' centres (the upper half of each box here,
    so the centres differ from the box centres); the mask loss reads the sampling results."""
    stock, fast = stock_and_fast_heads('RTMDetInsSepBNHead', RTMDET_INS_S)
    feats, gts, metas = synthetic_batch(31 + len(gts_per_image), gts_per_image, (96, 96), masks=True)
    fast_losses, stock_losses, spy = run_both(monkeypatch, stock, fast, feats, gts, metas)
    assert set(fast_losses) == {'loss_cls', 'loss_bbox', 'loss_mask'}
    assert_same_assignments(spy, gts)
    loss_dev, grad_dev = compare(fast, stock, fast_losses, stock_losses)
    print(f'\nRTMDet-Ins {gts_per_image}: loss {loss_dev:.1e}, gradients {grad_dev:.1e} (relative)')


def test_batch_without_gts_matches_stock(monkeypatch):
    stock, fast = stock_and_fast_heads()
    feats, gts, metas = synthetic_batch(5, [0, 0], (96, 96))
    fast_losses, stock_losses, spy = run_both(monkeypatch, stock, fast, feats, gts, metas)
    assert not spy.fast_batches[0]['gt_inds'].any()
    compare(fast, stock, fast_losses, stock_losses)


def test_images_smaller_than_the_batch_use_the_inside_flags(monkeypatch):
    """Images padded to less than the batch input: the priors beyond an image's pad_shape are
    invalid (label weight 0, never assigned), as stock; one image has a gt box reaching beyond its
    pad_shape, whose outside priors would be candidates: it is assigned on its inside priors, as
    stock assigns it."""
    stock, fast = stock_and_fast_heads()
    pad_shapes = [(128, 128), (64, 96), (96, 64)]
    feats, gts, metas = synthetic_batch(8, [6, 5, 3], (128, 128), pad_shapes=pad_shapes)
    for gt, (h, w) in zip(gts, pad_shapes):  # boxes clipped to the image, as mmdet's pipelines do
        gt.bboxes = gt.bboxes.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
    gts[1].bboxes[0] = torch.tensor([40.0, 20.0, 120.0, 60.0])  # beyond the 96 px wide pad_shape
    fast_losses, stock_losses, spy = run_both(monkeypatch, stock, fast, feats, gts, metas, calls=2)
    assert assert_same_assignments_on_inside(spy, fast, metas) == 2
    compare(fast, stock, fast_losses, stock_losses)


def assert_same_assignments_on_inside(spy, fast, metas, featmap_sizes=((16, 16), (8, 8), (4, 4))):
    """The stock assigner saw each image's inside priors only: compare on those; the others are
    unassigned. Returns the number of images with outside priors."""
    batch, partial = spy.fast_batches[0], 0
    assert len(spy.stock_results) == len(metas)
    for b, (stock, meta) in enumerate(zip(spy.stock_results, metas)):
        inside = torch.cat(fast.prior_generator.valid_flags(featmap_sizes, meta['pad_shape'], device='cpu'))
        partial += not bool(inside.all())
        assert not batch['gt_inds'][b][~inside].any()
        for key in ('gt_inds', 'labels'):
            assert torch.equal(batch[key][b][inside], getattr(stock, key)), (b, key)
        pos = stock.gt_inds > 0
        assert torch.equal(batch['max_overlaps'][b][inside][pos], stock.max_overlaps[pos]), b
    return partial


def test_one_assignment_call_per_batch(monkeypatch):
    module = importlib.import_module('fastops.ops.dynamic_soft_label_assign')
    _, fast = stock_and_fast_heads()
    calls = []
    fused = module.dynamic_soft_label_assign
    monkeypatch.setattr(module, 'dynamic_soft_label_assign', lambda *a, **k: calls.append(1) or fused(*a, **k))
    feats, gts, metas = synthetic_batch(6, [3, 0, 5, 2, 1, 4, 6, 2], (96, 96))
    head_loss_and_backward(fast, feats, gts, metas)
    assert len(calls) == 1


@pytest.mark.parametrize('assigner', ['DynamicSoftLabelAssigner', 'FusedDynamicSoftLabelAssigner'])
def test_assigner_config_is_built_fused(assigner):
    cfg = head_cfg(RTMDET_S, 'FastRTMDetSepBNHead')
    cfg['train_cfg']['assigner'] = dict(type=assigner, topk=9, soft_center_radius=2.0)
    head = MODELS.build(cfg)
    assert isinstance(head, FastRTMDetSepBNHead) and isinstance(head.assigner, FusedDynamicSoftLabelAssigner)
    assert (head.assigner.topk, head.assigner.soft_center_radius) == (9, 2.0)
    cfg = head_cfg(RTMDET_INS_S, 'FastRTMDetInsSepBNHead')
    assert isinstance(MODELS.build(cfg), FastRTMDetInsSepBNHead)


def test_rejects_other_assigners_and_samplers():
    cfg = head_cfg(RTMDET_S, 'FastRTMDetSepBNHead')
    cfg['train_cfg']['assigner'] = dict(type='ATSSAssigner', topk=9)
    with pytest.raises(ValueError, match='FastRTMDetSepBNHead: assigner must be DynamicSoftLabelAssigner'):
        MODELS.build(cfg)
    cfg = head_cfg(RTMDET_S, 'FastRTMDetSepBNHead')
    cfg['train_cfg']['sampler'] = dict(type='RandomSampler', num=256, pos_fraction=0.5)
    with pytest.raises(ValueError, match='sampler must be PseudoSampler'):
        MODELS.build(cfg)


def test_without_train_cfg_it_predicts_as_stock():
    torch.manual_seed(0)
    cfg = dict(head_cfg(RTMDET_S, 'RTMDetSepBNHead'), train_cfg=None)
    stock = MODELS.build(cfg).eval()
    fast = MODELS.build(dict(cfg, type='FastRTMDetSepBNHead')).eval()
    fast.load_state_dict(stock.state_dict())
    assert not hasattr(fast, 'assigner')
    feats, _, metas = synthetic_batch(3, [1], (96, 96))
    metas[0]['scale_factor'] = (1.0, 1.0)
    with torch.no_grad():
        stock_results = stock.predict_by_feat(*stock(feats), batch_img_metas=metas, rescale=False)
        fast_results = fast.predict_by_feat(*fast(feats), batch_img_metas=metas, rescale=False)
    for name in ('bboxes', 'scores', 'labels'):
        assert torch.equal(getattr(fast_results[0], name), getattr(stock_results[0], name))


def test_stock_assigner_class_is_the_one_compared():
    assert DynamicSoftLabelAssigner.__module__.startswith('mmdet.')

"""FastYOLOXPoseHead vs mmpose YOLOXPoseHead: same losses and gradients from one batched
assignment (the targets code is FastRTMOHead's, BatchedPoseTargets)."""
import os
import sys

import pytest
import torch

pytest.importorskip('mmpose')
pytest.importorskip('mmdet')

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtmo_head_cases import stock_and_fast_heads, synthetic_batch  # noqa: E402
from test_fast_rtmo_head import assert_grads_match, assert_losses_match, run_both  # noqa: E402

SIZE = 128  # 16x16 + 8x8 + 4x4 priors keep the cases fast

PEOPLE = {
    '2 images': [3, 4],
    'one image without gts': [0, 5],
    'crowded': [40, 1],
    '6 images, two without gts': [3, 0, 5, 2, 0, 6],
    'no gt in the batch': [0, 0],
}


@pytest.mark.parametrize('people', list(PEOPLE.values()), ids=list(PEOPLE))
def test_loss_and_gradients_match_stock(people):
    stock, fast = stock_and_fast_heads(family='yoloxpose')
    feats, samples = synthetic_batch(len(people), people, SIZE, family='yoloxpose')
    assert_losses_match(*run_both(stock, fast, feats, samples))
    assert_grads_match(fast, stock)


def test_assigns_the_batch_in_one_call(monkeypatch):
    stock, fast = stock_and_fast_heads(family='yoloxpose')
    calls = []
    batch_assign = fast.assigner.assign_batch
    monkeypatch.setattr(fast.assigner, 'assign_batch', lambda *a, **k: calls.append(1) or batch_assign(*a, **k))
    monkeypatch.setattr(fast.assigner, 'assign', lambda *a, **k: pytest.fail('per-image assign called'))
    feats, samples = synthetic_batch(2, [3, 0, 4], SIZE, family='yoloxpose')
    fast.loss(feats, samples)
    assert calls == [1]


def test_builds_from_a_stock_assigner_config():
    _, fast = stock_and_fast_heads(family='yoloxpose')
    assert type(fast.assigner).__name__ == 'FusedSimOTAAssigner'
    assert fast.assigner.dynamic_k_indicator == 'oks'
    assert not any(type(m).__name__ == 'Swish' for m in fast.modules())

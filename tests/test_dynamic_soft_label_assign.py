"""dynamic_soft_label_assign: op vs reference and vs the installed mmdet DynamicSoftLabelAssigner (per
image), adversarial inputs (NaN/inf, ties, empty, huge, non-contiguous), errors, opcheck,
torch.compile, CUDA vs CPU, and the crowded-image memory stress case. The mmdet drop-in
(FusedDynamicSoftLabelAssigner) has its own parity suite in test_fused_dsl_assigner.py."""
import os
import subprocess
import sys

import pytest
import torch

import fastops
from fastops.reference.dynamic_soft_label_assign import dynamic_soft_label_assign_reference

sys.path.insert(0, os.path.dirname(__file__))
from simota_cases import with_nonfinite  # noqa: E402
from soft_label_cases import RTMDET_CONFIG, random_batch  # noqa: E402

KINDS = ('normal', 'tiny', 'outside', 'nowhere')
GT_COUNTS = ([0, 1, 3, 20], [100, 3, 1, 20], [20, 20, 0, 1], [3, 60, 20, 3])
SETTINGS = (RTMDET_CONFIG, dict(soft_center_radius=2.0, topk=5, iou_weight=1.0),
            dict(soft_center_radius=3.0, topk=1, iou_weight=0.0))


def case_of(seed: int):
    """(size, gts per image, classes, kind, settings) of a seeded case; cycles through the variants."""
    return (320 + 160 * (seed % 3), GT_COUNTS[seed % 4], (80, 1, 7)[seed % 3], KINDS[(seed // 2) % 4],
            SETTINGS[(seed // 3) % 3])


def assert_same_assignment(ours, theirs):
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[2], theirs[2])
    assert torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize('seed', range(24))
def test_op_matches_reference(seed):
    size, gts, classes, kind, settings = case_of(seed)
    args = random_batch(seed, size, gts, classes, kind)
    ours = fastops.dynamic_soft_label_assign(*args, **settings)
    assert_same_assignment(ours, dynamic_soft_label_assign_reference(*args, **settings))
    if kind != 'nowhere' and sum(gts):
        assert (ours[0] > 0).any()


def _stock_assign(args, b, settings, gt_centers=None):
    from mmdet.models.task_modules.assigners import DynamicSoftLabelAssigner
    from mmengine.structures import InstanceData
    priors, boxes, scores, gt_boxes, labels, num_gts = args
    n = int(num_gts[b])
    return DynamicSoftLabelAssigner(**settings).assign(
        InstanceData(priors=priors, bboxes=boxes[b], scores=scores[b]),
        InstanceData(bboxes=gt_boxes[b, :n], labels=labels[b, :n]))


@pytest.mark.parametrize('seed', range(12))
def test_op_matches_stock_mmdet(seed):
    pytest.importorskip('mmdet')
    size, gts, classes, kind, settings = case_of(seed)
    args = random_batch(100 + seed, size, gts, classes, kind)
    ours = fastops.dynamic_soft_label_assign(*args, **settings)
    for b in range(len(gts)):
        stock = _stock_assign(args, b, settings)
        assert torch.equal(ours[0][b], stock.gt_inds) and torch.equal(ours[2][b], stock.labels)
        assert torch.equal(ours[1][b], stock.max_overlaps)


def test_gt_centers_replace_the_box_centres():
    args = random_batch(3, 480, [20, 5], 80)
    gt_boxes = args[3]
    box_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2.0
    default = fastops.dynamic_soft_label_assign(*args)
    assert_same_assignment(fastops.dynamic_soft_label_assign(*args, gt_centers=box_centres), default)
    shifted = box_centres + torch.tensor([40.0, -30.0])
    moved = fastops.dynamic_soft_label_assign(*args, gt_centers=shifted)
    assert_same_assignment(moved, dynamic_soft_label_assign_reference(*args, gt_centers=shifted))
    assert not torch.equal(moved[0], default[0])


def test_hand_made_case():
    """One gt, three priors inside it: dynamic_k = max(1, trunc(0.90 + 0.14 + 0)) = 1; the prior with
    the best IoU at the gt centre wins; the others keep -1e8; a prior outside every box is invalid."""
    priors = torch.tensor([[50., 50., 8., 8.], [40., 40., 8., 8.], [60., 62., 8., 8.], [200., 200., 8., 8.]])
    gt = torch.tensor([[[30., 30., 70., 70.]]])
    boxes = torch.tensor([[[31., 31., 71., 69.], [10., 10., 50., 50.], [70., 70., 90., 90.], [0., 0., 1., 1.]]])
    scores = torch.zeros(1, 4, 3)
    gt_inds, overlaps, labels = fastops.dynamic_soft_label_assign(priors, boxes, scores, gt, torch.tensor([[2]]),
                                                                  torch.tensor([1]))
    assert gt_inds.tolist() == [[1, 0, 0, 0]] and labels.tolist() == [[2, -1, -1, -1]]
    assert overlaps[0, 0].item() == pytest.approx(39 * 38 / (40 * 38 + 40 * 40 - 39 * 38), rel=1e-6)
    assert overlaps[0, 1:].tolist() == [-1e8] * 3


def test_empty_inputs():
    priors, boxes, scores, gt_boxes, labels, num_gts = random_batch(0, 320, [3, 1], 80)
    no_gt = fastops.dynamic_soft_label_assign(priors, boxes, scores, gt_boxes[:, :0], labels[:, :0],
                                              torch.zeros(2).long())
    assert no_gt[0].shape == (2, priors.size(0)) and not no_gt[0].any() and not no_gt[1].any()
    assert (no_gt[2] == -1).all()
    zero_gts = fastops.dynamic_soft_label_assign(priors, boxes, scores, gt_boxes, labels, torch.zeros(2).long())
    assert not zero_gts[0].any() and not zero_gts[1].any()
    no_image = fastops.dynamic_soft_label_assign(priors, boxes[:0], scores[:0], gt_boxes[:0], labels[:0],
                                                 num_gts[:0])
    assert [t.shape for t in no_image] == [(0, priors.size(0))] * 3
    no_prior = fastops.dynamic_soft_label_assign(priors[:0], boxes[:, :0], scores[:, :0], gt_boxes, labels, num_gts)
    assert [t.shape for t in no_prior] == [(2, 0)] * 3
    nowhere = random_batch(1, 320, [4, 2], 80, kind='nowhere')
    result = fastops.dynamic_soft_label_assign(*nowhere)
    assert not result[0].any() and not result[1].any()  # no valid prior: zeros, as stock


@pytest.mark.parametrize('seed', range(6))
def test_non_finite_predictions_follow_the_nan_rule(seed):
    """NaN/±inf boxes and logits: identical to the reference (NaN costs and IoUs are never picked)."""
    args = random_batch(seed, 480, [20, 3, 0], 7)
    poisoned, _ = with_nonfinite(args, {}, seed, rate=0.01)
    ours = fastops.dynamic_soft_label_assign(*poisoned)
    assert_same_assignment(ours, dynamic_soft_label_assign_reference(*poisoned))
    matched = ours[0] > 0
    assert not ours[1][matched].isnan().any()


def test_exact_cost_ties_go_to_the_lower_prior_index():
    """Identical predictions at priors symmetric about the gt centre: equal costs, lower index wins."""
    priors = torch.tensor([[40., 50., 8., 8.], [60., 50., 8., 8.]])
    boxes = torch.tensor([[[30., 30., 70., 70.], [30., 30., 70., 70.]]])
    gt = torch.tensor([[[30., 30., 70., 70.]]])
    scores = torch.zeros(1, 2, 1)
    gt_inds, _, _ = fastops.dynamic_soft_label_assign(priors, boxes, scores, gt, torch.zeros(1, 1).long(),
                                                      torch.tensor([1]), topk=1)
    assert gt_inds.tolist() == [[1, 0]]


def test_conflicts_go_to_the_cheapest_gt():
    args = random_batch(9, 320, [60], 3)  # crowded: many priors picked by several gts
    ours = fastops.dynamic_soft_label_assign(*args)
    assert_same_assignment(ours, dynamic_soft_label_assign_reference(*args))


def test_huge_and_non_contiguous_inputs():
    priors, boxes, scores, gt_boxes, labels, num_gts = random_batch(4, 480, [20, 7], 80)
    expected = fastops.dynamic_soft_label_assign(priors, boxes, scores, gt_boxes, labels, num_gts)
    strided = fastops.dynamic_soft_label_assign(
        priors.t().contiguous().t(), boxes.transpose(0, 1).contiguous().transpose(0, 1),
        torch.cat([scores, scores], -1)[..., :80], gt_boxes.transpose(1, 2).contiguous().transpose(1, 2),
        labels.t().contiguous().t(), num_gts)
    assert_same_assignment(strided, expected)
    huge = scores * 1e4
    assert_same_assignment(fastops.dynamic_soft_label_assign(priors, boxes, huge, gt_boxes, labels, num_gts),
                           dynamic_soft_label_assign_reference(priors, boxes, huge, gt_boxes, labels, num_gts))


def _inputs():
    return list(random_batch(1, 320, [3, 2], 4))


@pytest.mark.parametrize('change, message', [
    (lambda a: a.__setitem__(1, a[1].double()), 'pred_bboxes must be Float'),
    (lambda a: a.__setitem__(2, a[2].half()), 'pred_scores must be Float'),
    (lambda a: a.__setitem__(4, a[4].int()), 'gt_labels must be Long'),
    (lambda a: a.__setitem__(5, torch.tensor([3, -1])), r'num_gts\[1\] = -1 is outside \[0, G = 3\]'),
    (lambda a: a.__setitem__(5, torch.tensor([3, 4])), r'num_gts\[1\] = 4 is outside \[0, G = 3\]'),
    (lambda a: a.__setitem__(4, torch.full_like(a[4], 4)), r'gt_labels\[0, 0\] = 4 of a real gt is outside'),
    (lambda a: a.__setitem__(3, a[3][:, :, :3]), 'gt_bboxes must have shape'),
    (lambda a: a.__setitem__(5, torch.tensor([3])), 'num_gts must have shape'),
    (lambda a: a.__setitem__(0, a[0][:, :2]), 'priors must be'),
])
def test_bad_inputs_raise(change, message):
    args = _inputs()
    change(args)
    with pytest.raises(RuntimeError, match=message):
        fastops.dynamic_soft_label_assign(*args)


@pytest.mark.parametrize('settings, message', [
    (dict(topk=0), 'topk must be >= 1'),
    (dict(iou_weight=-1.0), 'iou_weight must be >= 0'),
    (dict(soft_center_radius=float('nan')), 'soft_center_radius must be finite'),
    (dict(gt_centers=torch.zeros(2, 3, 3)), 'gt_centers must have shape'),
])
def test_bad_settings_raise(settings, message):
    with pytest.raises(RuntimeError, match=message):
        fastops.dynamic_soft_label_assign(*_inputs(), **settings)


def test_debug_mode_rejects_non_finite():
    args = _inputs()
    args[2] = args[2].clone()
    args[2][0, 0, 0] = float('inf')
    fastops.set_debug(True)
    try:
        with pytest.raises(ValueError, match='pred_scores has non-finite'):
            fastops.dynamic_soft_label_assign(*args)
    finally:
        fastops.set_debug(False)


@pytest.mark.parametrize('with_centers', [False, True])
def test_opcheck(with_centers):
    args = random_batch(2, 320, [3, 5], 7)
    centers = (args[3][..., :2] + args[3][..., 2:]) / 2 if with_centers else None
    torch.library.opcheck(torch.ops.fastops.dynamic_soft_label_assign.default, (*args, centers, 3.0, 13, 3.0))


def test_torch_compile_fullgraph():
    args = random_batch(3, 320, [20, 4], 80)
    compiled = torch.compile(fastops.dynamic_soft_label_assign, fullgraph=True)(*args, **RTMDET_CONFIG)
    assert_same_assignment(compiled, fastops.dynamic_soft_label_assign(*args, **RTMDET_CONFIG))
    assert (compiled[0] > 0).any()


def test_devices_without_kernel_fall_back_to_reference(monkeypatch):
    module = sys.modules['fastops.ops.dynamic_soft_label_assign']
    args = random_batch(6, 320, [3, 20], 80)
    compiled = fastops.dynamic_soft_label_assign(*args)
    monkeypatch.setattr(module, 'has_kernel', lambda device: False)
    assert_same_assignment(fastops.dynamic_soft_label_assign(*args), compiled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('seed', range(12))
def test_cuda_matches_cpu(seed):
    size, gts, classes, kind, settings = case_of(seed)
    args = random_batch(seed, size, gts, classes, kind)
    on_cpu = fastops.dynamic_soft_label_assign(*args, **settings)
    on_cuda = fastops.dynamic_soft_label_assign(*[a.cuda() for a in args], **settings)
    assert_same_assignment(tuple(t.cpu() for t in on_cuda), on_cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_rejects_inputs_on_another_device():
    args = [a.cuda() for a in _inputs()]
    args[1] = args[1].cpu()
    with pytest.raises(RuntimeError, match='pred_bboxes is on cpu but priors are on cuda'):
        fastops.dynamic_soft_label_assign(*args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_nan_rule_and_gt_centers_match_cpu():
    args, _ = with_nonfinite(random_batch(7, 480, [20, 3, 0], 7), {}, 7, rate=0.01)
    centers = (args[3][..., :2] + args[3][..., 2:]) / 2 + 5
    on_cpu = fastops.dynamic_soft_label_assign(*args, gt_centers=centers)
    on_cuda = fastops.dynamic_soft_label_assign(*[a.cuda() for a in args], gt_centers=centers.cuda())
    assert_same_assignment(tuple(t.cpu() for t in on_cuda), on_cpu)


def test_stress_8400_priors_500_gts_peak_memory():
    """P=8400, G=500, C=80 in a fresh process: peak extra memory O(B*P*G), far under stock's."""
    script = os.path.join(os.path.dirname(__file__), '..', 'bench', 'soft_label_stress_memory.py')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(fastops.__file__)),
                                                       os.environ.get('PYTHONPATH', '')]))
    line = subprocess.run([sys.executable, script, 'fastops', '500', '1'], capture_output=True, text=True, env=env,
                          check=True, timeout=300).stdout.split()
    print('\n' + ' '.join(line))
    assert float(line[line.index('peak_extra_MiB') + 1]) < 256
    assert int(line[line.index('matched') + 1]) > 0

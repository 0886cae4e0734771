"""FusedDynamicSoftLabelAssigner vs mmdet's DynamicSoftLabelAssigner (RTMDet, RTMDet-Ins): the same
``AssignResult`` (gt_inds, labels, max_overlaps compared exactly) on 320 seeded random and
adversarial cases, exact cost ties shown to differ only in their order, the constructor, the box
and mask types, and clear errors on bad input."""

import pytest
import torch

pytest.importorskip('mmdet')

from mmdet.models.task_modules.assigners import dynamic_soft_label_assigner  # noqa: E402
from mmdet.registry import TASK_UTILS  # noqa: E402
from mmdet.structures.bbox import HorizontalBoxes  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import fastops.mm  # noqa: E402,F401  (registers the drop-ins)
from fastops.mm.assigners import FusedDynamicSoftLabelAssigner  # noqa: E402
from assigner_checks import lower_index_ties  # noqa: E402

pytestmark = pytest.mark.usefixtures('mmdet_scope')

STRIDES = (8, 16, 32)
# kind of case: number of seeded cases. 320 in all.
KINDS = {'random': 90, 'no_gt': 15, 'no_valid_prior': 20, 'tiny': 30, 'crowded': 25, 'many_classes': 30,
         'masks': 30, 'bitmap_masks': 15, 'degenerate': 30, 'horizontal_boxes': 20, 'far_predictions': 15}
CASES = [(kind, seed) for kind, count in KINDS.items() for seed in range(count)]


def grid_priors(h: int, w: int, strides=STRIDES) -> torch.Tensor:
    """RTMDet's priors (MlvlPointGenerator, offset 0, with strides): [P, 4] x, y, stride, stride."""
    levels = []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(0, h, s, dtype=torch.float32),
                                torch.arange(0, w, s, dtype=torch.float32), indexing='ij')
        levels.append(torch.stack([xs.flatten(), ys.flatten(), torch.full_like(xs.flatten(), s),
                                   torch.full_like(xs.flatten(), s)], 1))
    return torch.cat(levels)


def random_boxes(g: torch.Generator, num: int, h: int, w: int, lo: float = 0.05, hi: float = 0.6) -> torch.Tensor:
    scale = torch.tensor([w, h], dtype=torch.float32)
    center = torch.rand(num, 2, generator=g) * scale
    wh = (torch.rand(num, 2, generator=g) * (hi - lo) + lo) * scale
    return torch.cat([center - wh / 2, center + wh / 2], 1)


def random_masks(g: torch.Generator, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[G, h, w] bool: a random blob inside each box (some empty: center_of_mass's eps case)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if torch.rand(1, generator=g) < 0.1:
            continue
        inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        masks[i] = inside & (torch.rand(h, w, generator=g) < 0.7)
    return masks


def make_case(kind: str, seed: int):
    """(pred_instances, gt_instances) of one seeded case."""
    g = torch.Generator().manual_seed(1000 * list(KINDS).index(kind) + seed)
    h, w = [int(v) for v in torch.randint(2, 9, (2, ), generator=g) * 16]
    num_classes = 80 if kind != 'many_classes' else int(torch.randint(81, 260, (1, ), generator=g))
    if kind in ('random', 'masks', 'bitmap_masks', 'horizontal_boxes', 'degenerate', 'far_predictions'):
        num_classes = [1, 3, 80][seed % 3]
    num_gt = int(torch.randint(1, 25, (1, ), generator=g))
    if kind == 'crowded':
        num_gt = int(torch.randint(100, 400, (1, ), generator=g))
    elif kind == 'no_gt':
        num_gt = 0
    priors = grid_priors(h, w)
    num_priors = len(priors)
    gt_bboxes = random_boxes(g, num_gt, h, w)
    if kind == 'tiny':
        gt_bboxes = random_boxes(g, num_gt, h, w, lo=0.005, hi=0.05)
    elif kind == 'crowded':
        gt_bboxes = random_boxes(g, num_gt, h, w, lo=0.02, hi=0.3)
    elif kind == 'no_valid_prior':
        # boxes between grid points (no prior centre strictly inside) or outside the image
        cells = torch.randint(0, max(h, w) // 8, (num_gt, 2), generator=g).float() * 8
        offset = torch.rand(num_gt, 2, generator=g) * 3 + 1
        gt_bboxes = torch.cat([cells + offset, cells + offset + torch.rand(num_gt, 2, generator=g) * 3 + 0.5], 1)
        if seed % 2:
            gt_bboxes = gt_bboxes + torch.tensor([w, h, w, h], dtype=torch.float32) * 2
        # one box exactly from grid point to grid point: centres on its edges are not inside
        gt_bboxes[0] = torch.tensor([8.0, 8.0, 16.0, 16.0])
    elif kind == 'degenerate':
        # zero-width, zero-height and inverted boxes among normal ones, and some exactly on the grid
        n = num_gt
        gt_bboxes[:n // 3, 2] = gt_bboxes[:n // 3, 0]
        gt_bboxes[n // 3:n // 2, 1], gt_bboxes[n // 3:n // 2, 3] = gt_bboxes[n // 3:n // 2, 3], gt_bboxes[n // 3:n // 2, 1]
        gt_bboxes[-1] = torch.tensor([0.0, 0.0, float(w), float(h)])
        if n > 1:
            gt_bboxes[-2] = (gt_bboxes[-2] / 8).round() * 8
    gt_labels = torch.randint(0, num_classes, (num_gt, ), generator=g)

    # predictions: boxes around each prior (and around gts for a share), random logits
    centre = priors[:, :2] + torch.randn(num_priors, 2, generator=g) * priors[:, 2:] * 0.3
    half = (torch.rand(num_priors, 2, generator=g) * 4 + 0.5) * priors[:, 2:]
    pred_bboxes = torch.cat([centre - half, centre + half], 1)
    if num_gt and kind != 'far_predictions':
        near = torch.rand(num_priors, generator=g) < 0.5
        which = torch.randint(0, num_gt, (num_priors, ), generator=g)
        jitter = torch.randn(num_priors, 4, generator=g) * 4
        pred_bboxes[near] = gt_bboxes[which[near]] + jitter[near]
    if kind == 'far_predictions':
        pred_bboxes = pred_bboxes + 10 * max(h, w)  # every IoU 0: costs from the class and centre terms
    if kind == 'degenerate':
        pred_bboxes[::7, 2:] = pred_bboxes[::7, :2]  # zero-area predictions
    scores = torch.randn(num_priors, num_classes, generator=g) * 2.5 - 2.0
    pred = InstanceData(priors=priors, bboxes=pred_bboxes, scores=scores)
    gt = InstanceData(bboxes=gt_bboxes, labels=gt_labels)
    if kind in ('masks', 'bitmap_masks'):
        masks = random_masks(g, gt_bboxes, h, w)
        gt.masks = masks if kind == 'masks' else BitmapMasks(masks.numpy(), h, w)
    if kind == 'horizontal_boxes':
        # keep prior centres off box edges: there the stock HorizontalBoxes path (inclusive)
        # differs from its tensor path (strict), see test_horizontal_boxes_edge_is_the_tensor_rule
        gt.bboxes = HorizontalBoxes(gt_bboxes + 0.37)
    return pred, gt


def stock_assign(pred, gt):
    """The installed stock assigner; BitmapMasks as the stock RTMDet-Ins head passes them (bool tensor)."""
    if isinstance(gt.get('masks'), BitmapMasks):
        gt = gt.clone()
        gt.masks = gt.masks.to_tensor(dtype=torch.bool, device='cpu')
    return TASK_UTILS.build(dict(type='DynamicSoftLabelAssigner', topk=13)).assign(pred, gt)


def assert_same_result(fast, stock, context=''):
    assert fast.num_gts == stock.num_gts, context
    for key in ('gt_inds', 'labels', 'max_overlaps'):
        f, s = getattr(fast, key), getattr(stock, key)
        assert f.dtype == s.dtype and f.shape == s.shape, (context, key, f.dtype, s.dtype)
        assert torch.equal(f, s), (context, key, (f != s).nonzero()[:5].flatten().tolist())


@pytest.mark.parametrize('kind', list(KINDS))
def test_matches_stock_on_seeded_cases(kind):
    assigner = TASK_UTILS.build(dict(type='FusedDynamicSoftLabelAssigner', topk=13))
    positives = 0
    for seed in range(KINDS[kind]):
        pred, gt = make_case(kind, seed)
        fast = assigner.assign(pred, gt)
        assert_same_result(fast, stock_assign(pred, gt), f'{kind} seed {seed}')
        positives += int((fast.gt_inds > 0).sum())
    if kind in ('no_gt', 'no_valid_prior'):
        assert positives == 0
    else:
        assert positives > 0


def test_case_count():
    assert len(CASES) >= 300


def test_exact_cost_ties_differ_only_in_order(monkeypatch):
    """Equal logits everywhere, every IoU 0 (predictions far away) and priors symmetric about the
    gt centre: the priors at equal distance have exactly equal costs and dynamic_k = 1 picks one:
    fastops the lowest index, stock whichever ``torch.topk`` returns. With fastops' tie order the
    stock assigner gives fastops' result exactly."""
    priors = grid_priors(64, 64, strides=(8, ))
    pred = InstanceData(priors=priors, bboxes=torch.tensor([[500.0, 500.0, 510.0, 510.0]]).repeat(len(priors), 1),
                        scores=torch.full((len(priors), 4), -1.5))
    gt = InstanceData(bboxes=torch.tensor([[16.0, 16.0, 40.0, 40.0]]), labels=torch.tensor([2]))  # centre (28, 28)
    fast = FusedDynamicSoftLabelAssigner().assign(pred, gt)
    stock = stock_assign(pred, gt)
    with lower_index_ties(monkeypatch, dynamic_soft_label_assigner) as ties:
        tie_ordered = stock_assign(pred, gt)
    assert ties['tied'] == 1
    assert_same_result(fast, tie_ordered, 'tie-ordered stock')
    picked = fast.gt_inds.nonzero()[:, 0].tolist()
    # the four priors at (24|32, 24|32) are the nearest to (28, 28): equal cost; fastops takes the first
    nearest = [i for i, p in enumerate(priors.tolist()) if p[0] in (24.0, 32.0) and p[1] in (24.0, 32.0)]
    assert picked == [nearest[0]]
    stock_picked = stock.gt_inds.nonzero()[:, 0].tolist()
    assert stock_picked[0] in nearest and stock.labels[stock_picked].tolist() == [2]
    print(f'\n{len(nearest)} priors of equal cost: stock picked {stock_picked}, fastops {picked}')


def test_horizontal_boxes_edge_is_the_tensor_rule():
    """A prior centre exactly on a gt edge: stock's HorizontalBoxes path counts it inside
    (``find_inside_points`` is inclusive), its tensor path (RTMDet's heads) does not; fastops
    follows the tensor path for both, as documented."""
    priors = grid_priors(64, 64, strides=(8, ))
    g = torch.Generator().manual_seed(3)
    pred = InstanceData(priors=priors, bboxes=random_boxes(g, len(priors), 64, 64),
                        scores=torch.randn(len(priors), 3, generator=g))
    box = torch.tensor([[8.0, 8.0, 24.0, 24.0]])  # priors at x or y in {8, 24} lie on its edges
    as_tensor = InstanceData(bboxes=box, labels=torch.tensor([1]))
    as_boxes = InstanceData(bboxes=HorizontalBoxes(box), labels=torch.tensor([1]))
    fast = FusedDynamicSoftLabelAssigner()
    assert_same_result(fast.assign(pred, as_boxes), stock_assign(pred, as_tensor), 'tensor rule')
    assert_same_result(fast.assign(pred, as_boxes), fast.assign(pred, as_tensor), 'boxes = tensor')


def test_masks_centres_change_the_assignment_as_in_stock():
    """RTMDet-Ins: a mask in a corner of its box moves the centre prior; fastops follows."""
    pred, gt = make_case('masks', 4)
    with_masks = FusedDynamicSoftLabelAssigner().assign(pred, gt)
    without = FusedDynamicSoftLabelAssigner().assign(pred, InstanceData(bboxes=gt.bboxes, labels=gt.labels))
    assert not torch.equal(with_masks.gt_inds, without.gt_inds)
    assert_same_result(with_masks, stock_assign(pred, gt))


def test_assign_batch_equals_per_image_assign():
    assigner = FusedDynamicSoftLabelAssigner()
    cases = [make_case('random', 0)]
    priors = cases[0][0].priors
    g = torch.Generator().manual_seed(7)
    gts = [cases[0][1], InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)),
           InstanceData(bboxes=random_boxes(g, 9, 64, 64), labels=torch.randint(0, 1, (9, ), generator=g))]
    bboxes = torch.stack([cases[0][0].bboxes] * 3)
    scores = torch.stack([cases[0][0].scores] * 3)
    batch = assigner.assign_batch(priors, bboxes, scores, gts)
    assert batch['num_gts'].tolist() == [len(gt) for gt in gts]
    for b, gt in enumerate(gts):
        one = assigner.assign(InstanceData(priors=priors, bboxes=bboxes[b], scores=scores[b]), gt)
        for key in ('gt_inds', 'max_overlaps', 'labels'):
            assert torch.equal(batch[key][b], getattr(one, key)), (b, key)


def test_no_prediction_is_the_stock_empty_result():
    pred = InstanceData(priors=torch.zeros(0, 4), bboxes=torch.zeros(0, 4), scores=torch.zeros(0, 3))
    gt = InstanceData(bboxes=torch.tensor([[0.0, 0.0, 8.0, 8.0]]), labels=torch.tensor([0]))
    assert_same_result(FusedDynamicSoftLabelAssigner().assign(pred, gt), stock_assign(pred, gt))
    batch = FusedDynamicSoftLabelAssigner().assign_batch(torch.zeros(0, 4), torch.zeros(2, 0, 4),
                                                         torch.zeros(2, 0, 3), [gt, gt])
    assert [(batch[key].shape, batch[key].dtype) for key in ('gt_inds', 'max_overlaps', 'labels')] == [
        ((2, 0), torch.long), ((2, 0), torch.float32), ((2, 0), torch.long)]


def test_constructor_and_registry():
    assigner = TASK_UTILS.build(dict(type='FusedDynamicSoftLabelAssigner', soft_center_radius=2.5, topk=9,
                                     iou_weight=2.0, iou_calculator=dict(type='BboxOverlaps2D')))
    assert isinstance(assigner, FusedDynamicSoftLabelAssigner)
    assert (assigner.soft_center_radius, assigner.topk, assigner.iou_weight) == (2.5, 9, 2.0)
    pred, gt = make_case('random', 3)
    stock = TASK_UTILS.build(dict(type='DynamicSoftLabelAssigner', soft_center_radius=2.5, topk=9, iou_weight=2.0))
    assert_same_result(assigner.assign(pred, gt), stock.assign(pred, gt))


@pytest.mark.parametrize('iou_calculator', [dict(type='BboxOverlaps2D', dtype='fp16'),
                                            dict(type='BboxOverlaps2D', scale=512.0),
                                            dict(type='RBboxOverlaps2D')])
def test_rejects_other_iou_calculators(iou_calculator):
    with pytest.raises(ValueError, match='BboxOverlaps2D'):
        FusedDynamicSoftLabelAssigner(iou_calculator=iou_calculator)


def test_rotated_boxes_are_not_implemented():
    priors = grid_priors(32, 32)
    pred = InstanceData(priors=priors, bboxes=torch.rand(len(priors), 5), scores=torch.rand(len(priors), 3))
    gt = InstanceData(bboxes=torch.rand(2, 5), labels=torch.tensor([0, 1]))
    with pytest.raises(NotImplementedError, match='rotated'):
        FusedDynamicSoftLabelAssigner().assign(pred, gt)


def test_bad_batch_arguments_are_named():
    assigner = FusedDynamicSoftLabelAssigner()
    pred, gt = make_case('random', 1)
    priors, bboxes, scores = pred.priors, pred.bboxes[None], pred.scores[None]
    with pytest.raises(ValueError, match='batch_gt_instances has 2 images, bboxes 1'):
        assigner.assign_batch(priors, bboxes, scores, [gt, gt])
    with pytest.raises(ValueError, match='bboxes must be'):
        assigner.assign_batch(priors, bboxes[:, :-1], scores, [gt])
    with pytest.raises(ValueError, match='scores must be'):
        assigner.assign_batch(priors, bboxes, scores[:, :-1], [gt])
    with pytest.raises(ValueError, match='priors must be'):
        assigner.assign_batch(priors[:, :2], bboxes, scores, [gt])


def test_label_outside_the_classes_is_named():
    priors = torch.tensor([[8.0, 8.0, 8.0, 8.0]])
    pred = InstanceData(priors=priors, bboxes=torch.tensor([[0.0, 0.0, 16.0, 16.0]]), scores=torch.zeros(1, 3))
    gt = InstanceData(bboxes=torch.tensor([[0.0, 0.0, 16.0, 16.0]]), labels=torch.tensor([5]))
    with pytest.raises(RuntimeError, match='gt_labels'):
        FusedDynamicSoftLabelAssigner().assign(pred, gt)

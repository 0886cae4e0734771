"""Seeded random SimOTA cases (RTMO-like priors, padded gts) and their edge-case variants (non-finite
predictions, G = 0, B = 0, fewer priors), shared by the simota tests, the benches and scripts/gpu_check."""
import torch

COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089]
FIVE_SIGMAS = [.05, .03, .03, .08, .1]

RTMO_CONFIG = dict(center_radius=2.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0, oks_weight=3.0,
                   vis_weight=0.0, dynamic_k_indicator='oks', use_keypoints_for_center=True)
IOU_VIS_CONFIG = dict(center_radius=2.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0, oks_weight=1.0,
                      vis_weight=1.0, dynamic_k_indicator='iou', use_keypoints_for_center=False)
YOLOX_CONFIG = dict(center_radius=2.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0)


def rtmo_priors(size: int, strides=(16, 32)) -> torch.Tensor:
    """[P, 4] (x, y, stride, stride) of MlvlPointGenerator(centralize_points=True) on a square image."""
    levels = []
    for stride in strides:
        n = size // stride
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing='ij')
        centers = (torch.stack([xs.flatten(), ys.flatten()], 1) + 0.5) * stride
        levels.append(torch.cat([centers, torch.full((n * n, 2), float(stride))], 1))
    return torch.cat(levels).float()


def _gt_boxes(gen, num, size, kind):
    center = torch.rand(num, 2, generator=gen) * size
    wh = torch.rand(num, 2, generator=gen) * size * 0.5 + 8
    if kind == 'tiny':
        wh = torch.rand(num, 2, generator=gen) * 4 + 0.25
        wh[torch.rand(num, generator=gen) < 0.3, 0] = 0.0  # degenerate: zero width
    elif kind == 'outside':  # partly outside the image
        center = torch.rand(num, 2, generator=gen) * size * 1.2 - size * 0.1
    elif kind == 'nowhere':  # far from every prior: no valid prior at all
        center = -size - torch.rand(num, 2, generator=gen) * size
    return torch.cat([center - wh / 2, center + wh / 2], 1), center, wh


def random_batch(seed: int, size: int, num_gts, num_keypoints=17, num_classes=1, pose=True, kind='normal',
                 strides=(16, 32)):
    """Inputs of one batch for fastops.simota_assign: (args tuple, keyword dict). ``num_gts``: per image."""
    gen = torch.Generator().manual_seed(seed)
    priors = rtmo_priors(size, strides)
    batch, num_priors, max_gts, K = len(num_gts), priors.size(0), max(max(num_gts), 1), num_keypoints
    gt_boxes = torch.zeros(batch, max_gts, 4)
    gt_kpts = torch.zeros(batch, max_gts, K, 2)
    gt_vis = torch.zeros(batch, max_gts, K)
    gt_areas = torch.zeros(batch, max_gts)
    for b, n in enumerate(num_gts):
        boxes, center, wh = _gt_boxes(gen, n, size, kind)
        gt_boxes[b, :n] = boxes
        gt_kpts[b, :n] = center[:, None] + (torch.rand(n, K, 2, generator=gen) - 0.5) * wh[:, None]
        visible = torch.rand(n, K, generator=gen) < torch.rand(n, 1, generator=gen)  # some gts fully invisible
        gt_vis[b, :n] = visible.float()
        gt_areas[b, :n] = wh.prod(-1) * (0.3 + 0.7 * torch.rand(n, generator=gen))
    centers = priors[:, :2].expand(batch, num_priors, 2)
    half = (torch.rand(batch, num_priors, 2, generator=gen) * 4 + 0.5) * priors[:, 2:]
    pred_boxes = torch.cat([centers - half, centers + half], -1)
    scores = torch.rand(batch, num_priors, num_classes, generator=gen)
    scores[torch.rand(scores.shape, generator=gen) < 0.002] = 1.0  # log clamp paths of the BCE
    scores[torch.rand(scores.shape, generator=gen) < 0.002] = 0.0
    labels = torch.randint(0, num_classes, (batch, max_gts), generator=gen)
    args = (priors, pred_boxes, scores, gt_boxes, labels, torch.tensor(num_gts, dtype=torch.long))
    if not pose:
        return args, {}
    spread = priors[:, 2:, None].transpose(1, 2) * 3
    pred_kpts = centers[:, :, None] + (torch.rand(batch, num_priors, K, 2, generator=gen) - 0.5) * spread[None]
    sigmas = torch.tensor(COCO_SIGMAS if K == 17 else FIVE_SIGMAS[:K])
    return args, dict(pred_keypoints=pred_kpts, pred_keypoints_visible=torch.rand(batch, num_priors, K, generator=gen),
                      gt_keypoints=gt_kpts, gt_keypoints_visible=gt_vis, gt_areas=gt_areas, sigmas=sigmas)


def batch_to(args, kwargs, device):
    """A (args, kwargs) pair of random_batch with every tensor moved to `device`."""
    return tuple(a.to(device) for a in args), {name: t.to(device) for name, t in kwargs.items()}


PREDICTIONS = ('pred_bboxes', 'pred_scores', 'pred_keypoints', 'pred_keypoints_visible')


def with_nonfinite(args, kwargs, seed: int, names=PREDICTIONS, rate: float = 1e-3):
    """A (args, kwargs) pair of random_batch with about `rate` of the values of the named inputs
    replaced by NaN, +inf or -inf (seeded)."""
    gen = torch.Generator().manual_seed(seed)

    def poison(t):
        hit = torch.rand(t.shape, generator=gen) < rate
        values = torch.tensor([float('nan'), float('inf'), -float('inf')])
        poisoned = t.clone()
        poisoned[hit] = values[torch.randint(0, 3, (int(hit.sum()), ), generator=gen)]
        return poisoned

    priors, boxes, scores, *gts = args
    boxes, scores = (poison(t) if name in names else t for name, t in (('pred_bboxes', boxes), ('pred_scores', scores)))
    return (priors, boxes, scores, *gts), {name: poison(t) if name in names else t for name, t in kwargs.items()}


def without_gt_slots(args, kwargs):
    """The batch with G = 0 (no gt slot at all)."""
    priors, boxes, scores, gt_boxes, labels, num_gts = args
    gt_side = {name: t[:, :0] for name, t in kwargs.items() if name.startswith('gt_')}
    return (priors, boxes, scores, gt_boxes[:, :0], labels[:, :0], torch.zeros_like(num_gts)), {**kwargs, **gt_side}


def first_priors(args, kwargs, count: int):
    """The batch with only its first `count` priors."""
    priors, boxes, scores, *gts = args
    pred_side = {name: t[:, :count] for name, t in kwargs.items() if name.startswith('pred_')}
    return (priors[:count], boxes[:, :count], scores[:, :count], *gts), {**kwargs, **pred_side}


def no_images(args, kwargs):
    """The batch with B = 0."""
    priors, *batched = args
    return (priors, *(t[:0] for t in batched)), {name: t if name == 'sigmas' else t[:0] for name, t in kwargs.items()}

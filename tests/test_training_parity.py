"""Whole training runs, stock vs fastops config (RTMO, YOLOX-Pose; RTMDet, RTMDet-Ins), in lock-step (see
tests/training_parity.py for why): 30 iterations of the stock run, seed 0, one process,
deterministic, on the synthetic keypoint set (RTMDet, RTMDet-Ins: the synthetic detection set,
whose polygon masks RTMDet-Ins trains on). At every iteration the fastops model, given the
stock weights and batch, makes the same assignment, the same losses and gradients, and the same
optimizer update, up to float32 rounding."""
import os

import pytest
from mmengine.config import Config

pytest.importorskip("mmpose")
pytest.importorskip("mmdet")

import torch  # noqa: E402
from training_parity import PARITY_ITERS, lockstep  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke")
YOLOXPOSE_FASTOPS = os.path.join(REPO, "configs", "yoloxpose", "yoloxpose_s_fastops_8xb32-300e_coco-640.py")
BATCH = 2

# Tolerances. Both paths compute the same functions in another float32 order (batched vs
# per-image targets, the fused log-space MLE loss, SiLU for Swish, channels-last convolutions).
# Seen over the 30 iterations (2-core AMD EPYC, AVX-512): losses <= 6.6e-6 relative for RTMO (loss_mle;
# the other keys <= 2e-7) and <= 1.2e-7 for YOLOX-Pose; gradients <= 5.7e-4 (RTMO) and 7e-7
# (YOLOX-Pose) of the largest; AdamW updates from the same optimizer state <= 2.9e-3 (RTMO) and
# 1.7e-5 (YOLOX-Pose) of their L2 norm. The bounds leave ~10x.
LOSS_TOL = 1e-4
GRAD_TOL = 5e-3
UPDATE_TOL = 3e-2


def tiny_yoloxpose_model(head: dict) -> dict:
    """The fastops YOLOX-Pose-s config's model at an eighth of its width, without pretrained
    weights or random resizing, for the 320x320 smoke data, with `head` changes."""
    cfg = Config.fromfile(YOLOXPOSE_FASTOPS)
    cfg.merge_from_dict({
        "model.data_preprocessor.batch_augments": None,
        "model.backbone.widen_factor": 0.125, "model.backbone.init_cfg": None,
        "model.neck.in_channels": [32, 64, 128], "model.neck.out_channels": 32,
        "model.head.head_module_cfg.in_channels": 64, "model.head.head_module_cfg.feat_channels": 64,
        **{f"model.head.{key}": value for key, value in head.items()}})
    return dict(cfg.model.to_dict(), _delete_=True)


def assert_same_training(comparisons, family):
    worst_loss = {key: max(c.loss[key] for c in comparisons) for key in comparisons[0].loss}
    worst_grad, worst_update = max(c.grad for c in comparisons), max(c.weights for c in comparisons)
    print(f"\n{family}, {len(comparisons)} iterations: max loss deviation {worst_loss}; gradients "
          f"{worst_grad:.1e}; updates {worst_update:.1e}")
    assert all(c.same_assignment for c in comparisons), [i for i, c in enumerate(comparisons) if not c.same_assignment]
    assert max(worst_loss.values()) < LOSS_TOL, worst_loss
    assert worst_grad < GRAD_TOL
    assert worst_update < UPDATE_TOL


def test_rtmo_training_matches_stock(keypoint_data, tmp_path):
    comparisons = lockstep(os.path.join(SMOKE, "rtmo_smoke_stock.py"), os.path.join(SMOKE, "rtmo_smoke.py"),
                           tmp_path, keypoint_data, options={"train_dataloader.batch_size": BATCH})
    assert_same_training(comparisons, "RTMO")


def test_yoloxpose_training_matches_stock(keypoint_data, tmp_path):
    """The keypoint smoke settings (rtmo_smoke_stock.py) with a tiny YOLOX-Pose-s model."""
    smoke = os.path.join(SMOKE, "rtmo_smoke_stock.py")
    options = {"train_dataloader.batch_size": BATCH, "custom_imports": dict(imports=["fastops.mm"])}
    stock_head = dict(type="YOLOXPoseHead", assigner=dict(type="SimOTAAssigner", dynamic_k_indicator="oks"))
    stock_options = dict(options, model=tiny_yoloxpose_model(stock_head))
    fast_options = dict(options, model=tiny_yoloxpose_model({}))
    comparisons = lockstep(smoke, smoke, tmp_path, keypoint_data, options=stock_options, fast_options=fast_options)
    assert_same_training(comparisons, "YOLOX-Pose")


# ------------------------------------------------------------------ RTMDet (mmdet)
class DSLAssignments:
    """Every image's assignment (gt_inds) of both models: the stock DynamicSoftLabelAssigner's
    per-image calls, fastops' batched ones (rows of images without gts are all 0, as the stock
    result of those)."""

    def __init__(self, monkeypatch):
        from mmdet.models.task_modules.assigners import DynamicSoftLabelAssigner

        from fastops.mm.assigners import FusedDynamicSoftLabelAssigner
        self.stock, self.fast = [], []
        self.stock_calls = self.stock_calls_with_masks = 0  # over the whole run
        stock_assign, fast_assign_batch = DynamicSoftLabelAssigner.assign, FusedDynamicSoftLabelAssigner.assign_batch

        def assign(assigner, pred_instances, gt_instances, *args, **kwargs):
            result = stock_assign(assigner, pred_instances, gt_instances, *args, **kwargs)
            self.stock.append(result.gt_inds)
            self.stock_calls += 1
            self.stock_calls_with_masks += 'masks' in gt_instances  # RTMDet-Ins: centres of mass
            return result

        def assign_batch(assigner, *args):
            result = fast_assign_batch(assigner, *args)
            self.fast.extend(result["gt_inds"])
            return result

        monkeypatch.setattr(DynamicSoftLabelAssigner, "assign", assign)
        monkeypatch.setattr(FusedDynamicSoftLabelAssigner, "assign_batch", assign_batch)

    def same(self) -> bool:
        return len(self.stock) == len(self.fast) > 0 and all(torch.equal(s, f) for s, f in zip(self.stock, self.fast))

    def clear(self) -> None:
        self.stock.clear()
        self.fast.clear()


# Seen over the 30 iterations (2-core CPU), RTMDet and RTMDet-Ins: losses, gradients and AdamW
# updates identical (0): the targets are the stock ones bit for bit and the losses are mmdet's. The
# bounds only allow float32 reordering.
RTMDET_LOSS_TOL = 1e-6
RTMDET_GRAD_TOL = 1e-5
RTMDET_UPDATE_TOL = 1e-4


def dsl_lockstep(smoke: str, data_dir, tmp_path, monkeypatch):
    """configs/smoke/{smoke}_stock.py vs {smoke}.py in lock-step over 30 iterations of the stock
    run, whose assigner breaks exact cost ties towards the lower prior index as fastops does
    (``ties['changed']``: selections where that differed from ``torch.topk``'s own order).
    Returns the comparisons, the ties and the assignment recorder."""
    from mmdet.models.task_modules.assigners import dynamic_soft_label_assigner
    from assigner_checks import lower_index_ties

    recorders = []

    def assignments(*models):
        recorders.append(DSLAssignments(monkeypatch))
        return recorders[-1]

    with lower_index_ties(monkeypatch, dynamic_soft_label_assigner) as ties:
        comparisons = lockstep(os.path.join(SMOKE, f"{smoke}_stock.py"), os.path.join(SMOKE, f"{smoke}.py"),
                               tmp_path, data_dir, assignments=assignments,
                               options={"train_dataloader.batch_size": BATCH})
    return comparisons, dict(ties), recorders[0]


def assert_same_dsl_training(comparisons, ties, family):
    worst_loss = {key: max(c.loss[key] for c in comparisons) for key in comparisons[0].loss}
    worst_grad, worst_update = max(c.grad for c in comparisons), max(c.weights for c in comparisons)
    print(f"\n{family}, {len(comparisons)} lock-step iterations: max loss deviation "
          f"{ {key: f'{value:.1e}' for key, value in worst_loss.items()} }; gradients {worst_grad:.1e}; "
          f"updates {worst_update:.1e}; same assignment {sum(c.same_assignment for c in comparisons)}/"
          f"{len(comparisons)}; ties changing the stock pick {ties['changed']}")
    assert len(comparisons) == PARITY_ITERS
    assert all(c.same_assignment for c in comparisons), [i for i, c in enumerate(comparisons) if not c.same_assignment]
    assert max(worst_loss.values()) < RTMDET_LOSS_TOL, worst_loss
    assert worst_grad < RTMDET_GRAD_TOL
    assert worst_update < RTMDET_UPDATE_TOL


def test_rtmdet_training_matches_stock(detection_data, tmp_path, monkeypatch):
    """Stock RTMDet smoke config vs the fastops one (FastRTMDetSepBNHead, FusedDynamicSoftLabelAssigner)."""
    comparisons, ties, _ = dsl_lockstep("rtmdet_smoke", detection_data, tmp_path, monkeypatch)
    assert_same_dsl_training(comparisons, ties, "RTMDet")


def test_rtmdet_ins_training_matches_stock(detection_data, tmp_path, monkeypatch):
    """Stock RTMDet-Ins smoke config vs the fastops one (FastRTMDetInsSepBNHead,
    FusedDynamicSoftLabelAssigner) on the synthetic set's polygon masks: the assigner measures
    distances to the masks' centres of mass (a triangle's lies a sixth of its height below its box
    centre), and the mask loss takes its positives from the batched assignment."""
    comparisons, ties, recorded = dsl_lockstep("rtmdet_ins_smoke", detection_data, tmp_path, monkeypatch)
    assert recorded.stock_calls == PARITY_ITERS * BATCH
    assert recorded.stock_calls_with_masks == recorded.stock_calls  # the stock assigner saw the masks
    assert "loss_mask" in comparisons[0].loss
    assert_same_dsl_training(comparisons, ties, "RTMDet-Ins")

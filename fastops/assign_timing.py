"""Times the model's label assigner against the stock ``SimOTAAssigner`` on the same batches.

Used by ``python -m fastops train --time-assigner`` (and the demo): every call of the head's
``assigner.assign`` also runs the stock assigner built from the same config (``type`` replaced by
``SimOTAAssigner`` of the head's package, mmpose or mmdet), times both and checks that they
assign the same gts. Training uses the configured assigner's result only.
"""
import copy
import json
import os
import time

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


def stock_task_utils(head):
    """The TASK_UTILS registry of the package the head comes from."""
    if type(head).__module__.startswith("mmdet"):
        from mmdet.registry import TASK_UTILS
    else:
        from mmpose.registry import TASK_UTILS
    return TASK_UTILS


def assigned_gt_inds(result) -> torch.Tensor:
    """gt indices of an assignment, from mmpose's dict or mmdet's AssignResult."""
    return result["gt_inds"] if isinstance(result, dict) else result.gt_inds


def assigner_config(model_cfg) -> dict:
    """The assigner's config: in the head (mmpose RTMO) or in train_cfg (mmdet YOLOX)."""
    head_cfg = model_cfg.get("head") or model_cfg.get("bbox_head") or {}
    return head_cfg["assigner"] if "assigner" in head_cfg else model_cfg["train_cfg"]["assigner"]


def timed(fn, *args, **kwargs):
    """(result, seconds), waiting for queued GPU work so the time is the call's own."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    sync()
    return result, time.perf_counter() - start


class AssignerTimingHook(Hook):
    """Accumulates assignment time of the configured and the stock assigner over training."""

    def __init__(self):
        self.stats = dict(calls=0, configured_s=0.0, stock_s=0.0, same_assignment=0)

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        head = model.head if hasattr(model, "head") else model.bbox_head
        stock_cfg = copy.deepcopy(assigner_config(runner.cfg.model))
        self.configured_type = stock_cfg["type"]
        stock_cfg["type"] = "SimOTAAssigner"
        self.stock = stock_task_utils(head).build(stock_cfg)
        self.assigner = head.assigner
        self.assigner.assign = self.wrap(self.assigner.assign)

    def wrap(self, assign):
        def stock_assign(*args, **kwargs):
            with torch.no_grad():
                return self.stock.assign(*args, **kwargs)

        def assign_and_compare(*args, **kwargs):
            # alternate which assigner runs first so neither always finds warm caches
            if self.stats["calls"] % 2 == 0:
                result, configured_s = timed(assign, *args, **kwargs)
                stock_result, stock_s = timed(stock_assign, *args, **kwargs)
            else:
                stock_result, stock_s = timed(stock_assign, *args, **kwargs)
                result, configured_s = timed(assign, *args, **kwargs)
            self.stats["calls"] += 1
            self.stats["configured_s"] += configured_s
            self.stats["stock_s"] += stock_s
            self.stats["same_assignment"] += int(torch.equal(
                assigned_gt_inds(result).cpu(), assigned_gt_inds(stock_result).cpu()))
            return result

        return assign_and_compare

    def after_train(self, runner) -> None:
        summary = dict(self.stats, rank=runner.rank, configured=self.configured_type)
        runner.logger.info(
            f"assignment over {summary['calls']} images: {self.configured_type} "
            f"{summary['configured_s'] * 1e3:.1f} ms, stock SimOTAAssigner "
            f"{summary['stock_s'] * 1e3:.1f} ms, same assignment in "
            f"{summary['same_assignment']}/{summary['calls']}")
        with open(os.path.join(runner.work_dir, f"assign_timing_rank{runner.rank}.json"), "w") as f:
            json.dump(summary, f)

"""Training parity of a stock and a fastops config over a whole run, in lock-step.

A free-running comparison cannot separate the method from chaos: the two paths compute the same
functions in a different float32 order, and a 1e-7 difference in the predictions flips a SimOTA
`dynamic_k = trunc(sum of IoUs)` that sits on an integer, after which the runs follow different
trajectories (seen here: identical for 5 iterations, 10% apart from the 6th on). So the stock run
drives, and at every one of its iterations the fastops model gets the stock model's weights and
the same batch; losses, gradients and the assignment of both are compared before the stock
optimizer steps. Each iteration also steps a fastops optimizer from the stock optimizer's state,
so that the weights each path would reach are compared too. Seed 0, deterministic, one process.
"""
import copy
import dataclasses
from typing import Callable, Dict, List

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from fastops.train import adapt_to_cpu

PARITY_ITERS = 30


@dataclasses.dataclass
class StepComparison:
    """Fastops vs stock at one iteration of the stock run (relative to max(|stock|, 1))."""
    loss: Dict[str, float]  # per loss key
    grad: float  # largest gradient deviation over the parameters, relative to the largest gradient
    weights: float  # ||fastops update - stock update|| / ||stock update|| over all parameters
    same_assignment: bool


def load_config(config: str, work_dir, data_dir, options: dict = None) -> Config:
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({"train_dataloader.dataset.data_root": f"{data_dir}/", "default_hooks.checkpoint": None,
                         "randomness": dict(seed=0, deterministic=True), **(options or {})})
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    adapt_to_cpu(cfg)
    return cfg


class HeadTargetsAssignments:
    """The assignment each model's ``head._get_targets`` made (``probe`` of its targets tuple;
    default: the pose heads' foreground mask and matched boxes), compared per iteration."""

    def __init__(self, model_s, model_f, probe: Callable = lambda targets: (targets[0], targets[4])):
        self.stock, self.fast = [], []
        for model, record in ((model_s, self.stock), (model_f, self.fast)):
            self._record(model.head, probe, record)

    @staticmethod
    def _record(head, probe, record) -> None:
        get_targets = head._get_targets

        def recorded(*args, **kwargs):
            targets = get_targets(*args, **kwargs)
            record.append([t.clone() for t in probe(targets)])
            return targets

        head._get_targets = recorded

    def same(self) -> bool:
        return len(self.stock) == len(self.fast) > 0 and all(
            torch.equal(s, f) for stock, fast in zip(self.stock, self.fast) for s, f in zip(stock, fast))

    def clear(self) -> None:
        self.stock.clear()
        self.fast.clear()


def _loss_and_grads(model, batch) -> tuple:
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    total, log_vars = model.parse_losses(model._run_forward(data, mode="loss"))
    model.zero_grad(set_to_none=True)
    total.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return {key: float(value) for key, value in log_vars.items() if key.startswith("loss")}, grads


def _relative(fast: float, stock: float) -> float:
    return abs(fast - stock) / max(abs(stock), 1.0)


def _grad_deviation(stock: Dict[str, torch.Tensor], fast: Dict[str, torch.Tensor]) -> float:
    assert stock.keys() == fast.keys()
    largest = max(float(g.abs().max()) for g in stock.values())
    return max(float((fast[name] - g).abs().max()) for name, g in stock.items()) / max(largest, 1e-12)


def _step_deviation(model_s, model_f, optim_s, optim_f) -> float:
    """Steps both optimizers (fastops' from a copy of the stock state) and returns the L2 norm of
    the difference of the two updates over all parameters, relative to the norm of the stock
    update. (Per element it means little: Adam's early steps are ~lr * sign(g), so an element whose
    gradient is at rounding level, e.g. a bias that a BatchNorm cancels, steps by ±lr at random.)"""
    before = {name: p.detach().clone() for name, p in model_s.named_parameters()}
    optim_f.load_state_dict(copy.deepcopy(optim_s.state_dict()))  # a copy: loading keeps the tensors
    optim_s.step()
    optim_f.step()
    fast_params = dict(model_f.named_parameters())
    difference_sq = update_sq = 0.0
    for name, p in model_s.named_parameters():
        update_s, update_f = p.detach() - before[name], fast_params[name].detach() - before[name]
        difference_sq += float((update_f - update_s).square().sum())
        update_sq += float(update_s.square().sum())
    return (difference_sq / max(update_sq, 1e-30)) ** 0.5


def lockstep(stock_config: str, fast_config: str, work_dir, data_dir, assignments=HeadTargetsAssignments,
             iters: int = PARITY_ITERS, options: dict = None, fast_options: dict = None) -> List[StepComparison]:
    """Runs the stock config for `iters` iterations with the fastops model in lock-step.

    `options` update both configs, `fast_options` (default: `options`) the fastops one;
    `assignments(model_s, model_f)` records both models' assignments (``same()``, ``clear()``).
    """
    runner_s = Runner.from_cfg(load_config(stock_config, work_dir / "stock", data_dir, options))
    runner_f = Runner.from_cfg(load_config(fast_config, work_dir / "fast", data_dir,
                                           options if fast_options is None else fast_options))
    model_s, model_f = runner_s.model.train(), runner_f.model.train()
    optim_s = runner_s.build_optim_wrapper(runner_s.cfg.optim_wrapper)
    optim_f = runner_f.build_optim_wrapper(runner_f.cfg.optim_wrapper)
    recorded = assignments(model_s, model_f)
    comparisons = []
    for _, batch in zip(range(iters), runner_s.build_dataloader(runner_s.cfg.train_dataloader)):
        model_f.load_state_dict(model_s.state_dict())
        losses_s, grads_s = _loss_and_grads(model_s, batch)
        losses_f, grads_f = _loss_and_grads(model_f, batch)
        assert losses_s.keys() == losses_f.keys(), (losses_s.keys(), losses_f.keys())
        comparisons.append(StepComparison(
            loss={key: _relative(losses_f[key], value) for key, value in losses_s.items()},
            grad=_grad_deviation(grads_s, grads_f),
            weights=_step_deviation(model_s, model_f, optim_s, optim_f),
            same_assignment=recorded.same()))
        recorded.clear()
    return comparisons

"""The main demo: what fastops changes in an RTMO training run, measured on this machine.

``python -m fastops demo [--work-dir D] [--images N] [--iters N]`` generates the synthetic
keypoint set, then trains the stock RTMO smoke config (``configs/smoke/rtmo_smoke_stock.py``:
mmpose's ``RTMOHead``) and the fastops one (``configs/smoke/rtmo_smoke.py``: ``FastRTMOHead``)
from the same seed on the same batches, one iteration of each in turn so that both see the same
machine load. It prints every iteration's loss of both and the time of a whole training step
(data preprocessing, forward, backward, optimizer) as median and interquartile range, the
speed-up, and writes ``demo.png`` (loss and step time vs iteration) into the work dir.
"""
import argparse
import os
import statistics
import sys
import time

from mmengine.config import Config
from mmengine.runner import Runner

from . import synth
from .train import adapt_to_cpu

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO_ROOT, "configs", "smoke")
RUNS = {"stock": os.path.join(SMOKE, "rtmo_smoke_stock.py"), "fastops": os.path.join(SMOKE, "rtmo_smoke.py")}
LOSS_KEYS = ("loss", "loss_mle", "loss_oks", "loss_cls")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastops demo", description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=os.path.join("work_dirs", "demo"))
    parser.add_argument("--images", type=int, default=32, help="synthetic images (default 32)")
    parser.add_argument("--iters", type=int, default=30, help="training iterations of each run (default 30)")
    return parser.parse_args(argv)


class Trainer:
    """One config's model, optimizer and batches, stepped one iteration at a time."""

    def __init__(self, config: str, work_dir: str, data_dir: str):
        cfg = Config.fromfile(config)
        cfg.merge_from_dict({"train_dataloader.dataset.data_root": f"{data_dir}/", "default_hooks.checkpoint": None,
                             "randomness": dict(seed=0, deterministic=True)})
        cfg.work_dir, cfg.launcher, cfg.log_level = work_dir, "none", "WARNING"
        adapt_to_cpu(cfg)
        runner = Runner.from_cfg(cfg)
        self.model = runner.model.train()
        self.optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
        self.batches = iter(runner.build_dataloader(cfg.train_dataloader))
        self.losses, self.step_s = [], []

    def step(self) -> None:
        batch = next(self.batches)
        start = time.perf_counter()
        log_vars = self.model.train_step(batch, self.optim_wrapper)
        self.step_s.append(time.perf_counter() - start)
        self.losses.append({key: float(log_vars[key]) for key in LOSS_KEYS if key in log_vars})


def median_iqr_ms(seconds) -> tuple:
    quartiles = statistics.quantiles([1e3 * s for s in seconds], n=4)
    return quartiles[1], quartiles[2] - quartiles[0]


def loss_table(stock: Trainer, fast: Trainer) -> str:
    header = f"{'iter':>4s} " + " ".join(f"{key + ' ' + run:>17s}" for key in LOSS_KEYS for run in ("stock", "fastops"))
    rows = [header]
    for i, (s, f) in enumerate(zip(stock.losses, fast.losses), 1):
        rows.append(f"{i:4d} " + " ".join(f"{row.get(key, float('nan')):17.4f}" for key in LOSS_KEYS for row in (s, f)))
    return "\n".join(rows)


def timing_summary(stock: Trainer, fast: Trainer, warmup: int) -> str:
    (stock_ms, stock_iqr), (fast_ms, fast_iqr) = (median_iqr_ms(t.step_s[warmup:]) for t in (stock, fast))
    return (f"training step time over iterations {warmup + 1}-{len(stock.step_s)}, median (IQR):\n"
            f"  stock RTMOHead    {stock_ms:8.1f} ms ({stock_iqr:.1f})\n"
            f"  fastops           {fast_ms:8.1f} ms ({fast_iqr:.1f})\n"
            f"  speed-up of the whole step: x{stock_ms / fast_ms:.2f}")


def write_plot(stock: Trainer, fast: Trainer, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iters = range(1, len(stock.losses) + 1)
    fig, (loss_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, trainer in (("stock RTMOHead", stock), ("fastops FastRTMOHead", fast)):
        loss_ax.plot(iters, [row["loss"] for row in trainer.losses], marker=".", label=name)
        time_ax.plot(iters, [1e3 * s for s in trainer.step_s], marker=".", label=name)
    loss_ax.set(xlabel="iteration", ylabel="total loss", title="loss (same seed, same batches)")
    time_ax.set(xlabel="iteration", ylabel="ms", title="training step time")
    for ax in (loss_ax, time_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work_dir = os.path.abspath(args.work_dir)
    data_dir = os.path.join(work_dir, "data")
    print(f"[demo] 1/3 synthetic keypoint set: {args.images} images -> {data_dir}", flush=True)
    synth.generate(data_dir, "keypoints", args.images, size=320, seed=0)
    print("[demo] 2/3 training " + " and ".join(os.path.relpath(c) for c in RUNS.values())
          + f", {args.iters} iterations each, alternating, one CPU process", flush=True)
    stock, fast = (Trainer(config, os.path.join(work_dir, name), data_dir) for name, config in RUNS.items())
    for i in range(args.iters):
        stock.step()
        fast.step()
        print(f"  iter {i + 1:3d}/{args.iters}  stock {1e3 * stock.step_s[-1]:7.1f} ms  fastops "
              f"{1e3 * fast.step_s[-1]:7.1f} ms", flush=True)
    plot = os.path.join(work_dir, "demo.png")
    write_plot(stock, fast, plot)
    print("[demo] 3/3 results\nper-iteration losses:\n" + loss_table(stock, fast))
    print(timing_summary(stock, fast, warmup=min(2, args.iters - 2)))
    print(f"plot: {plot}")
    return 0

"""The main demo: synthetic keypoints, RTMO smoke training on 2 CPU processes with fastops.

``python -m fastops demo [--work-dir D] [--images N] [--iters N] [--nproc N]`` generates the
synthetic keypoint set, trains ``configs/smoke/rtmo_smoke.py`` with torchrun (gloo on CPU),
printing every iteration's losses, times the configured (fastops) assigner against the stock
``SimOTAAssigner`` on the same batches, and ends with the checkpoint's path.
"""
import argparse
import glob
import json
import os
import sys

from . import synth, train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CONFIG = os.path.join(REPO_ROOT, "configs", "smoke", "rtmo_smoke.py")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastops demo", description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=os.path.join("work_dirs", "demo"))
    parser.add_argument("--images", type=int, default=64, help="synthetic images (default 64)")
    parser.add_argument("--iters", type=int, default=40, help="training iterations (default 40)")
    parser.add_argument("--nproc", type=int, default=2, help="processes (default 2)")
    return parser.parse_args(argv)


def assignment_summary(work_dir) -> str:
    """Assignment time summed over the ranks' AssignerTimingHook reports."""
    reports = []
    for path in sorted(glob.glob(os.path.join(work_dir, "assign_timing_rank*.json"))):
        with open(path) as f:
            reports.append(json.load(f))
    if not reports:
        return "assignment timing: no report written"
    calls = sum(r["calls"] for r in reports)
    configured_ms = 1e3 * sum(r["configured_s"] for r in reports)
    stock_ms = 1e3 * sum(r["stock_s"] for r in reports)
    same = sum(r["same_assignment"] for r in reports)
    speedup = stock_ms / configured_ms if configured_ms > 0 else float("nan")
    return (f"assignment over {calls} images on {len(reports)} ranks, same batches:\n"
            f"  {reports[0]['configured']:<22s} {configured_ms:9.1f} ms "
            f"({configured_ms / max(calls, 1):.2f} ms/image)\n"
            f"  {'stock SimOTAAssigner':<22s} {stock_ms:9.1f} ms "
            f"({stock_ms / max(calls, 1):.2f} ms/image)\n"
            f"  speedup x{speedup:.2f}; identical assignment in {same}/{calls} images")


def loss_table(work_dir) -> str:
    rows = [f"{'iter':>5s} {'loss':>9s} {'loss_mle':>9s} {'loss_oks':>9s} {'loss_cls':>9s}"]
    for record in train.training_log(work_dir):
        rows.append(f"{record['iter']:5d} " + " ".join(
            f"{record.get(key, float('nan')):9.4f}" for key in ("loss", "loss_mle", "loss_oks", "loss_cls")))
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work_dir = os.path.abspath(args.work_dir)
    data_dir = os.path.join(work_dir, "data")
    print(f"[demo] 1/3 synthetic keypoint set: {args.images} images -> {data_dir}", flush=True)
    synth.generate(data_dir, "keypoints", args.images, size=320, seed=0)
    print(f"[demo] 2/3 training {os.path.relpath(SMOKE_CONFIG)} on {args.nproc} CPU processes",
          flush=True)
    returncode = train.main([
        SMOKE_CONFIG, "--nproc", str(args.nproc), "--cpu", "--work-dir", work_dir, "--time-assigner",
        "--cfg-options", f"train_dataloader.dataset.data_root={data_dir}/",
        f"train_cfg.max_iters={args.iters}"])
    if returncode != 0:
        print(f"[demo] training failed (exit status {returncode})", file=sys.stderr)
        return returncode
    print("[demo] 3/3 results\nper-iteration losses (rank 0):\n" + loss_table(work_dir))
    print(assignment_summary(work_dir))
    print(f"checkpoint: {train.latest_checkpoint(work_dir)}")
    return 0

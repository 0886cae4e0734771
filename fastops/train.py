"""Train an mmdet / mmpose config with fastops on one or more processes.

``python -m fastops train CONFIG [--nproc N] [--amp] [--resume [CKPT]] [--work-dir D]
[--cfg-options KEY=VALUE ...]``

The launcher checks the config and its data first (a clear message instead of a traceback from
inside mmengine), then starts ``torchrun`` with N workers of this module. Each worker joins the
process group itself (nccl on GPU, gloo on CPU) before mmengine sees it, so mmengine never calls
``torch.cuda.set_device`` on a machine without a GPU; on CPU the model is wrapped in
``MMDistributedDataParallel(device_ids=None)`` and ``AmpOptimWrapper`` runs bfloat16 autocast
with a CPU grad scaler. Resuming loads checkpoints with torch's ``weights_only`` unpickler, with
exactly the extra globals mmengine checkpoints contain registered as safe. When a worker fails,
the launcher prints that rank's error, and no worker outlives the launcher.
"""
import argparse
import ctypes
import functools
import glob
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, RUNNERS
from mmengine.runner import Runner

ERROR_DIR_ENV = "FASTOPS_ERROR_DIR"
ARGV_ENV = "FASTOPS_TRAIN_ARGV"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# mmcv ops whose CPU kernels are float32-only: (module, function) as mmdet calls them.
MMCV_FLOAT32_OPS = (("mmcv.ops.nms", "nms"), ("mmcv.ops.roi_align", "roi_align"))
# torchrun logs this (then its own traceback) when a worker exits with an error.
TORCHRUN_FAILURE_LINE = "elastic/multiprocessing/api.py"


class LaunchError(Exception):
    """A problem with the command line, the config or its data, found before any worker starts."""


class SimulatedInterrupt(Exception):
    """Raised by ``--stop-after-iter`` to stop every rank as an interruption would."""


class StopAfterIter(Hook):
    """``--stop-after-iter K``: every rank stops after iteration K, after its checkpoint."""

    priority = "LOWEST"  # runs after CheckpointHook (VERY_LOW) has saved iteration K

    def __init__(self, stop_after_iter: int):
        self.stop_after_iter = stop_after_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.stop_after_iter:
            raise SimulatedInterrupt(f"stopped after iteration {self.stop_after_iter}")


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` on CPU: bfloat16 autocast and ``torch.amp.GradScaler("cpu")``.

    mmengine's ``AmpOptimWrapper`` asserts a GPU and builds a CUDA grad scaler; this keeps its
    backward/step/autocast logic and its ``loss_scale`` options ('dynamic', a float, or
    GradScaler kwargs). The launcher swaps it in for ``AmpOptimWrapper`` on CPU.
    """

    def __init__(self, loss_scale="dynamic", dtype="bfloat16", **kwargs):
        OptimWrapper.__init__(self, **kwargs)  # skips AmpOptimWrapper's GPU-only setup
        self._scale_update_param = None
        if loss_scale == "dynamic":
            self.loss_scaler = torch.amp.GradScaler("cpu")
        elif isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            self.loss_scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale)
        elif isinstance(loss_scale, dict):
            self.loss_scaler = torch.amp.GradScaler("cpu", **loss_scale)
        else:
            raise TypeError(f"loss_scale must be 'dynamic', a float or a dict, got {loss_scale!r}")
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastops train", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="config file (may inherit mmdet:: / mmpose:: configs)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (one per GPU on GPU)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU (gloo) even if GPUs exist")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="resume from CKPT, or from the work dir's latest checkpoint")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. train_cfg.max_iters=10")
    parser.add_argument("--stop-after-iter", type=int, metavar="K",
                        help="stop every rank after iteration K as if interrupted (tests resume)")
    parser.add_argument("--time-assigner", action="store_true",
                        help="also run the stock SimOTAAssigner on every batch and time both")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    return args


# ---------------------------------------------------------------------------------------------
# Config: loading, launcher options, checks
# ---------------------------------------------------------------------------------------------
def load_config(args):
    """The config with the command line applied; LaunchError if it cannot be loaded."""
    if not os.path.isfile(args.config):
        raise LaunchError(f"config file {args.config!r} does not exist")
    try:
        cfg = Config.fromfile(args.config)
        cfg.merge_from_dict(args.cfg_options)
    except Exception as err:  # mmengine raises many types for a broken config
        raise LaunchError(f"cannot load config {args.config!r}: {type(err).__name__}: {err}") from err
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join("work_dirs", config_name)
    cfg.launcher = "pytorch"
    if args.amp:
        enable_amp(cfg)
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == "auto" else args.resume
    return cfg


def enable_amp(cfg) -> None:
    """Mixed precision the way mmdet's tools/train.py --amp does it: dynamic loss scale."""
    if cfg.optim_wrapper.get("type", "OptimWrapper") not in ("OptimWrapper", "AmpOptimWrapper"):
        raise LaunchError(f"--amp needs an OptimWrapper, the config uses {cfg.optim_wrapper.type}")
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.setdefault("loss_scale", "dynamic")


def dataset_configs(node, where):
    """(where, dataset cfg) for every dataset with an ``ann_file``, wrappers included."""
    if isinstance(node, dict):
        if "ann_file" in node:
            yield where, node
        for key, value in node.items():
            if key in ("dataset", "datasets"):
                yield from dataset_configs(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from dataset_configs(item, f"{where}[{i}]")


def check_devices(nproc: int) -> None:
    """On GPU every process gets its own device."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise LaunchError(f"--nproc {nproc} needs {nproc} GPUs, this machine has {gpus}")


def check_data(cfg) -> None:
    """LaunchError naming the config key when an annotation file or image folder is missing."""
    loaders = ["train_dataloader"] + (["val_dataloader"] if cfg.get("val_cfg") else [])
    for loader in loaders:
        if not cfg.get(loader):
            raise LaunchError(f"the config has no {loader}")
        for where, dataset in dataset_configs(cfg[loader].get("dataset"), f"{loader}.dataset"):
            root = dataset.get("data_root") or ""
            ann_file = os.path.join(root, dataset["ann_file"])
            if not os.path.isfile(ann_file):
                raise LaunchError(
                    f"{where}.ann_file: {ann_file!r} does not exist. Generate data with "
                    "`python -m fastops synth --out DIR ...` and point the config at it, e.g. "
                    f"--cfg-options {where}.data_root=DIR/")
            img_dir = os.path.join(root, (dataset.get("data_prefix") or {}).get("img", ""))
            if not os.path.isdir(img_dir):
                raise LaunchError(f"{where}.data_prefix.img: image folder {img_dir!r} does not exist")


# ---------------------------------------------------------------------------------------------
# Launcher (parent): torchrun, error report, no orphans
# ---------------------------------------------------------------------------------------------
def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (survives exec)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup still applies
        pass


def torchrun_command(nproc):
    """The workers get the launcher's arguments through ARGV_ENV, so torchrun parses none."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "fastops.train"]


def stop_process_group(proc, grace_s=15.0) -> None:
    """SIGTERM torchrun (it stops its workers), then SIGKILL whatever is left in its group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def forward_worker_output(stream) -> list:
    """Copies the workers' stderr through until torchrun reports a failed worker; returns
    torchrun's report (its own traceback), shown only when no worker left an error report."""
    torchrun_report = []
    for line in stream:
        if torchrun_report or TORCHRUN_FAILURE_LINE in line:
            torchrun_report.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    return torchrun_report


def root_cause(torchrun_report):
    """(rank, exit code, summary) of torchrun's "first observed failure", or None."""
    text = "".join(torchrun_report)
    block = text[text.find("Root Cause"):] if "Root Cause" in text else ""
    fields = {key: re.search(rf"{key}\s*:\s*(.+)", block) for key in ("rank", "exitcode", "traceback")}
    if not all(fields.values()):
        return None
    rank = fields["rank"].group(1).split()[0]
    return rank, fields["exitcode"].group(1).strip(), fields["traceback"].group(1).strip()


def earliest_error_report(error_dir):
    """The rank whose worker wrote its error report first, or None."""
    reports = sorted(glob.glob(os.path.join(error_dir, "rank*.txt")), key=os.path.getmtime)
    return os.path.basename(reports[0])[len("rank"):-len(".txt")] if reports else None


def report_failure(error_dir, returncode, torchrun_report) -> None:
    """One line naming the rank that failed first and its error, and where its traceback is."""
    cause = root_cause(torchrun_report)
    rank = cause[0] if cause else earliest_error_report(error_dir)
    report = os.path.join(error_dir, f"rank{rank}.txt")
    if rank is not None and os.path.isfile(report):
        with open(report) as f:
            error = f.readline().strip()
        print(f"fastops train: rank {rank} failed first: {error}\n  full traceback: {report}",
              file=sys.stderr)
    elif cause:  # killed without a Python error, e.g. by a signal
        print(f"fastops train: rank {rank} failed first: exit code {cause[1]}, {cause[2]}",
              file=sys.stderr)
    else:
        sys.stderr.write("".join(torchrun_report))
        print(f"fastops train: torchrun exited with status {returncode}", file=sys.stderr)


def launch(argv, nproc, work_dir, hide_gpus=False) -> int:
    """Runs the workers under torchrun; returns their exit status."""
    error_dir = os.path.join(os.path.abspath(work_dir), "fastops_errors")
    shutil.rmtree(error_dir, ignore_errors=True)
    os.makedirs(error_dir)
    env = dict(os.environ, **{ERROR_DIR_ENV: error_dir, ARGV_ENV: json.dumps(argv)})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.Popen(torchrun_command(nproc), env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=die_with_parent)
    try:
        torchrun_report = forward_worker_output(proc.stderr)
        returncode = proc.wait()
    finally:
        stop_process_group(proc)
    if returncode != 0:
        report_failure(error_dir, returncode, torchrun_report)
    return returncode


def run_dirs(work_dir):
    """mmengine's per-run folders (named by start time) in ``work_dir``, oldest first."""
    return sorted(d for d in glob.glob(os.path.join(work_dir, "*_*"))
                  if os.path.isdir(os.path.join(d, "vis_data")))


def training_log(work_dir):
    """The training records (one dict per logged iteration) of the latest run in ``work_dir``."""
    runs = run_dirs(work_dir)
    if not runs:
        return []
    with open(os.path.join(runs[-1], "vis_data", "scalars.json")) as f:
        return [record for record in map(json.loads, f) if "loss" in record]


def latest_checkpoint(work_dir):
    """The path mmengine recorded as the last checkpoint, or None."""
    try:
        with open(os.path.join(work_dir, "last_checkpoint")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def main(argv=None) -> int:
    """``python -m fastops train``: check the config and data, then run torchrun workers."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        if not args.cpu:
            check_devices(args.nproc)
        cfg = load_config(args)
        check_data(cfg)
    except LaunchError as err:
        print(f"fastops train: error: {err}", file=sys.stderr)
        return 2
    return launch(argv, args.nproc, cfg.work_dir, hide_gpus=args.cpu)


# ---------------------------------------------------------------------------------------------
# Worker (one per rank, started by torchrun)
# ---------------------------------------------------------------------------------------------
def checkpoint_safe_globals():
    """The globals an mmengine checkpoint pickles besides tensors: the message hub's
    HistoryBuffer (whose statistics methods pickle as ``getattr(HistoryBuffer, 'min')``) and
    numpy arrays and scalars in the logged metadata. Found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` (and the dtypes of the numpy
    values) on RTMO and Faster R-CNN smoke checkpoints."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    # dtypes of the logged scalars (float64, int64) and of mmpose's dataset_meta arrays
    # (float32 sigmas, uint8 colours)
    dtype_classes = [type(np.dtype(name)) for name in ("float64", "int64", "float32", "uint8")]
    return [HistoryBuffer, getattr, np.ndarray, np.dtype, *dtype_classes, _reconstruct, scalar]


def register_checkpoint_safe_globals() -> None:
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def init_process_group() -> None:
    """Join torchrun's group before mmengine: nccl on this rank's GPU, else gloo on CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def adapt_to_cpu(cfg) -> None:
    """mmengine's defaults assume a GPU per rank: DDP without device ids, gloo, and
    ``AmpOptimWrapper`` becomes ``CPUAmpOptimWrapper`` (bfloat16)."""
    cfg.model_wrapper_cfg = dict(cfg.get("model_wrapper_cfg") or {}, device_ids=None)
    cfg.model_wrapper_cfg.setdefault("type", "MMDistributedDataParallel")
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        cfg.optim_wrapper.type = "CPUAmpOptimWrapper"
        cfg.optim_wrapper.dtype = "bfloat16"  # mmengine's CPU autocast takes only bfloat16


def float32_inputs(op):
    """``op`` run in float32 when given reduced-precision tensors; its float32 outputs are cast
    back to that precision, as an autocast-aware op would return them."""
    low_precision = (torch.bfloat16, torch.float16)

    def cast(value, dtype, from_dtypes):
        is_from = isinstance(value, torch.Tensor) and value.dtype in from_dtypes
        return value.to(dtype) if is_from else value

    @functools.wraps(op)
    def op_in_float32(*args, **kwargs):
        dtypes = [v.dtype for v in (*args, *kwargs.values())
                  if isinstance(v, torch.Tensor) and v.dtype in low_precision]
        if not dtypes:
            return op(*args, **kwargs)
        args = [cast(v, torch.float32, low_precision) for v in args]
        kwargs = {key: cast(v, torch.float32, low_precision) for key, v in kwargs.items()}
        out = op(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(cast(v, dtypes[0], (torch.float32,)) for v in out)
        return cast(out, dtypes[0], (torch.float32,))

    return op_in_float32


def run_mmcv_ops_in_float32() -> None:
    """mmcv's CPU kernels (nms, roi_align) take float32 only and bypass autocast, so under
    bfloat16 autocast their inputs are cast to float32 (their module-level entry points, which
    mmdet's batched_nms and RoIAlign look up at call time, are replaced)."""
    for module_name, op_name in MMCV_FLOAT32_OPS:
        module = importlib.import_module(module_name)
        setattr(module, op_name, float32_inputs(getattr(module, op_name)))


def build_runner(cfg):
    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def report_error(err) -> None:
    """Writes this rank's error (first line) and traceback where the launcher looks for them."""
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if error_dir:
        with open(os.path.join(error_dir, f"rank{os.environ.get('RANK', '0')}.txt"), "w") as f:
            f.write(f"{type(err).__name__}: {err}".replace("\n", " ") + "\n\n")
            f.write("".join(traceback.format_exception(err)))


def run_worker(args) -> None:
    init_process_group()
    register_checkpoint_safe_globals()
    cfg = load_config(args)
    if not torch.cuda.is_available():
        adapt_to_cpu(cfg)
        if cfg.optim_wrapper.type == "CPUAmpOptimWrapper":
            run_mmcv_ops_in_float32()
    runner = build_runner(cfg)
    if args.stop_after_iter:
        runner.register_hook(StopAfterIter(args.stop_after_iter))
    if args.time_assigner:
        from .assign_timing import AssignerTimingHook

        runner.register_hook(AssignerTimingHook(), priority="LOWEST")
    runner.train()


def worker_main(argv) -> int:
    die_with_parent()
    args = parse_args(argv)
    try:
        run_worker(args)
    except SimulatedInterrupt as stop:
        print(f"[rank {os.environ.get('RANK')}] {stop}; continue with --resume", flush=True)
    except Exception as err:
        report_error(err)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(os.environ[ARGV_ENV])))

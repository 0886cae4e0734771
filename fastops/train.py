"""Train an mmdet / mmpose config with fastops on one or more processes and machines.

``python -m fastops train CONFIG [--nproc N] [--amp] [--resume [CKPT]] [--work-dir D]
[--cfg-options KEY=VALUE ...]``, on several machines with ``--nnodes``, ``--node-rank``,
``--master-addr``, ``--master-port`` (static rendezvous) or ``--rdzv-endpoint`` (c10d), under
Slurm with ``--launcher slurm``.

The launcher checks the config and its data first (a clear message instead of a traceback from
inside mmengine), then starts ``torchrun`` with N workers of this module (under Slurm, each srun
task is a worker itself). Each worker joins the process group itself (nccl on GPU, gloo on CPU)
with a timeout before mmengine sees it, so mmengine never calls ``torch.cuda.set_device`` on a
machine without a GPU; on CPU the model is wrapped in ``MMDistributedDataParallel(device_ids=None)``
and ``AmpOptimWrapper`` runs bfloat16 autocast with a CPU grad scaler. Resuming loads checkpoints
with torch's ``weights_only`` unpickler, with exactly the extra globals mmengine checkpoints
contain registered as safe, and rescales the lr to the new total batch. When a worker fails, it
records itself in the rendezvous store if no rank did before it, and the launcher on each machine
prints the rank that failed first and its error; no worker outlives the launcher.
"""
import argparse
import ctypes
import datetime
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

from . import slurm
from .resume_lr import TotalBatchHook

ERROR_DIR_ENV = "FASTOPS_ERROR_DIR"
ARGV_ENV = "FASTOPS_TRAIN_ARGV"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# mmcv ops whose CPU kernels are float32-only: (module, function) as mmdet calls them.
MMCV_FLOAT32_OPS = (("mmcv.ops.nms", "nms"), ("mmcv.ops.roi_align", "roi_align"))
# torchrun logs this (then its own traceback) when a worker exits with an error.
TORCHRUN_FAILURE_LINE = "elastic/multiprocessing/api.py"
# Process-group timeout: a collective waiting longer than this for a peer fails (torch's NCCL
# default; long enough for rank-0-only COCO evaluation while the others wait).
DEFAULT_DIST_TIMEOUT_S = 600
# torchrun's grace between SIGTERM and SIGKILL when it stops its workers.
TORCHRUN_STOP_GRACE_S = 30
FIRST_FAILURE_KEY = "fastops/first_failure"
FIRST_FAILURE_LINE = "first failure: rank "
STORE_TIMEOUT_S = 10  # a worker's client of the rendezvous store, to record a failure
TORCHRUN_MASTER_PORT = 29500
LAUNCH_HELP = f"""\
examples (--work-dir on a filesystem every machine shares, for checkpoints and --resume):
  one machine     fastops train CONFIG --nproc 8
  static          fastops train CONFIG --nproc 8 --nnodes 2 --node-rank R \\
                      --master-addr HOST0 --master-port 29500     (R = 0 on HOST0, 1 on the other)
  c10d            fastops train CONFIG --nproc 8 --nnodes 2 --rdzv-endpoint HOST0:29400
  c10d, elastic   --nnodes 1:2: starts with 1 machine, restarts all workers when the 2nd joins
  Slurm           srun --nodes=2 --ntasks-per-node=8 --gres=gpu:8 --kill-on-bad-exit=1 \\
                      fastops train CONFIG --launcher slurm        (one task per GPU)

failures: when a rank fails, its peers' collectives fail when its connections close, or at
the latest after the process-group timeout (--dist-timeout, default {DEFAULT_DIST_TIMEOUT_S} s);
torchrun then stops the other workers of its machine (SIGTERM, SIGKILL after
{TORCHRUN_STOP_GRACE_S} s). Every worker on every machine stops within --dist-timeout + {TORCHRUN_STOP_GRACE_S} s of the
first failure (plus the compute until its next collective). The failing rank records itself in
the rendezvous store; the launcher on each machine prints that global rank and its error.
"""


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


def add_launch_arguments(parser) -> None:
    launch = parser.add_argument_group("several machines and Slurm (see the examples below)")
    launch.add_argument("--nnodes", default="1", metavar="N|MIN:MAX",
                        help="machines (MIN:MAX, elastic, needs --rdzv-endpoint)")
    launch.add_argument("--node-rank", type=int, default=0, metavar="R",
                        help="this machine's rank, 0..N-1 (static rendezvous)")
    launch.add_argument("--master-addr", metavar="HOST",
                        help="static rendezvous: address of the machine with --node-rank 0; "
                             "--launcher slurm: instead of the first node of SLURM_NODELIST")
    launch.add_argument("--master-port", type=int, metavar="PORT",
                        help=f"with --master-addr (default {TORCHRUN_MASTER_PORT}); --launcher "
                             f"slurm: default {slurm.JOB_PORT_BASE} + SLURM_JOB_ID %% "
                             f"{slurm.JOB_PORT_SPAN}")
    launch.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="c10d rendezvous, the same on every machine; it assigns node ranks")
    launch.add_argument("--launcher", choices=("torchrun", "slurm"), default="torchrun",
                        help="slurm: run as one srun task per GPU (rank, local rank and world "
                             "size from SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS)")
    launch.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                        help="process-group timeout: a collective that waits longer for a peer "
                             "fails (default: the config's env_cfg.dist_cfg.timeout, else "
                             f"{DEFAULT_DIST_TIMEOUT_S})")


def parse_nnodes(nnodes):
    """(min, max) machines of ``--nnodes N`` or ``--nnodes MIN:MAX``, or None if malformed."""
    bounds = nnodes.split(":")
    if len(bounds) > 2 or not all(bound.isdigit() and int(bound) > 0 for bound in bounds):
        return None
    low, high = int(bounds[0]), int(bounds[-1])
    return (low, high) if low <= high else None


def launch_problem(args):
    """What is wrong with the launch options, or None."""
    nodes = parse_nnodes(args.nnodes)
    if args.nproc < 1:
        return f"--nproc must be >= 1, got {args.nproc}"
    if args.dist_timeout is not None and args.dist_timeout <= 0:
        return f"--dist-timeout must be > 0, got {args.dist_timeout}"
    if nodes is None:
        return f"--nnodes must be N or MIN:MAX with 0 < MIN <= MAX, got {args.nnodes!r}"
    if args.launcher == "slurm":
        if args.nproc != 1 or nodes != (1, 1) or args.rdzv_endpoint or args.node_rank:
            return ("--launcher slurm takes the world size from Slurm (one srun task per GPU): "
                    "drop --nproc, --nnodes, --node-rank and --rdzv-endpoint")
        return None
    if args.rdzv_endpoint:
        host, _, port = args.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            return f"--rdzv-endpoint must be HOST:PORT, got {args.rdzv_endpoint!r}"
        if args.master_addr or args.master_port or args.node_rank:
            return ("--rdzv-endpoint (c10d) assigns node ranks: --master-addr, --master-port and "
                    "--node-rank are for the static rendezvous")
        return None
    if nodes[0] != nodes[1]:
        return "--nnodes MIN:MAX (elastic) needs --rdzv-endpoint"
    if args.master_port and not args.master_addr:
        return "--master-port needs --master-addr (static rendezvous)"
    if nodes[0] > 1 and not args.master_addr:
        return f"--nnodes {nodes[0]} needs --master-addr (static) or --rdzv-endpoint (c10d)"
    if not 0 <= args.node_rank < nodes[0]:
        return f"--node-rank must be in 0..{nodes[0] - 1}, got {args.node_rank}"
    return None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fastops train", description=__doc__.split("\n")[0], epilog=LAUNCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file (may inherit mmdet:: / mmpose:: configs)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this machine (one per GPU on GPU)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU (gloo) even if GPUs exist")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="resume from CKPT, or from the work dir's latest checkpoint; the lr "
                             "is rescaled to this run's total batch (with auto_scale_lr)")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (shared by all machines)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. train_cfg.max_iters=10")
    parser.add_argument("--stop-after-iter", type=int, metavar="K",
                        help="stop every rank after iteration K as if interrupted (tests resume)")
    parser.add_argument("--time-assigner", action="store_true",
                        help="also run the stock SimOTAAssigner on every batch and time both")
    add_launch_arguments(parser)
    args = parser.parse_args(argv)
    problem = launch_problem(args)
    if problem:
        parser.error(problem)
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
    cfg.launcher = "pytorch"  # torchrun's env:// variables; under Slurm the worker sets them
    set_dist_timeout(cfg, args.dist_timeout)
    if args.amp:
        enable_amp(cfg)
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == "auto" else args.resume
    return cfg


def set_dist_timeout(cfg, seconds) -> None:
    """The process-group timeout: ``seconds``, else the config's, else the default; kept in
    ``env_cfg.dist_cfg``, where mmengine logs it."""
    dist_cfg = cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})
    dist_cfg["timeout"] = seconds or dist_cfg.get("timeout") or DEFAULT_DIST_TIMEOUT_S


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


def rendezvous_options(args):
    """torchrun's options for one machine, a static rendezvous or a c10d one."""
    if args.rdzv_endpoint:
        return [f"--nnodes={args.nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={args.rdzv_endpoint}"]
    if args.master_addr:
        return [f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}",
                f"--master-addr={args.master_addr}",
                f"--master-port={args.master_port or TORCHRUN_MASTER_PORT}"]
    return ["--standalone"]


def torchrun_command(args):
    """The workers get the launcher's arguments through ARGV_ENV, so torchrun parses none."""
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous_options(args),
            f"--nproc-per-node={args.nproc}", "-m", "fastops.train"]


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
    """(rank, exit code, summary) of torchrun's "first observed failure" on this machine, or
    None."""
    text = "".join(torchrun_report)
    block = text[text.find("Root Cause"):] if "Root Cause" in text else ""
    fields = {key: re.search(rf"{key}\s*:\s*(.+)", block) for key in ("rank", "exitcode", "traceback")}
    if not all(fields.values()):
        return None
    rank = fields["rank"].group(1).split()[0]
    return rank, fields["exitcode"].group(1).strip(), fields["traceback"].group(1).strip()


def error_report_path(error_dir, rank):
    return os.path.join(error_dir, f"rank{rank}.txt")


def earliest_error_report(error_dir):
    """The rank whose worker wrote its error report first, or None."""
    reports = sorted(glob.glob(os.path.join(error_dir, "rank*.txt")), key=os.path.getmtime)
    return os.path.basename(reports[0])[len("rank"):-len(".txt")] if reports else None


def parse_first_failure(line):
    """(rank, error) of a ``first failure: rank R: ERROR`` line, or None."""
    if not line.startswith(FIRST_FAILURE_LINE):
        return None
    rank, _, error = line[len(FIRST_FAILURE_LINE):].partition(": ")
    return rank, error


def read_error_report(error_dir, rank):
    """(error, the run's first failure or None) from ``rank``'s report, or None without one."""
    try:
        with open(error_report_path(error_dir, rank)) as f:
            error, first_failure_line = f.readline().strip(), f.readline().strip()
    except FileNotFoundError:
        return None
    return error, parse_first_failure(first_failure_line)


def failure_message(error_dir, rank, error, first_failure):
    """The rank that failed first and its error, then ``rank`` (of this machine) if another."""
    first_rank, first_error = first_failure or (rank, error)
    lines = [f"fastops train: rank {first_rank} failed first: {first_error}",
             f"  full traceback: {error_report_path(error_dir, first_rank)}"]
    if first_rank != rank:
        lines[-1] += " (on the machine that ran it)"
        lines += [f"  then rank {rank} on this machine: {error}",
                  f"  full traceback: {error_report_path(error_dir, rank)}"]
    return "\n".join(lines)


def report_failure(error_dir, returncode, torchrun_report) -> None:
    """Names the rank that failed first on any machine and its error, and where its traceback
    is: as the failed rank of this machine recorded it from the rendezvous store, else (the
    store's host had stopped) the earliest report in the error folder, every machine's where the
    work dir is shared."""
    cause = root_cause(torchrun_report)
    rank = cause[0] if cause else earliest_error_report(error_dir)
    report = read_error_report(error_dir, rank) if rank is not None else None
    if report:
        error, first_failure = report
        if first_failure is None:
            first_rank = earliest_error_report(error_dir)
            first_failure = (first_rank, read_error_report(error_dir, first_rank)[0])
        print(failure_message(error_dir, rank, error, first_failure), file=sys.stderr)
    elif cause:  # killed without a Python error, e.g. by a signal
        print(f"fastops train: rank {rank} failed first: exit code {cause[1]}, {cause[2]}",
              file=sys.stderr)
    else:
        sys.stderr.write("".join(torchrun_report))
        print(f"fastops train: torchrun exited with status {returncode}", file=sys.stderr)


def error_dir_of(work_dir):
    return os.path.join(os.path.abspath(work_dir), "fastops_errors")


def launch(argv, args, work_dir) -> int:
    """Runs this machine's workers under torchrun; returns their exit status."""
    error_dir = error_dir_of(work_dir)
    # Earlier runs' reports go; no worker of this run exists before every launcher has started.
    shutil.rmtree(error_dir, ignore_errors=True)
    os.makedirs(error_dir, exist_ok=True)
    env = dict(os.environ, **{ERROR_DIR_ENV: error_dir, ARGV_ENV: json.dumps(argv)})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.Popen(torchrun_command(args), env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=die_with_parent)
    try:
        torchrun_report = forward_worker_output(proc.stderr)
        returncode = proc.wait()
    finally:
        stop_process_group(proc)
    if returncode != 0:
        report_failure(error_dir, returncode, torchrun_report)
    return returncode


def run_slurm_task(argv, work_dir, hide_gpus=False) -> int:
    """Under srun this process is the worker (srun stops the other tasks when one fails, with
    ``--kill-on-bad-exit=1``); it prints its own failure report."""
    error_dir = error_dir_of(work_dir)
    os.makedirs(error_dir, exist_ok=True)
    os.environ[ERROR_DIR_ENV] = error_dir
    if hide_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return worker_main(argv)


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
    """``python -m fastops train``: check the config and data, then run torchrun workers, or
    under ``--launcher slurm`` this srun task's worker."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        if not args.cpu:
            check_devices(args.nproc)
        cfg = load_config(args)
        check_data(cfg)
        if args.launcher == "slurm":
            os.environ.update(slurm.dist_env(os.environ, args.master_addr, args.master_port))
    except (LaunchError, slurm.SlurmError) as err:
        print(f"fastops train: error: {err}", file=sys.stderr)
        return 2
    if args.launcher == "slurm":
        return run_slurm_task(argv, cfg.work_dir, hide_gpus=args.cpu)
    return launch(argv, args, cfg.work_dir)


# ---------------------------------------------------------------------------------------------
# Worker (one per rank, started by torchrun or srun)
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


def init_process_group(timeout_s) -> None:
    """Join the group (``env://``) before mmengine: nccl on this rank's GPU, else gloo on CPU.
    A collective that waits longer than ``timeout_s`` for a peer fails."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if torch.cuda.is_available():
        # one GPU visible per task (srun --gpus-per-task) or all of the machine's
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def connect_failure_store():
    """A client of the store the group was set up through (torchrun's agent on the first
    machine, or rank 0 under Slurm), where the first rank to fail records itself; None if it
    cannot be reached."""
    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                             is_master=False, timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
    except RuntimeError:
        return None


def record_first_failure(store, rank, error):
    """``RANK: ERROR`` of the run's first failure: this rank's, unless another rank recorded
    itself before; None when the store cannot be reached (its host has stopped)."""
    if store is None:
        return None
    try:
        return store.compare_set(FIRST_FAILURE_KEY, "", f"{rank}: {error}").decode()
    except RuntimeError:
        return None


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


def report_error(err, failure_store):
    """Writes this rank's error (first line), the run's first failure and the traceback where
    the launcher looks for them; returns the launcher's message for them."""
    error_dir = os.environ[ERROR_DIR_ENV]
    rank = os.environ.get("RANK", "0")
    error = f"{type(err).__name__}: {err}".replace("\n", " ")
    first_failure = record_first_failure(failure_store, rank, error)
    first_failure_line = FIRST_FAILURE_LINE + first_failure if first_failure else ""
    with open(error_report_path(error_dir, rank), "w") as f:
        f.write(f"{error}\n{first_failure_line}\n\n")
        f.write("".join(traceback.format_exception(err)))
    return failure_message(error_dir, rank, error, parse_first_failure(first_failure_line))


def run_worker(args, cfg) -> None:
    register_checkpoint_safe_globals()
    if not torch.cuda.is_available():
        adapt_to_cpu(cfg)
        if cfg.optim_wrapper.type == "CPUAmpOptimWrapper":
            run_mmcv_ops_in_float32()
    runner = build_runner(cfg)
    runner.register_hook(TotalBatchHook())
    if args.stop_after_iter:
        runner.register_hook(StopAfterIter(args.stop_after_iter))
    if args.time_assigner:
        from .assign_timing import AssignerTimingHook

        runner.register_hook(AssignerTimingHook(), priority="LOWEST")
    runner.train()


def worker_main(argv) -> int:
    die_with_parent()
    args = parse_args(argv)
    failure_store = None
    try:
        cfg = load_config(args)
        init_process_group(cfg.env_cfg.dist_cfg.timeout)
        failure_store = connect_failure_store()
        run_worker(args, cfg)
    except SimulatedInterrupt as stop:
        print(f"[rank {os.environ.get('RANK')}] {stop}; continue with --resume", flush=True)
    except Exception as err:
        message = report_error(err, failure_store)
        if args.launcher == "slurm":  # no launcher to print it
            print(message, file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(os.environ[ARGV_ENV])))

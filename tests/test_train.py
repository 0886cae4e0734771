"""`python -m fastops train`: 2-process gloo training of the smoke configs, resume (also on
another number of processes), two machines (static and c10d rendezvous), Slurm tasks, AMP on
CPU, auto-scaled lr, and clear errors. Runs the real launcher (torchrun) in subprocesses."""
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from unittest import mock

import pytest
import torch

pytest.importorskip("mmpose")
pytest.importorskip("mmdet")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from fastops.resume_lr import TOTAL_BATCH_KEY, WORLD_SIZE_KEY  # noqa: E402
from fastops.train import (DEFAULT_DIST_TIMEOUT_S, TORCHRUN_STOP_GRACE_S,  # noqa: E402
                           adapt_to_cpu, latest_checkpoint, parse_args,
                           register_checkpoint_safe_globals, report_failure,
                           torchrun_command, training_log)
from fastops.train import main as train_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
RTMO_SMOKE = os.path.join(CONFIGS, "smoke", "rtmo_smoke.py")
FASTER_RCNN_SMOKE = os.path.join(CONFIGS, "smoke", "faster_rcnn_smoke.py")
SMOKE_ITERS = 12
CHECKPOINT_EVERY = 6


def train_env(**variables):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
                **variables)


def train_command(config, work_dir, data_dir, *extra, options=(), nproc=2, iters=SMOKE_ITERS):
    """The launcher's command line; ``options`` are extra --cfg-options."""
    return [sys.executable, "-m", "fastops", "train", config, "--nproc", str(nproc),
            "--work-dir", str(work_dir), *extra, "--cfg-options",
            f"train_dataloader.dataset.data_root={data_dir}/", f"train_cfg.max_iters={iters}",
            f"default_hooks.checkpoint.interval={CHECKPOINT_EVERY}", *options]


def train(config, work_dir, data_dir, *extra, options=(), nproc=2, iters=SMOKE_ITERS, env=None):
    """Runs the launcher."""
    return subprocess.run(train_command(config, work_dir, data_dir, *extra, options=options,
                                        nproc=nproc, iters=iters),
                          capture_output=True, text=True, env=env or train_env(), timeout=300)


def assert_trained(done, work_dir, iters):
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [record["loss"] for record in training_log(work_dir)]
    assert len(losses) == iters and all(math.isfinite(loss) for loss in losses)
    # noisy per-batch losses: compare the first and last thirds
    third = iters // 3
    assert sum(losses[-third:]) < 0.95 * sum(losses[:third]), losses
    return losses


def run_log_text(work_dir):
    run_dir = sorted(d for d in os.listdir(work_dir) if os.path.isdir(os.path.join(work_dir, d, "vis_data")))[-1]
    with open(os.path.join(work_dir, run_dir, f"{run_dir}.log")) as f:
        return f.read()


def load_checkpoint(path):
    register_checkpoint_safe_globals()
    return torch.load(path, map_location="cpu")  # weights_only=True


def final_weights(work_dir):
    checkpoint = load_checkpoint(latest_checkpoint(work_dir))
    return checkpoint["meta"]["iter"], checkpoint["state_dict"]


@pytest.fixture(scope="module")
def rtmo_run(tmp_path_factory, keypoint_data):
    """One uninterrupted 2-process RTMO smoke run, shared by the smoke and resume tests."""
    work_dir = tmp_path_factory.mktemp("rtmo_full")
    return work_dir, train(RTMO_SMOKE, work_dir, keypoint_data)


@pytest.mark.slow
def test_rtmo_two_process_gloo_loss_goes_down(rtmo_run):
    work_dir, done = rtmo_run
    assert_trained(done, work_dir, SMOKE_ITERS)
    log = run_log_text(work_dir)
    assert "Distributed training: True" in log
    assert f"dist_cfg: {{'backend': 'gloo', 'timeout': {DEFAULT_DIST_TIMEOUT_S}}}" in log
    assert "GPU number: 2" in log  # mmengine's label for the world size
    assert "model_wrapper_cfg = dict(device_ids=None, type='MMDistributedDataParallel')" in log
    assert "batch size of 8 and the current batch size is 8" in log  # 2 processes x 4 images
    assert os.path.basename(latest_checkpoint(work_dir)) == f"iter_{SMOKE_ITERS}.pth"


@pytest.mark.slow
def test_resume_continues_from_k_and_matches_uninterrupted_run(rtmo_run, keypoint_data, tmp_path):
    full_dir, _ = rtmo_run
    k = CHECKPOINT_EVERY
    stopped = train(RTMO_SMOKE, tmp_path, keypoint_data, "--stop-after-iter", str(k))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert f"stopped after iteration {k}" in stopped.stdout
    assert [r["iter"] for r in training_log(tmp_path)] == list(range(1, k + 1))
    assert os.path.basename(latest_checkpoint(tmp_path)) == f"iter_{k}.pth"

    resumed = train(RTMO_SMOKE, tmp_path, keypoint_data, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["iter"] for r in training_log(tmp_path)] == list(range(k + 1, SMOKE_ITERS + 1))
    full_iter, full_state = final_weights(full_dir)
    resumed_iter, resumed_state = final_weights(tmp_path)
    assert full_iter == resumed_iter == SMOKE_ITERS
    assert full_state.keys() == resumed_state.keys()
    differing = [name for name in full_state if not torch.equal(full_state[name], resumed_state[name])]
    assert not differing, differing[:5]


@pytest.mark.slow
def test_faster_rcnn_amp_two_process_logs_num_clamped(detection_data, tmp_path):
    done = train(FASTER_RCNN_SMOKE, tmp_path, detection_data)
    assert_trained(done, tmp_path, SMOKE_ITERS)
    assert all("num_clamped" in record for record in training_log(tmp_path))
    log = run_log_text(tmp_path)
    assert "num_clamped:" in log
    assert "CPUAmpOptimWrapper" in log  # the config's AmpOptimWrapper, bfloat16 autocast on CPU


@pytest.mark.slow
@pytest.mark.parametrize("config", ["rtmdet_smoke.py", "rtmdet_ins_smoke.py"])
def test_rtmdet_smoke_configs_train_with_two_processes_on_cpu(config, detection_data, tmp_path):
    """RTMDet converts BN to SyncBN when several processes train, and SyncBN needs CUDA: the smoke
    configs keep BN so that the fastops heads train distributed on CPU."""
    done = train(os.path.join(CONFIGS, "smoke", config), tmp_path, detection_data)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [record["loss"] for record in training_log(tmp_path)]
    assert len(losses) == SMOKE_ITERS and all(math.isfinite(loss) for loss in losses)
    assert "Distributed training: True" in run_log_text(tmp_path)


FULL_CONFIGS = [
    # config, lr in the config, images per process, base_batch_size
    ("rtmo/rtmo-s_fastops_8xb32-600e_coco-640x640.py", 0.004, 32, 256),
    ("faster_rcnn/faster-rcnn_r50_fpn_safece-amp_1x_coco.py", 0.02, 2, 16),
    ("yolox/yolox_s_fastops_8xb8-300e_coco.py", 0.01, 8, 64),
]


@pytest.mark.parametrize("config, base_lr, per_process, base_batch", FULL_CONFIGS)
def test_auto_scale_lr_for_1_2_4_processes(config, base_lr, per_process, base_batch, tmp_path):
    """The lr in the optimizer after mmengine's Runner.scale_lr, for world sizes 1, 2 and 4."""
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=base_batch)
    assert cfg.train_dataloader.batch_size == per_process
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.interval > 0 and checkpoint.max_keep_ckpts > 0 and checkpoint.save_best
    cfg.work_dir = str(tmp_path)
    if not torch.cuda.is_available():
        adapt_to_cpu(cfg)  # as the launcher does: AmpOptimWrapper asserts a GPU
    runner = Runner.from_cfg(cfg)
    for world_size in (1, 2, 4):
        with mock.patch.object(Runner, "world_size", world_size):
            optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
            unscaled = [group["lr"] for group in optim_wrapper.optimizer.param_groups]
            runner.scale_lr(optim_wrapper, runner.auto_scale_lr)
        received = [group["lr"] for group in optim_wrapper.optimizer.param_groups]
        ratio = world_size * per_process / base_batch
        assert max(received) == pytest.approx(base_lr * ratio, rel=1e-12)
        assert received == pytest.approx([lr * ratio for lr in unscaled], rel=1e-12)


def launcher_error(capsys, config, *options):
    """(exit status, stderr) of the launcher's checks, run in this process: they stop before
    any worker starts."""
    status = train_main([config, "--nproc", "2", *(["--cfg-options", *options] if options else [])])
    return status, capsys.readouterr().err


def test_missing_config_and_missing_data_are_clear(capsys, tmp_path):
    status, err = launcher_error(capsys, str(tmp_path / "nope.py"))
    assert status == 2 and "config file" in err and "does not exist" in err
    status, err = launcher_error(capsys, RTMO_SMOKE, f"train_dataloader.dataset.data_root={tmp_path}/none/",
                                 f"work_dir={tmp_path}")
    assert status == 2 and "Traceback" not in err
    assert "train_dataloader.dataset.ann_file" in err and "fastops synth" in err


def test_broken_config_is_clear(capsys, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("_base_ = ['../smoke/rtmo_smoke.py']\nmodel = dict(head=dict(\n")
    status, err = launcher_error(capsys, str(broken), f"work_dir={tmp_path}")
    assert status == 2 and "Traceback" not in err
    assert "cannot load config" in err and "SyntaxError" in err


def processes_with_env(text):
    """pids of live processes whose environment contains ``text``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_unknown_type_reports_the_failing_rank_and_leaves_no_workers(keypoint_data, tmp_path):
    done = train(RTMO_SMOKE, tmp_path, keypoint_data, options=["model.head.loss_vis.type=NoSuchLoss"])
    assert done.returncode != 0
    assert "failed first: KeyError" in done.stderr and "NoSuchLoss is not in the" in done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    assert "full traceback" in done.stderr and os.listdir(tmp_path / "fastops_errors")
    assert processes_with_env(str(tmp_path / "fastops_errors")) == []


@pytest.mark.slow
def test_demo_trains_stock_and_fastops_alternating_and_plots(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "fastops", "demo", "--work-dir", str(tmp_path), "--images", "8",
         "--iters", "5"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("per-iteration losses:\n")[1].splitlines()
    assert table[0].split()[:3] == ["iter", "loss", "stock"] and [row.split()[0] for row in table[1:6]] == [
        "1", "2", "3", "4", "5"]
    first = table[1].split()
    assert first[1] == first[2]  # same seed, same batch, same weights: the same first loss
    assert "speed-up of the whole step: x" in done.stdout and "stock RTMOHead" in done.stdout
    assert os.path.getsize(tmp_path / "demo.png") > 10_000


@pytest.mark.slow
def test_killing_the_launcher_stops_every_worker(keypoint_data, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fastops", "train", RTMO_SMOKE, "--nproc", "2", "--work-dir",
         str(tmp_path), "--cfg-options", f"train_dataloader.dataset.data_root={keypoint_data}/"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    error_dir = str(tmp_path / "fastops_errors")
    deadline = time.monotonic() + 120
    while len(processes_with_env(error_dir)) < 3:  # torchrun + 2 workers
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    launcher.kill()  # SIGKILL: the launcher cannot clean up; its children must follow
    launcher.wait()
    while processes_with_env(error_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with_env(error_dir) == []


# ---------------------------------------------------------------------------------------------
# Several machines, Slurm, resume on another number of processes
# ---------------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_error(capsys, *argv):
    """The message of a launch option the parser rejects."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args([RTMO_SMOKE, *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_inconsistent_launch_options_are_rejected(capsys):
    assert "needs --master-addr" in launch_error(capsys, "--nnodes", "2")
    assert "needs --rdzv-endpoint" in launch_error(capsys, "--nnodes", "1:2", "--master-addr", "h")
    assert "--node-rank must be in 0..1" in launch_error(
        capsys, "--nnodes", "2", "--node-rank", "2", "--master-addr", "h")
    assert "assigns node ranks" in launch_error(
        capsys, "--nnodes", "2", "--rdzv-endpoint", "h:1", "--node-rank", "1")
    assert "HOST:PORT" in launch_error(capsys, "--rdzv-endpoint", "h")
    assert "MIN:MAX" in launch_error(capsys, "--nnodes", "3:2", "--rdzv-endpoint", "h:1")
    assert "world size from Slurm" in launch_error(capsys, "--launcher", "slurm", "--nproc", "2")
    assert "--dist-timeout must be > 0" in launch_error(capsys, "--dist-timeout", "0")


def torchrun_options(*argv):
    command = torchrun_command(parse_args([RTMO_SMOKE, *argv]))
    return command[command.index("torch.distributed.run") + 1:command.index("-m", 3)]


def test_launch_options_map_onto_torchrun():
    assert torchrun_options("--nproc", "8") == ["--standalone", "--nproc-per-node=8"]
    assert torchrun_options("--nproc", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                            "node01") == ["--nnodes=2", "--node-rank=1", "--master-addr=node01",
                                          "--master-port=29500", "--nproc-per-node=8"]
    assert torchrun_options("--nnodes", "1:2", "--rdzv-endpoint", "node01:29400") == [
        "--nnodes=1:2", "--rdzv-backend=c10d", "--rdzv-endpoint=node01:29400", "--nproc-per-node=1"]


def write_report(error_dir, rank, error, first_failure=None, age_s=0.0):
    path = error_dir / f"rank{rank}.txt"
    first_failure_line = f"first failure: rank {first_failure}" if first_failure else ""
    path.write_text(f"{error}\n{first_failure_line}\n\nTraceback")
    mtime = time.time() - age_s
    os.utime(path, (mtime, mtime))


def test_report_names_the_first_failure_of_the_store_else_the_earliest_report(capsys, tmp_path):
    torchrun_report = ["Root Cause (first observed failure):\n",
                       "  rank      : 0 (local_rank: 0)\n", "  exitcode  : 1 (pid: 7)\n",
                       "  traceback : To enable traceback see: ...\n"]
    write_report(tmp_path, 0, "RuntimeError: Connection closed by peer", "9: KeyError: 'x'")
    report_failure(str(tmp_path), 1, torchrun_report)
    err = capsys.readouterr().err
    assert err.startswith("fastops train: rank 9 failed first: KeyError: 'x'\n")
    assert f"{tmp_path}/rank9.txt (on the machine that ran it)" in err
    assert "then rank 0 on this machine: RuntimeError: Connection closed by peer" in err
    # the store's host had stopped: the earliest report of the (shared) folder
    write_report(tmp_path, 0, "RuntimeError: Connection closed by peer")
    write_report(tmp_path, 3, "ValueError: bad", age_s=5)
    report_failure(str(tmp_path), 1, torchrun_report)
    err = capsys.readouterr().err
    assert err.startswith("fastops train: rank 3 failed first: ValueError: bad\n")


@pytest.fixture(scope="module")
def corrupt_keypoint_data(keypoint_data, tmp_path_factory):
    """The keypoint set with every image truncated: its loader fails on the first batch."""
    out = tmp_path_factory.mktemp("corrupt_keypoints")
    shutil.copytree(keypoint_data / "annotations", out / "annotations")
    (out / "images").mkdir()
    for image in (keypoint_data / "images").iterdir():
        (out / "images" / image.name).write_bytes(image.read_bytes()[:100])
    return out


def run_machines(commands, env, timeout_s=300):
    """Runs one launcher per machine at once; (returncode, stderr, exit time) of each."""
    launchers = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    deadline = time.monotonic() + timeout_s
    results = [None] * len(launchers)
    while None in results:
        for i, launcher in enumerate(launchers):
            if results[i] is None and launcher.poll() is not None:
                results[i] = (launcher.returncode, launcher.stderr.read(), time.time())
        assert time.monotonic() < deadline, "a launcher did not finish"
        time.sleep(0.2)
    return results


@pytest.mark.slow
def test_two_machines_static_a_failure_on_machine_1_stops_both(keypoint_data, corrupt_keypoint_data,
                                                               tmp_path):
    """Rank 1 (machine 1) cannot load its images; rank 0 (machine 0) then fails in its collective.
    Both launchers exit within the stated bound, name rank 1 as the first failure, and leave no
    process behind."""
    dist_timeout_s = 60
    static = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
              "--dist-timeout", str(dist_timeout_s)]
    machines = ((0, keypoint_data), (1, corrupt_keypoint_data))
    commands = [train_command(RTMO_SMOKE, tmp_path, data, *static, "--node-rank", str(node),
                              nproc=1) for node, data in machines]
    machine0, machine1 = run_machines(commands, train_env(OMP_NUM_THREADS="1"))
    (status0, err0, ended0), (status1, err1, ended1) = machine0, machine1
    first_failure = "fastops train: rank 1 failed first: AssertionError: `failed to load image"
    assert status1 != 0 and first_failure in err1 and "then rank" not in err1, err1[-3000:]
    assert status0 != 0 and first_failure in err0, err0[-3000:]
    assert "then rank 0 on this machine: RuntimeError" in err0  # gloo: connection closed
    # rank 0 learnt it from the rendezvous store (hosted by machine 0), not from the shared folder
    report0 = (tmp_path / "fastops_errors" / "rank0.txt").read_text().splitlines()
    assert report0[1].startswith("first failure: rank 1: AssertionError: `failed to load image")
    failed_at = os.path.getmtime(tmp_path / "fastops_errors" / "rank1.txt")
    assert max(ended0, ended1) - failed_at < dist_timeout_s + TORCHRUN_STOP_GRACE_S
    assert processes_with_env(str(tmp_path / "fastops_errors")) == []


def fresh_run_lr(cfg, total_batch, iteration):
    """The lr at (1-based) ``iteration`` of a run started at ``total_batch``: the config's lr
    scaled as auto_scale_lr scales it, through the config's schedulers, built by mmengine."""
    lr = cfg.optim_wrapper.optimizer.lr * total_batch / cfg.auto_scale_lr.base_batch_size
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(scheduler, optimizer=optimizer))
                  for scheduler in cfg.param_scheduler]
    for _ in range(iteration - 1):
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return optimizer.param_groups[0]["lr"]


def initial_lrs(checkpoint):
    return [group["initial_lr"] for group in checkpoint["optimizer"]["param_groups"]]


@pytest.mark.slow
def test_resume_on_2_machines_and_on_a_slurm_task_uses_the_lr_of_the_new_total_batch(keypoint_data,
                                                                                     tmp_path):
    """Saved at iteration 2 on 4 processes (total batch 4 x 2 = 8), resumed on 2 machines of one
    process each (c10d rendezvous) and on 1 Slurm task: the optimizer's lr at iterations 3 and 4
    is a fresh run's at the new total batch, every param group's and lr scheduler's base lr is
    rescaled, the log names both totals and lrs, the new checkpoint records the new total."""
    cfg = Config.fromfile(RTMO_SMOKE)
    assert cfg.auto_scale_lr.enable
    saved_iter, per_process, saved_total = 2, 2, 8
    options = [f"train_dataloader.batch_size={per_process}",
               f"default_hooks.checkpoint.interval={saved_iter}"]
    single_thread = train_env(OMP_NUM_THREADS="1")
    saved = train(RTMO_SMOKE, tmp_path / "ws4", keypoint_data, "--stop-after-iter", str(saved_iter),
                  nproc=4, iters=saved_iter + 2, options=options, env=single_thread)
    assert saved.returncode == 0, saved.stderr[-3000:]
    checkpoint_path = tmp_path / "ws4" / f"iter_{saved_iter}.pth"
    checkpoint = load_checkpoint(checkpoint_path)
    assert checkpoint["meta"][WORLD_SIZE_KEY] == 4
    assert checkpoint["meta"][TOTAL_BATCH_KEY] == saved_total
    saved_lr = checkpoint["optimizer"]["param_groups"][0]["lr"]  # for iteration 3
    assert saved_lr == pytest.approx(fresh_run_lr(cfg, saved_total, saved_iter + 1), rel=1e-9)

    def resume_command(work_dir, *launch):
        return train_command(RTMO_SMOKE, work_dir, keypoint_data, "--resume", str(checkpoint_path),
                             *launch, nproc=1, iters=saved_iter + 2, options=options)

    c10d = ["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    slurm_task = dict(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NTASKS="1", SLURM_JOB_ID="4242",
                      SLURM_NODELIST="localhost,node[02-04]")
    resumes = {2: ([resume_command(tmp_path / "ws2", *c10d)] * 2, single_thread),
               1: ([resume_command(tmp_path / "ws1", "--launcher", "slurm", "--master-port",
                                   str(free_port()))], dict(single_thread, **slurm_task))}
    for processes, (commands, env) in resumes.items():
        for returncode, err, _ in run_machines(commands, env):
            assert returncode == 0, err[-3000:]
        work_dir, total = tmp_path / f"ws{processes}", processes * per_process
        ratio = total / saved_total
        records = training_log(work_dir)
        assert [record["iter"] for record in records] == [saved_iter + 1, saved_iter + 2]
        assert records[0]["lr"] == pytest.approx(saved_lr * ratio, rel=1e-9)
        assert [record["lr"] for record in records] == pytest.approx(
            [fresh_run_lr(cfg, total, record["iter"]) for record in records], rel=1e-9)
        log = run_log_text(work_dir)
        assert f"GPU number: {processes}" in log  # the world size
        assert (f"auto_scale_lr rescales the lr x{ratio:g}. checkpoint: 4 processes x 2 = total "
                f"batch 8, lr {saved_lr:.6e}") in log
        assert (f"this run: {processes} processes x 2 = total batch {total}, "
                f"lr {saved_lr * ratio:.6e}") in log

        final = load_checkpoint(latest_checkpoint(work_dir))
        assert final["meta"][WORLD_SIZE_KEY] == processes
        assert final["meta"][TOTAL_BATCH_KEY] == total
        rescaled = [lr * ratio for lr in initial_lrs(checkpoint)]
        assert initial_lrs(final) == pytest.approx(rescaled, rel=1e-9)
        for scheduler in final["param_schedulers"]:
            assert scheduler["base_values"][:len(rescaled)] == pytest.approx(rescaled, rel=1e-9)


def test_slurm_launch_outside_srun_is_a_clear_error(capsys, keypoint_data, tmp_path, monkeypatch):
    for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    status = train_main([RTMO_SMOKE, "--launcher", "slurm", "--work-dir", str(tmp_path),
                         "--cfg-options", f"train_dataloader.dataset.data_root={keypoint_data}/"])
    assert status == 2
    assert capsys.readouterr().err == (
        "fastops train: error: --launcher slurm runs as an srun task (one per GPU); not set here: "
        "SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_NODELIST\n")

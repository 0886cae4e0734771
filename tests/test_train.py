"""`python -m fastops train`: 2-process gloo training of the smoke configs, resume, AMP on CPU,
auto-scaled lr, and clear errors. Runs the real launcher (torchrun) in subprocesses."""
import math
import os
import subprocess
import sys
import time
from unittest import mock

import pytest
import torch

pytest.importorskip("mmpose")
pytest.importorskip("mmdet")

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from fastops import synth  # noqa: E402
from fastops.train import (adapt_to_cpu, latest_checkpoint,  # noqa: E402
                           register_checkpoint_safe_globals, training_log)
from fastops.train import main as train_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
RTMO_SMOKE = os.path.join(CONFIGS, "smoke", "rtmo_smoke.py")
FASTER_RCNN_SMOKE = os.path.join(CONFIGS, "smoke", "faster_rcnn_smoke.py")
SMOKE_ITERS = 12
CHECKPOINT_EVERY = 6


def train(config, work_dir, data_dir, *extra, options=(), nproc=2):
    """Runs the launcher; ``options`` are extra --cfg-options."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "fastops", "train", config, "--nproc", str(nproc),
           "--work-dir", str(work_dir), *extra, "--cfg-options",
           f"train_dataloader.dataset.data_root={data_dir}/", f"train_cfg.max_iters={SMOKE_ITERS}",
           f"default_hooks.checkpoint.interval={CHECKPOINT_EVERY}", *options]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


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


def final_weights(work_dir):
    register_checkpoint_safe_globals()
    checkpoint = torch.load(latest_checkpoint(work_dir), map_location="cpu")  # weights_only=True
    return checkpoint["meta"]["iter"], checkpoint["state_dict"]


@pytest.fixture(scope="module")
def keypoint_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_keypoints")
    synth.generate(str(out), "keypoints", images=24, size=320, seed=0)
    return out


@pytest.fixture(scope="module")
def detection_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_detection")
    synth.generate(str(out), "detection", images=24, size=320, seed=0)
    return out


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
    assert "Distributed training: True" in log and "dist_cfg: {'backend': 'gloo'}" in log
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
    done = train(RTMO_SMOKE, tmp_path, keypoint_data, options=["model.head.assigner.type=NoSuchAssigner"])
    assert done.returncode != 0
    assert "failed first: KeyError" in done.stderr and "NoSuchAssigner is not in the" in done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    assert "full traceback" in done.stderr and os.listdir(tmp_path / "fastops_errors")
    assert processes_with_env(str(tmp_path / "fastops_errors")) == []


@pytest.mark.slow
def test_demo_trains_times_both_assigners_and_names_the_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "fastops", "demo", "--work-dir", str(tmp_path), "--images", "8",
         "--iters", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["iter"] for r in training_log(tmp_path)] == [1, 2, 3, 4]
    # 2 ranks x 4 iterations x 4 images, every image assigned by both assigners
    assert "assignment over 32 images on 2 ranks" in done.stdout
    assert "identical assignment in 32/32 images" in done.stdout
    assert f"checkpoint: {tmp_path / 'iter_4.pth'}" in done.stdout
    assert os.path.isfile(tmp_path / "iter_4.pth")


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

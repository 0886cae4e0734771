"""scripts/gpu_check.sh and its helpers, checked without a GPU: usage, --dry-run, the exit status
without a CUDA device, the steps' bookkeeping on a stand-in python, and each helper's CPU mode."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
HELPERS = ROOT / "scripts" / "gpu_check"
NO_CUDA_DEVICE = 3
STEPS = ("build", "info", "tests", "simota_sweep", "soft_label_sweep", "sanitizer_memcheck", "sanitizer_initcheck",
         "sanitizer_racecheck", "sanitizer_synccheck", "bench", "bench_report")
NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)

# Stands in for python on a GPU machine: reports an sm_90 GPU to the probe, records every call,
# "builds" in BUILD_SECONDS, fails the test step, prints a table for the report step.
STAND_IN_PYTHON = """#!/usr/bin/env bash
echo "${TORCH_CUDA_ARCH_LIST:-} $*" >> "$CALLS"
case $1 in
  -) cat >/dev/null; printf 'arch=9.0\\nscripts=/nonexistent\\nfact=- GPUs: cuda:0 Stand-in (sm_90)\\n' ;;
  setup.py) sleep "${BUILD_SECONDS:-0}" ;;
  -m) if [ "$2" = pytest ]; then echo "1 failed, 9 passed"; exit 1; fi ;;
  bench/report.py) echo "**a benchmark table**" ;;
esac
"""


def run(*command, env=NO_GPU, timeout=120):
    return subprocess.run([str(part) for part in command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def gpu_check(*args, **env):
    return run("bash", SCRIPT, *args, env=dict(NO_GPU, **env))


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_bash_syntax():
    assert run("bash", "-n", SCRIPT).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    result = run("shellcheck", SCRIPT)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("args", [(), ("a", "b"), ("--bogus", "out")])
def test_usage_errors_exit_2(args):
    result = gpu_check(*args)
    assert result.returncode == 2 and "usage: scripts/gpu_check.sh [--dry-run] OUT_DIR" in result.stderr


def test_help_documents_the_exit_status():
    result = gpu_check("--help")
    assert result.returncode == 0
    assert "3 no CUDA device" in result.stdout and "1 a step failed" in result.stdout


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    result = gpu_check("--dry-run", out)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert listed == list(STEPS)
    assert "FASTOPS_CUDA=1" in result.stdout and "setup.py build_ext --inplace" in result.stdout
    assert "--tool racecheck --error-exitcode 1" in result.stdout
    assert f"--out {out}/bench.json" in result.stdout
    assert not out.exists()


def test_without_a_gpu_says_so_and_exits_3(tmp_path):
    result = gpu_check(tmp_path)
    assert result.returncode == NO_CUDA_DEVICE, result.stdout + result.stderr
    assert "no CUDA device" in result.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert "no CUDA device" in summary and "GPUs: none visible" in summary
    assert not (tmp_path / "build.log").exists()


@pytest.fixture
def stand_in(tmp_path):
    """Environment of gpu_check.sh on a stand-in GPU machine; CALLS collects the commands."""
    python = executable(tmp_path / "python", STAND_IN_PYTHON)
    sanitizer = executable(tmp_path / "compute-sanitizer", '#!/usr/bin/env bash\necho "sanitizer $*" >> "$CALLS"\n')
    return dict(PYTHON=str(python), COMPUTE_SANITIZER=str(sanitizer), CALLS=str(tmp_path / "calls"))


def test_a_failed_step_does_not_stop_the_others(tmp_path, stand_in):
    out = tmp_path / "out"
    result = gpu_check(out, **stand_in)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = (out / "summary.md").read_text()
    assert "- status: FAIL: tests" in summary and "| tests | FAIL: exit status 1 |" in summary
    assert all(f"| {step} | pass |" in summary for step in STEPS if step != "tests")
    assert "**a benchmark table**" in summary and "1 failed, 9 passed" in summary  # the failed log's tail
    calls = Path(stand_in["CALLS"]).read_text()
    assert "9.0 setup.py build_ext --inplace" in calls and calls.count("sanitizer --tool") == 4
    assert all((out / f"{step}.log").exists() for step in STEPS)


def test_a_build_past_the_budget_times_out_and_the_rest_is_skipped(tmp_path, stand_in):
    out = tmp_path / "out"
    result = gpu_check(out, GPU_CHECK_BUDGET="8", BUILD_SECONDS="60", **stand_in)
    assert result.returncode == 1
    summary = (out / "summary.md").read_text()
    assert "| build | FAIL: timed out after" in summary
    assert all(f"| {step} | skipped (the build failed) |" in summary for step in STEPS[1:])


@pytest.mark.parametrize("helper", ["sanitizer_cases.py", "assign_sweep.py", "cuda_bench.py"])
def test_helpers_need_a_gpu_by_default(helper, tmp_path):
    extra = ("--out", tmp_path / "bench.json") if helper == "cuda_bench.py" else ()
    result = run(sys.executable, HELPERS / helper, *extra)
    assert result.returncode == NO_CUDA_DEVICE and "no CUDA device" in result.stderr
    assert not (tmp_path / "bench.json").exists()


def test_cuda_bench_help_lists_its_options():
    result = run(sys.executable, HELPERS / "cuda_bench.py", "--help")
    assert result.returncode == 0
    assert all(option in result.stdout for option in ("--out OUT", "--smoke", "--device {cuda,cpu}"))


def test_sanitizer_cases_run_on_the_cpu_kernels():
    result = run(sys.executable, HELPERS / "sanitizer_cases.py", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "sanitizer cases: done" in result.stdout


@pytest.mark.parametrize("op", ["simota", "soft_label"])
def test_assign_sweep_on_cpu_counts_no_difference(op):
    result = run(sys.executable, HELPERS / "assign_sweep.py", "--op", op, "--device", "cpu", "--images", "40",
                 "--batch", "20")
    assert result.returncode == 0, result.stderr
    assert "gt_inds differ: 0 images, 0 priors" in result.stdout and "result: identical" in result.stdout


def test_cuda_bench_smoke_on_cpu_writes_json_that_report_renders(tmp_path):
    path = tmp_path / "bench.json"
    result = run(sys.executable, HELPERS / "cuda_bench.py", "--smoke", "--device", "cpu", "--out", path)
    assert result.returncode == 0, result.stderr
    data = json.loads(path.read_text())
    assert data["errors"] == [] and "safe_cross_entropy bytes" in data["formulas"]
    groups = {row["group"] for row in data["benchmarks"]}
    assert {"copy", "simota_assign B=2 P=400 G=3 cpu", "mlecc_from_logits N=8 cpu"} <= groups
    assert {f"safe_cross_entropy 256x81 {dtype} cpu eager" for dtype in ("fp16", "bf16", "fp32")} <= groups
    assert all(row["stats"]["rounds"] >= 3 for row in data["benchmarks"])
    cross_entropy = [row["extra_info"] for row in data["benchmarks"] if row["group"].startswith("safe_cross")]
    assert all(0 < info["copy_fraction"] and info["gbps"] > 0 for info in cross_entropy)
    tables = run(sys.executable, ROOT / "bench" / "report.py", path).stdout
    assert "| impl | min (ms) | median (ms) | mean (ms) | × vs stock_torch (mean)" in tables
    assert "of copy)" in tables

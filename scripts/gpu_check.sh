#!/usr/bin/env bash
# Checks fastops on a CUDA machine that has only PyTorch (no OpenMMLab stack, no network) in one
# command, and writes everything under OUT_DIR:
#   build          fastops built in place for the local GPU's arch only (MAX_JOBS = cores)
#   info           python -m fastops info
#   tests          pytest tests -m 'not slow': the CUDA tests (CUDA vs CPU kernel vs reference,
#                  sync-debug mode, CUDA graphs, second device) and the rest; OpenMMLab tests skip,
#                  tests/test_gpu_check.py (this script's own CPU-side checks) is left out
#   simota_sweep   simota_assign CUDA vs CPU, bitwise, on thousands of seeded images
#   soft_label_sweep  dynamic_soft_label_assign CUDA vs CPU, the same way
#   sanitizer_*    compute-sanitizer memcheck, initcheck, racecheck, synccheck over
#                  scripts/gpu_check/sanitizer_cases.py (every kernel, forward and backward)
#   bench          scripts/gpu_check/cuda_bench.py -> OUT_DIR/bench.json
#   bench_report   bench/report.py's tables of bench.json
# Each step runs under its own timeout, cut to what is left of GPU_CHECK_BUDGET, and logs to
# OUT_DIR/<step>.log. A failed step does not stop the later ones, except the build (nothing runs
# without it). OUT_DIR/summary.md (rewritten after every step): device, driver, torch, date, each
# step's result and duration, the benchmark tables, the tail of each failed log.
#
# usage: scripts/gpu_check.sh [--dry-run] OUT_DIR
#   --dry-run   list the steps and their commands; run nothing, write nothing
# environment: PYTHON (default python3), MAX_JOBS (default nproc), GPU_CHECK_BUDGET (seconds for
#   all steps, default 480), CUDA_HOME, COMPUTE_SANITIZER (path of compute-sanitizer)
# exit status: 0 every step passed; 1 a step failed, timed out or was skipped, or torch cannot be
#   imported; 2 usage error; 3 no CUDA device (torch sees no GPU; nothing built or run)
set -euo pipefail

readonly NO_CUDA_DEVICE=3
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
jobs=${MAX_JOBS:-$(nproc)}
budget=${GPU_CHECK_BUDGET:-480}

usage() { sed -n '/^# usage:/,/^set -euo/{/^set/d; s/^# \{0,1\}//; p}' "$0"; }

dry_run=false
out=
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=true ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
    *) if [ -n "$out" ]; then usage >&2; exit 2; fi; out=$arg ;;
  esac
done
if [ -z "$out" ]; then usage >&2; exit 2; fi
case $out in /*) ;; *) out=$PWD/$out ;; esac
log() { printf '[gpu_check] %s\n' "$*"; }
shown() {  # the command line, arguments with spaces quoted
  local arg line=
  for arg; do case $arg in *[[:space:]]*) line+=" '$arg'" ;; *) line+=" $arg" ;; esac; done
  echo "${line# }"
}

cuda_home() {  # the toolkit root: CUDA_HOME, else nvcc's own TOP (nvcc may be a wrapper), else /usr/local/cuda
  if [ -n "${CUDA_HOME:-}" ]; then
    echo "$CUDA_HOME"
  elif command -v nvcc >/dev/null; then
    nvcc --dryrun -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1
  else
    echo /usr/local/cuda
  fi
}

find_sanitizer() {  # COMPUTE_SANITIZER, else on PATH, else in the toolkit
  local candidate
  for candidate in "${COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer || true)" \
    "$toolkit/bin/compute-sanitizer" "$toolkit/compute-sanitizer/compute-sanitizer"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
  echo compute-sanitizer  # not found: its steps fail with "No such file" in their logs
}

# ---------------------------------------------------------------------------------- the steps

step_table=  # markdown rows of the steps run so far
failed=      # names of the steps that did not pass
blocked=     # why the remaining steps cannot run
deadline=$((SECONDS + budget))

step() {  # step NAME TIMEOUT_S COMMAND...: runs COMMAND (or lists it with --dry-run), logs to OUT/NAME.log
  local name=$1 limit=$2 status=0 result start=$SECONDS
  shift 2
  if $dry_run; then
    printf '  %-20s timeout %3ss  %s\n' "$name" "$limit" "$(shown "$@")"
    return
  fi
  local left=$((deadline - SECONDS))
  if [ -n "$blocked" ] || [ "$left" -lt 5 ]; then
    record "$name" "skipped (${blocked:-time budget spent})" 0
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  printf '[gpu_check] %-20s ' "$name"
  timeout --kill-after=15 "$limit" "$@" >"$out/$name.log" 2>&1 || status=$?
  case $status in
    0) result=pass ;;
    124 | 137) result="FAIL: timed out after ${limit}s" ;;
    *) result="FAIL: exit status $status" ;;
  esac
  printf '%s (%ss)\n' "$result" "$((SECONDS - start))"
  record "$name" "$result" "$((SECONDS - start))"
  if [ "$name" = build ] && [ "$status" -ne 0 ]; then blocked="the build failed"; fi
}

record() {  # record NAME RESULT SECONDS
  step_table+="| $1 | $2 | $3 |"$'\n'
  if [ "$2" != pass ]; then failed+=" $1"; fi
  write_summary "running"
}

run_steps() {
  step build 300 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$jobs" FASTOPS_CUDA=1 \
    "$python" setup.py build_ext --inplace
  step info 60 "$python" -m fastops info
  step tests 240 "$python" -m pytest tests -q -rs -m "not slow" --ignore=tests/test_gpu_check.py \
    --junitxml="$out/tests.xml"
  step simota_sweep 120 "$python" scripts/gpu_check/assign_sweep.py --op simota --images 4096
  step soft_label_sweep 90 "$python" scripts/gpu_check/assign_sweep.py --op soft_label --images 2048
  # Caching off, so that every tensor is its own allocation the sanitizer can check. API errors are
  # not reported: torch's own probing calls may fail on purpose, and a failing call of fastops
  # raises in the script anyway. racecheck and synccheck (shared memory, barriers) look at
  # fastops' kernels only (mangled names contain "fastops").
  local tool filter
  for tool in memcheck initcheck racecheck synccheck; do
    filter=()
    case $tool in racecheck | synccheck) filter=(--kernel-name kns=fastops) ;; esac
    step "sanitizer_$tool" 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" \
      --error-exitcode 1 --report-api-errors no "${filter[@]}" "$python" scripts/gpu_check/sanitizer_cases.py
  done
  step bench 240 "$python" scripts/gpu_check/cuda_bench.py --out "$out/bench.json"
  step bench_report 30 "$python" bench/report.py "$out/bench.json"
}

# ---------------------------------------------------------------------------------- the summary

write_summary() {  # write_summary STATUS
  {
    printf '# fastops GPU check\n\n- status: %s\n- started: %s\n%s' "$1" "$started" "$facts"
    printf -- '- driver: %s\n- commit: %s\n- command: %s\n\n' "$driver" "$commit" "$command_line"
    if [ -n "$step_table" ]; then printf '| step | result | seconds |\n|---|---|---:|\n%s\n' "$step_table"; fi
    if [ -s "$out/bench_report.log" ] && [[ " $failed " != *" bench_report "* ]]; then
      printf '## Benchmarks (bench.json)\n\n'
      cat "$out/bench_report.log"
    fi
    local name
    for name in $failed; do
      [ -s "$out/$name.log" ] || continue
      printf '\n## %s: end of %s.log\n\n```\n' "$name" "$name"
      tail -n 25 "$out/$name.log"
      printf '```\n'
    done
  } >"$out/summary.md"
}

probe() {  # arch=, scripts= and fact= lines: the GPU's arch (or none) and what the summary says
  "$python" - <<'EOF'
import platform
import sysconfig

import torch

count = torch.cuda.device_count() if torch.cuda.is_available() else 0
capabilities = [torch.cuda.get_device_capability(i) for i in range(count)]
print("arch=" + ("{}.{}".format(*capabilities[0]) if count else "none"))
print("scripts=" + sysconfig.get_path("scripts"))
gpus = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{major}{minor})"
                 for i, (major, minor) in enumerate(capabilities))
print(f"fact=- GPUs: {gpus or 'none visible'}")
print(f"fact=- torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}")
EOF
}

# ---------------------------------------------------------------------------------- main

cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build
toolkit=$(cuda_home)
sanitizer=$(find_sanitizer)
if $dry_run; then
  arch="<major.minor-of-cuda:0>"
  printf 'gpu_check --dry-run: in %s with PYTHONPATH=%s, logs and summary.md under %s\n' "$repo" "$PYTHONPATH" "$out"
  printf '  %-20s %s\n' probe "$python -c 'torch.cuda.get_device_capability(0)'  (no GPU: exit $NO_CUDA_DEVICE)"
  run_steps
  exit 0
fi

mkdir -p "$out"
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
command_line="scripts/gpu_check.sh $*"
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD 2>/dev/null || commit+=" with uncommitted changes"
else
  commit="unknown (no git checkout)"
fi
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
driver=${driver:-unknown (no nvidia-smi)}
facts=
if ! probed=$(probe 2>"$out/probe.log"); then
  log "$python cannot import torch: see $out/probe.log"
  write_summary "FAIL: $python cannot import torch"
  exit 1
fi
arch=none
while IFS= read -r line; do
  case $line in
    arch=*) arch=${line#arch=} ;;
    scripts=*) PATH="${line#scripts=}:$PATH" ;;  # ninja and friends of this python
    fact=*) facts+="${line#fact=}"$'\n' ;;
  esac
done <<<"$probed"
if [ "$arch" = none ]; then
  log "no CUDA device: torch sees no GPU, so nothing was built or run (exit status $NO_CUDA_DEVICE)"
  write_summary "no CUDA device: nothing built or run"
  exit "$NO_CUDA_DEVICE"
fi
if [ -x "$toolkit/bin/nvcc" ]; then export CUDA_HOME=$toolkit; fi
log "GPU arch $arch, $jobs build jobs, budget ${budget}s, output in $out"
run_steps
if [ -z "$failed" ]; then
  write_summary "PASS: every step passed"
  log "all steps passed; summary: $out/summary.md"
  exit 0
fi
write_summary "FAIL:$failed"
log "failed:$failed; summary: $out/summary.md"
exit 1

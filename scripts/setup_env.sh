#!/usr/bin/env bash
# Sets up a fresh machine end to end: a venv with torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0
# (CPU ops, built once into a cached wheel), mmengine/mmdet/mmpose, and fastops itself
# (with CUDA kernels when nvcc is present). Idempotent: a second run reuses the venv and the wheel.
#
#   FASTOPS_VENV   venv directory            (default: <repo>/.venv)
#   FASTOPS_CACHE  cache for the mmcv wheel  (default: ~/.cache/fastops)
#   MAX_JOBS       parallel compile jobs     (default: nproc)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${FASTOPS_VENV:-$repo/.venv}
cache=${FASTOPS_CACHE:-$HOME/.cache/fastops}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
log() { printf '[setup_env] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv at $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
pip() { "$py" -m pip install -q "$@"; }
have() { "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

have torch 2.14.1 && have torchvision 0.29.1 || { log "installing torch 2.14.1 + torchvision 0.29.1"; pip torch==2.14.1 torchvision==0.29.1; }
pip "setuptools<82" wheel ninja pybind11 "numpy<2.3" packaging

build_mmcv_wheel() {
  local src; src=$(mktemp -d)
  log "building mmcv 2.1.0 (CPU ops) into $cache/wheels; this takes ~15-25 min once"
  "$py" -m pip download -q --no-deps --no-binary :all: mmcv==2.1.0 -d "$src"
  tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
  # torch 2.14's headers need C++20; mmcv's setup.py pins -std=c++14/17.
  sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/mmcv-2.1.0/setup.py"
  MMCV_WITH_OPS=1 FORCE_CUDA=0 "$py" -m pip wheel -q --no-deps --no-build-isolation \
    -w "$cache/wheels" "$src/mmcv-2.1.0"
  rm -rf "$src"
}

pip mmengine==0.10.7
if ! have mmcv 2.1.0; then
  mkdir -p "$cache/wheels"
  ls "$cache"/wheels/mmcv-2.1.0-*.whl >/dev/null 2>&1 || build_mmcv_wheel
  pip "$cache"/wheels/mmcv-2.1.0-*.whl
fi
have mmdet 3.3.0 || pip mmdet==3.3.0
if ! have mmpose 1.3.2; then
  # mmpose pins chumpy (unused, broken on Python 3.11): install it without deps plus its real deps.
  pip json_tricks munkres opencv-python pillow scipy matplotlib cython
  pip --no-deps mmpose==1.3.2
fi
if ! "$py" -c "import xtcocotools.coco" 2>/dev/null; then
  # xtcocotools' wheels are built against numpy 1.x ("numpy.dtype size changed" under numpy 2):
  # build it from source against the venv's numpy.
  log "building xtcocotools against the venv's numpy"
  pip --no-binary xtcocotools --no-build-isolation --force-reinstall --no-deps "xtcocotools>=1.14"
fi

log "building fastops (MAX_JOBS=$MAX_JOBS)"
(cd "$repo" && pip --no-build-isolation -e ".[test,bench]")
"$py" -c "import fastops, mmdet, mmpose.datasets; print('fastops', fastops.__version__, 'cuda_built', fastops.cuda_built())"
log "done: activate with 'source $venv/bin/activate'"

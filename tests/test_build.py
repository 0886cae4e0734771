"""Build and packaging contract: build info, the no-torch message, the torch-version guard."""
import os
import subprocess
import sys

import torch

import fastops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_matches_runtime():
    assert fastops._C.torch_version_built().split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(fastops.cuda_built(), bool)
    assert (fastops.cuda_arches() != "") == fastops.cuda_built()


def test_setup_without_torch_says_what_to_do():
    # Simulates pip's isolated build environment, where torch cannot be imported.
    code = "import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; exec(open('setup.py').read())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install torch==2.14.1" in result.stderr and "then run `pip install -e .`" in result.stderr


def test_bench_command_runs_the_named_files_only(monkeypatch):
    """`python -m fastops bench FILE` times FILE alone; without a path, the whole bench/ folder."""
    from fastops import __main__ as cli
    commands = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: commands.append(cmd) or 0)
    monkeypatch.chdir(ROOT)
    cli.run_benchmarks(["bench/bench_simota_assign.py", "-k", "fastops", "--benchmark-json=out.json"])
    cli.run_benchmarks(["-k", "sigmoid"])
    named, everything = commands
    assert os.path.join(ROOT, "bench") not in named and "bench/bench_simota_assign.py" in named
    assert os.path.join(ROOT, "bench") in everything

"""`pip install -e .` and `pip install .`, typed as they are, build against the torch of the
environment pip installs into (build_backend/fastops_build.py), and without torch the error names
the fix. The builds go into a throwaway venv with torch 2.13.0 (the CPU wheel on this machine's
disk), a torch other than the project venv's, so the build's torch version shows which one it used.
They compile the CPU kernels only (FASTOPS_CUDA=0), from a copy of the tree: an editable install
writes the extension into its source tree."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_INPUTS = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "build_backend", "csrc", "fastops")
TORCH = "torch==2.13.0"
BUILD_ENV = dict(os.environ, FASTOPS_CUDA="0", MAX_JOBS="2", CFLAGS="-g0")  # -g0: half the compile time
BUILD_TIMEOUT_S = 1200


def load_backend():
    spec = importlib.util.spec_from_file_location(
        "fastops_build", os.path.join(ROOT, "build_backend", "fastops_build.py"))
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    return backend


def copy_source_tree(dst):
    dst.mkdir()
    for name in BUILD_INPUTS:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def run(command, cwd, timeout=BUILD_TIMEOUT_S):
    """(exit code, stdout and stderr together)."""
    result = subprocess.run(command, cwd=cwd, env=BUILD_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return result.returncode, result.stdout


def pip(venv, *args, cwd):
    return run([str(venv / "bin" / "pip"), *args], cwd)


def pip_ok(venv, *args, cwd):
    code, output = pip(venv, *args, cwd=cwd)
    assert code == 0, output[-4000:]
    return output


def make_venv(path):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path


def fastops_build_info(venv, cwd):
    """(where fastops imports from, the torch version it was built against, the venv's torch)."""
    code = ("import fastops, torch; "
            "print(fastops.__file__); print(fastops._C.torch_version_built()); print(torch.__version__)")
    status, output = run([str(venv / "bin" / "python"), "-c", code], cwd, timeout=300)
    assert status == 0, output[-4000:]
    return output.splitlines()[-3:]


@pytest.fixture(scope="module")
def torch_venv(tmp_path_factory):
    venv = make_venv(tmp_path_factory.mktemp("torch_venv") / "venv")
    pip_ok(venv, "install", TORCH, "setuptools>=64,<82", cwd=venv)  # setuptools: for --no-build-isolation
    yield venv
    shutil.rmtree(venv)  # ~1 GB


@pytest.mark.slow
def test_editable_install_as_typed_builds_against_the_venvs_torch(torch_venv, tmp_path):
    tree = copy_source_tree(tmp_path / "src")
    pip_ok(torch_venv, "install", "-e", ".", cwd=tree)
    location, built, torch_version = fastops_build_info(torch_venv, cwd=tmp_path)
    assert built == torch_version == "2.13.0+cpu"
    assert location.startswith(str(tree))


@pytest.mark.slow
def test_wheel_install_as_typed_builds_against_the_venvs_torch(torch_venv, tmp_path):
    tree = copy_source_tree(tmp_path / "src")
    pip_ok(torch_venv, "install", ".", cwd=tree)
    location, built, torch_version = fastops_build_info(torch_venv, cwd=tmp_path)
    assert built == torch_version == "2.13.0+cpu"
    assert location.startswith(str(torch_venv))


def test_no_build_isolation_still_works(torch_venv, tmp_path):
    # Up to the metadata, which runs setup.py: past it the build is the one above, and
    # scripts/setup_env.sh builds the project venv with --no-build-isolation.
    tree = copy_source_tree(tmp_path / "src")
    output = pip_ok(torch_venv, "install", "--dry-run", "--no-build-isolation", "-e", ".", cwd=tree)
    assert "Installing build dependencies" not in output
    assert "Would install" in output and "fastops-0.1.0" in output


def test_without_torch_the_error_names_the_fix(tmp_path):
    venv = make_venv(tmp_path / "venv")
    tree = copy_source_tree(tmp_path / "src")
    code, output = pip(venv, "install", "-e", ".", cwd=tree)
    assert code != 0
    assert "install torch there first (e.g. `pip install torch==2.14.1`)" in output
    assert "then run `pip install -e .` again" in output


def test_target_lookup_ignores_pips_isolation(tmp_path, monkeypatch):
    # pip hides the target's site-packages behind PYTHONPATH; a torch found there is not the target's.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    dirs = load_backend().target_module_dirs(["torch", "typing_extensions", "no_such_module"])
    assert dirs["torch"] == os.path.dirname(os.path.dirname(torch.__file__))
    assert set(dirs) == {"torch", "typing_extensions"}


def test_target_finder_serves_only_its_modules(tmp_path):
    (tmp_path / "only_this").mkdir()
    (tmp_path / "only_this" / "__init__.py").write_text("")
    (tmp_path / "not_this.py").write_text("")
    finder = load_backend().TargetModuleFinder({"only_this": str(tmp_path)})
    assert finder.find_spec("only_this").origin == str(tmp_path / "only_this" / "__init__.py")
    assert finder.find_spec("not_this") is None


def call_hook(tree, hook, *args):
    """A hook of the in-tree backend, each in a fresh interpreter, as pip calls them."""
    code = ("import json, sys; sys.path.insert(0, 'build_backend'); import fastops_build; "
            f"print(json.dumps(fastops_build.{hook}(*sys.argv[1:])))")
    status, output = run([sys.executable, "-c", code, *args], tree, timeout=300)
    assert status == 0, output[-4000:]
    return json.loads(output.splitlines()[-1])


def test_backend_asks_for_no_torch(tmp_path):
    tree = copy_source_tree(tmp_path / "src")
    for kind in ("wheel", "editable", "sdist"):
        requires = call_hook(tree, f"get_requires_for_build_{kind}")
        assert not [r for r in requires if r.lower().startswith("torch")]


def test_sdist_carries_the_backend_and_the_headers(tmp_path):
    sdist = call_hook(copy_source_tree(tmp_path / "src"), "build_sdist", str(tmp_path))
    with tarfile.open(tmp_path / sdist) as tar:
        names = set(tar.getnames())
    assert {"fastops-0.1.0/build_backend/fastops_build.py", "fastops-0.1.0/csrc/common/simota_math.h",
            "fastops-0.1.0/csrc/cuda/simota_assign_kernel.cu"} <= names

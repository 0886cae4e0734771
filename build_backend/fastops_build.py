"""PEP 517 backend: setuptools' build_meta, building against the torch of the environment pip
installs into.

pip's isolated build environment hides the installed torch, and a torch among the build
requirements would be a second one, downloaded and built against, whose binary then fails to
import beside the installed one. So torch is no build requirement; when it is not importable,
each hook first makes the target environment's torch importable. pip runs the backend with the
target interpreter itself and hides its site-packages only through PYTHONPATH and
PYTHONNOUSERSITE (pip 23.2 to 26.2), so that interpreter, asked without them, tells where its
torch is. With --no-build-isolation torch is importable and nothing changes. Frontends that run
the backend in a venv of their own (pip's opt-in `--use-feature=venv-isolation`, `python -m
build`) do not tell the target; there setup.py's error names --no-build-isolation.
"""
import functools
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys

from setuptools import build_meta

# The only modules taken from the target environment, each as a last resort (a package of the
# build environment of the same name wins): the torch wheel's own packages, and what
# `import torch, torch.utils.cpp_extension` imports besides (torch 2.13-2.14; numpy, sympy, tqdm
# and cuda.bindings are optional or imported later there). setuptools always comes from the build
# environment.
TARGET_MODULES = ("torch", "torchgen", "typing_extensions", "filelock")

# Variables through which pip isolates the interpreter from its own site-packages.
PIP_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE")

_FIND_MODULES = """
import importlib.util, json, os, sys
found = {}
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin is not None:
        package = spec.submodule_search_locations is not None
        found[name] = os.path.dirname(os.path.dirname(spec.origin) if package else spec.origin)
print(json.dumps(found))
"""


def target_module_dirs(names):
    """{name: the sys.path entry holding it} for the names the target interpreter can import."""
    env = {k: v for k, v in os.environ.items() if k not in PIP_ISOLATION_VARIABLES}
    output = subprocess.run([sys.executable, "-c", _FIND_MODULES, *names], env=env,
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output)


class TargetModuleFinder:
    """Imports the given top-level modules (and so their submodules) from the given directories."""

    def __init__(self, dirs):
        self.dirs = dirs

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.dirs:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.dirs[fullname]])


def expose_target_torch():
    if importlib.util.find_spec("torch") is not None:
        return
    dirs = target_module_dirs(TARGET_MODULES)
    if "torch" in dirs:  # else setup.py says how to install torch
        sys.meta_path.append(TargetModuleFinder(dirs))


def _with_target_torch(hook):
    @functools.wraps(hook)
    def wrapped(*args, **kwargs):
        expose_target_torch()
        return hook(*args, **kwargs)

    return wrapped


get_requires_for_build_wheel = _with_target_torch(build_meta.get_requires_for_build_wheel)
get_requires_for_build_editable = _with_target_torch(build_meta.get_requires_for_build_editable)
get_requires_for_build_sdist = _with_target_torch(build_meta.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _with_target_torch(build_meta.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _with_target_torch(build_meta.prepare_metadata_for_build_editable)
build_wheel = _with_target_torch(build_meta.build_wheel)
build_editable = _with_target_torch(build_meta.build_editable)
build_sdist = _with_target_torch(build_meta.build_sdist)

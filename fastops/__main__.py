"""``python -m fastops {train,demo,synth,bench,doctor,info}`` (also the ``fastops`` console script)."""
import os
import subprocess
import sys

USAGE = """usage: python -m fastops COMMAND [ARGS]

commands:
  train   train an mmdet/mmpose config on N processes and M machines (torchrun or Slurm)
  demo    synthetic keypoints + 2-process RTMO smoke training, fastops vs stock assignment time
  synth   write a synthetic COCO-format dataset (keypoints or detection)
  bench   run the benchmarks (pytest bench/ --benchmark-only)
  doctor  check a training config for known OpenMMLab pitfalls (see README)
  info    the build (torch, CPU instruction set, CUDA arches) and, per GPU, whether it has a kernel

`python -m fastops COMMAND --help` shows a command's options."""


def run_benchmarks(argv) -> int:
    """Runs pytest-benchmark on the repository's bench/ folder, or on the bench files named in the
    arguments; the other arguments go to pytest."""
    bench_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    if not os.path.isdir(bench_dir):
        print(f"error: no benchmark folder at {bench_dir} (benchmarks ship with the source "
              "checkout, not the installed package)", file=sys.stderr)
        return 2
    named = [arg for arg in argv if not arg.startswith("-") and os.path.exists(arg)]
    cmd = [sys.executable, "-m", "pytest", *([] if named else [bench_dir]), "--benchmark-only", "-q",
           "--benchmark-group-by=group", "--benchmark-columns=min,median,mean,stddev,rounds",
           *argv]
    return subprocess.call(cmd)


def dispatch(command: str, argv) -> int:
    if command == "train":
        from .train import main as command_main
    elif command == "demo":
        from .demo import main as command_main
    elif command == "synth":
        from .synth import main as command_main
    elif command == "doctor":
        from .doctor import main as command_main
    elif command == "info":
        from .info import main as command_main
    elif command == "bench":
        command_main = run_benchmarks
    else:
        print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command_main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    return dispatch(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())

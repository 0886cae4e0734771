"""Scaling plots from pytest-benchmark JSON: mean time vs problem size, one line per series.

Benchmarks opt in by setting extra_info op, series, size and size_label.

    python bench/plot.py out.json [more.json ...] --out-dir bench
"""
import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def collect(paths):
    """{op: {series: [(size, mean_ms)]}} and each op's size label."""
    curves, labels = defaultdict(lambda: defaultdict(list)), {}
    for path in paths:
        with open(path) as f:
            for bench in json.load(f)["benchmarks"]:
                info = bench.get("extra_info", {})
                if "size" not in info:
                    continue
                curves[info["op"]][info["series"]].append((info["size"], bench["stats"]["mean"] * 1e3))
                labels[info["op"]] = info["size_label"]
    return curves, labels


def plot(op, series, size_label, out_dir):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel=size_label, ylabel="mean time (ms)", title=op)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = f"{out_dir}/scaling_{op}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", nargs="+")
    parser.add_argument("--out-dir", default="bench")
    args = parser.parse_args()
    curves, labels = collect(args.json)
    for op, series in curves.items():
        print(plot(op, series, labels[op], args.out_dir))


if __name__ == "__main__":
    main()

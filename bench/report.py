"""Renders a pytest-benchmark JSON into markdown tables: per group, time, ratio, peak memory.

    python bench/report.py out.json > table.md

Times are per call: min, median and mean over the rounds. Ratios are of means, against the group's
stock implementation (mmdet, mmpose or stock_*). GB/s = extra_info bytes / mean time, with its share
of the device copy bandwidth where the row records one (scripts/gpu_check/cuda_bench.py).
"""
import argparse
import json
from collections import defaultdict


STOCK_NAMES = ("mmdet", "mmpose")


def impl_name(bench):
    params = bench.get("params") or {}
    return (bench.get("extra_info", {}).get("impl") or params.get("impl") or params.get("variant")
            or bench["name"].split("[")[0])


def stock_of(impls):
    """The stock implementation a group's ratios are taken against."""
    return next((name for name in impls if name in STOCK_NAMES or name.startswith("stock")), None)


def render(data):
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    lines = []
    for group, benches in sorted(groups.items()):
        by_impl = {impl_name(b): b for b in benches}
        baseline = stock_of(by_impl)
        base = by_impl.get(baseline)
        ratio_header = f"× vs {baseline} (mean)" if base else "×"
        lines += [f"**{group}**", "",
                  f"| impl | min (ms) | median (ms) | mean (ms) | {ratio_header} | extra peak mem (MiB) | GB/s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, bench in sorted(by_impl.items(), key=lambda kv: kv[1]["stats"]["mean"]):
            stats, extra = bench["stats"], bench.get("extra_info", {})
            ratio = f"{base['stats']['mean'] / stats['mean']:.2f}" if base else "n/a"
            times = " | ".join(f"{stats[key] * 1e3:.2f}" for key in ("min", "median", "mean"))
            lines.append(f"| {name} | {times} | {ratio} | {extra.get('peak_mib', '')} | {bandwidth(stats, extra)} |")
        lines.append("")
    return "\n".join(lines)


def bandwidth(stats, extra):
    if "bytes" not in extra:
        return ""
    gbps = f"{extra['bytes'] / stats['mean'] / 1e9:.1f}"
    return f"{gbps} ({extra['copy_fraction']:.0%} of copy)" if "copy_fraction" in extra else gbps


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    machine = data["machine_info"]
    gpu = f"{machine['gpu']}; " if "gpu" in machine else ""
    print(f"machine: {gpu}{machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} "
          f"cores; commit {data.get('commit_info', {}).get('id', '?')[:10]}\n")
    print(render(data))


if __name__ == "__main__":
    main()

"""Renders a pytest-benchmark JSON into markdown tables: per group, time, ratio, peak memory.

    python bench/report.py out.json > table.md

Times are per call: min, median and mean over the rounds. Ratios are of means and of medians, against
the group's stock implementation (mmdet, mmpose or stock_*), and of medians against plain torch
where the group has a `torch` row. GB/s = extra_info bytes / mean time, with its share of the device
copy bandwidth where the row records one (scripts/gpu_check/cuda_bench.py). Where the run holds a
`copy` row (bench_safe_cross_entropy.py), each row with bytes also gets its bound: bytes / the copy
bandwidth measured in that run (bytes / median time of the copy).
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


def copy_bandwidth(data):
    """Bytes per second of the run's `copy` row (median), or None."""
    copies = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("op") == "copy"]
    return copies[0]["extra_info"]["bytes"] / copies[0]["stats"]["median"] if copies else None


def render(data):
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    copy_bps = copy_bandwidth(data)
    lines = []
    for group, benches in sorted(groups.items()):
        by_impl = {impl_name(b): b for b in benches}
        baseline = stock_of(by_impl)
        base, torch_row = by_impl.get(baseline), by_impl.get("torch")
        ratio_header = (f"× vs {baseline} (mean) | × vs {baseline} (median)" if base else "× | ×")
        torch_header = " | × vs torch (median)" if torch_row else ""
        with_bound = copy_bps is not None and any("bytes" in b.get("extra_info", {}) for b in benches)
        bound_header = " | bound (ms)" if with_bound else ""
        lines += [f"**{group}**", "",
                  f"| impl | min (ms) | median (ms) | mean (ms) | {ratio_header}{torch_header} "
                  f"| extra peak mem (MiB) | GB/s{bound_header} |",
                  "|---|" + "---:|" * (7 + bool(torch_row) + with_bound)]
        for name, bench in sorted(by_impl.items(), key=lambda kv: kv[1]["stats"]["mean"]):
            stats, extra = bench["stats"], bench.get("extra_info", {})
            ratios = (f"{base['stats']['mean'] / stats['mean']:.2f} | {base['stats']['median'] / stats['median']:.2f}"
                      if base else "n/a | n/a")
            if torch_row:
                ratios += f" | {torch_row['stats']['median'] / stats['median']:.2f}"
            times = " | ".join(f"{stats[key] * 1e3:.2f}" for key in ("min", "median", "mean"))
            bound = ""
            if with_bound:
                bound = f" | {extra['bytes'] / copy_bps * 1e3:.2f}" if "bytes" in extra else " | "
            lines.append(f"| {name} | {times} | {ratios} | {extra.get('peak_mib', '')} | "
                         f"{bandwidth(stats, extra)}{bound} |")
        lines.append("")
    if copy_bps is not None:
        lines.append(f"Copy bandwidth of this run: {copy_bps / 1e9:.1f} GB/s (bytes read + written / median).")
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

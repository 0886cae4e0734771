"""Renders a pytest-benchmark JSON into markdown tables: per group, time, ratio, peak memory.

    python bench/report.py out.json > table.md

Ratios are against the group's stock implementation (mmdet, mmpose or stock_*).
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
        lines += [f"**{group}**", "", f"| impl | mean (ms) | median (ms) | × vs {baseline} (mean) | extra peak mem (MiB) | GB/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, bench in sorted(by_impl.items(), key=lambda kv: kv[1]["stats"]["mean"]):
            mean = bench["stats"]["mean"]
            ratio = f"{base['stats']['mean'] / mean:.2f}" if base else "n/a"
            extra = bench.get("extra_info", {})
            gbps = f"{extra['bytes'] / mean / 1e9:.1f}" if "bytes" in extra else ""
            median = bench["stats"]["median"]
            lines.append(f"| {name} | {mean * 1e3:.2f} | {median * 1e3:.2f} | {ratio} | {extra.get('peak_mib', '')} | {gbps} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} cores; "
          f"commit {data.get('commit_info', {}).get('id', '?')[:10]}\n")
    print(render(data))


if __name__ == "__main__":
    main()

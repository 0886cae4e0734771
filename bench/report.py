"""Renders a pytest-benchmark JSON into markdown tables: per group, time, ratio, peak memory.

    python bench/report.py bench/ce.json [--baseline mmdet] > table.md
"""
import argparse
import json
from collections import defaultdict


def impl_name(bench):
    return bench.get("extra_info", {}).get("impl") or bench["params"].get("impl") or bench["name"].split("[")[0]


def render(data, baseline):
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    lines = []
    for group, benches in sorted(groups.items()):
        by_impl = {impl_name(b): b for b in benches}
        base = by_impl.get(baseline)
        lines += [f"**{group}**", "", f"| impl | mean (ms) | × vs {baseline} | peak mem (MiB) | GB/s |",
                  "|---|---:|---:|---:|---:|"]
        for name, bench in sorted(by_impl.items(), key=lambda kv: kv[1]["stats"]["mean"]):
            mean = bench["stats"]["mean"]
            ratio = f"{base['stats']['mean'] / mean:.2f}" if base else "n/a"
            extra = bench.get("extra_info", {})
            gbps = f"{extra['bytes'] / mean / 1e9:.1f}" if "bytes" in extra else ""
            lines.append(f"| {name} | {mean * 1e3:.2f} | {ratio} | {extra.get('peak_mib', '')} | {gbps} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json")
    parser.add_argument("--baseline", default="mmdet")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} cores; "
          f"commit {data.get('commit_info', {}).get('id', '?')[:10]}\n")
    print(render(data, args.baseline))


if __name__ == "__main__":
    main()

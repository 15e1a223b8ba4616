#!/usr/bin/env python3
"""Plot tagcast-bench results: throughput and p99 latency against subscribers.

Reads one or more JSON-lines files (one result object per line, with at least
`server`, `scenario`, `subscribers`, `deliveries_per_sec` and `latency_p99_us`)
and writes a PNG with two panels, one line per server, for one scenario:

    python3 bench/plot.py results.jsonl [more.jsonl ...] -o bench/fanout.png [--scenario fanout]

Several rows for the same server and subscriber count (repeated runs) are
reduced to their median. Needs matplotlib (`python3 -m pip install matplotlib`).
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

REQUIRED = ("server", "scenario", "subscribers", "deliveries_per_sec", "latency_p99_us")


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{number}: not JSON: {e}")
                missing = [k for k in REQUIRED if k not in row]
                if missing:
                    sys.exit(f"{path}:{number}: missing {', '.join(missing)}")
                rows.append(row)
    return rows


def series(rows, scenario):
    """{server: sorted [(subscribers, deliveries/s, p99 ms)]}, medians of repeated runs."""
    groups = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for row in rows:
        if row["scenario"] != scenario:
            continue
        rates, p99s = groups[row["server"]][int(row["subscribers"])]
        if row["deliveries_per_sec"] is not None:
            rates.append(float(row["deliveries_per_sec"]))
        if row["latency_p99_us"] is not None:
            p99s.append(float(row["latency_p99_us"]) / 1000.0)
    result = {}
    for server, by_subs in groups.items():
        result[server] = [
            (
                subs,
                statistics.median(rates) if rates else None,
                statistics.median(p99s) if p99s else None,
            )
            for subs, (rates, p99s) in sorted(by_subs.items())
        ]
    return result


def plot(data, scenario, output):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for server in sorted(data):
        points = data[server]
        for axis, column in ((left, 1), (right, 2)):
            xs = [p[0] for p in points if p[column] is not None]
            ys = [p[column] for p in points if p[column] is not None]
            axis.plot(xs, ys, marker="o", label=server)
    left.set_title("Throughput")
    left.set_ylabel("deliveries / s")
    right.set_title("p99 latency")
    right.set_ylabel("p99 latency (ms)")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("subscribers")
        axis.set_ylim(bottom=0)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    left.yaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
    )
    fig.suptitle(f"tagcast-bench: {scenario}")
    fig.tight_layout()
    fig.savefig(output, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON-lines result files")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--scenario", default="fanout", help="scenario to plot (default: fanout)")
    args = parser.parse_args()

    data = series(read_rows(args.files), args.scenario)
    if not data:
        sys.exit(f"no rows with scenario {args.scenario!r} in {', '.join(args.files)}")
    plot(data, args.scenario, args.output)
    print(f"wrote {args.output} ({', '.join(sorted(data))})", file=sys.stderr)


if __name__ == "__main__":
    main()

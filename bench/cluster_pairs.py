#!/usr/bin/env python3
"""Row 11 of BENCHMARKS.md as many times as asked, with where the CPU went: each pair is a
lone node, then two nodes on one redis-server (publisher on node A, subscribers on node B),
under the same fan-out load. Prints one line per run and the median ratio at the end.

    cargo build --release -p tagcast-server -p tagcast-bench
    python3 bench/cluster_pairs.py --pairs 10

CPU is read from /proc for each process (node A, node B, redis-server) and from the load
generator's rusage, in seconds over the run. Every delivery is counted: the last line says how
many were lost, duplicated or reordered over all the runs.

`--window-on ack` paces the publisher by node A's acknowledgements instead of by complete
deliveries (requests carry an `id` on an envelope-mode connection), as a backend that waits for
each ack does: node B's deliveries then no longer hold the publisher back.

`--fifo a,redis` (a diagnostic, as root: it runs `chrt`) gives every thread of the named
cluster processes (a, b, redis) the real-time policy SCHED_FIFO before the cluster's run, so
that they take a core as soon as they wake instead of waiting for the running tasks' time
slices: it shows how much of the gap to the lone node is those processes waiting for a core.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess

import compare

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measured(server, procs, *args):
    """Runs the fan-out against `server`; adds the CPU each of `procs` (name: Popen) and the
    load generator spent."""
    before = {name: cpu_secs(p.pid) for name, p in procs.items()}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = compare.bench(server, "fanout", *args, echo=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: round(cpu_secs(p.pid) - before[name], 2) for name, p in procs.items()}
    cpu["load generator"] = round(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime, 2)
    wrong = sum(result.get(k, 0) for k in ("lost", "duplicates", "reordered"))
    return {"deliveries_per_sec": result["deliveries_per_sec"], "cpu_secs": cpu,
            "lost_duplicated_reordered": wrong}


def fifo(pid):
    """Every thread of `pid` to SCHED_FIFO (priority 10)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        subprocess.run(["chrt", "--fifo", "--pid", "10", tid], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--serve", nargs="*", default=[], help="extra `tagcast serve` arguments, e.g. --history 0")
    parser.add_argument("--window-on", choices=("delivered", "ack"), default="delivered",
                        help="what frees a slot of the publisher's window: every subscriber got "
                        "the request (row 11), or node A acknowledged it")
    parser.add_argument("--fifo", default="", help="cluster processes to run as SCHED_FIFO "
                        "(a diagnostic, needs root): a comma-separated list of a, b, redis")
    args = parser.parse_args()
    fifo_names = [n for n in args.fifo.split(",") if n]
    if any(n not in ("a", "b", "redis") for n in fifo_names):
        parser.error("--fifo takes a comma-separated list of a, b and redis")
    load = ("--subscribers", 1000, "--groups", 1, "--in-flight", args.in_flight, "--messages", args.messages,
            "--window-on", args.window_on)
    ratios, wrong = [], 0
    for _ in range(args.pairs):
        with compare.Server("tagcast", args.serve) as lone:
            alone = measured(lone, {"node": lone.proc}, *load)
        with compare.redis_cluster(2, args.serve) as ((a, b), redis):
            procs = {"node A": a.proc, "node B": b.proc, "redis-server": redis}
            for name in fifo_names:
                fifo({"a": a.proc, "b": b.proc, "redis": redis}[name].pid)
            cluster = measured(b, procs, "--publish-url", f"ws://127.0.0.1:{a.port}", *load)
        ratios.append(cluster["deliveries_per_sec"] / alone["deliveries_per_sec"])
        wrong += alone["lost_duplicated_reordered"] + cluster["lost_duplicated_reordered"]
        print(json.dumps({"lone": alone, "cluster": cluster, "ratio": round(ratios[-1], 3)}), flush=True)
    print(json.dumps({"pairs": len(ratios), "window_on": args.window_on, "fifo": fifo_names, "median_ratio": round(statistics.median(ratios), 3),
                      "ratios": [round(r, 3) for r in ratios], "lost_duplicated_reordered": wrong}))


if __name__ == "__main__":
    main()

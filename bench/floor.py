#!/usr/bin/env python3
"""Scenario 3's floor: Tagcast's server CPU per delivery against tagcast-floor's (one write
system call per delivery into the same 10,000 sockets, nothing else), in paired runs.

    cargo build --release -p tagcast-server -p tagcast-bench
    python3 bench/floor.py [--runs 5] [--out bench/results-floor.jsonl]

Each pair runs Tagcast then the floor back to back under the same load (10,000 subscribers in
100 groups, one request in flight, 3,000 requests of 64 bytes); the ratio of a pair is
Tagcast's CPU per delivery over the floor's, and the median of the pairs is reported.

With `--compare uring` (issue 16) a pair is the floor's plain mode then its `--io-uring` mode
(one io_uring_enter per delivery instead of one write per recipient), written to
bench/results-floor-uring.jsonl; the ratio is io_uring's CPU per delivery over the plain one's.

    cargo build --release -p tagcast-bench --features io-uring
    python3 bench/floor.py --compare uring

With `--compare server-uring` a pair is Tagcast built without then with its `io-uring` feature
(on by default: a delivery's direct writes in one io_uring_enter), written to
bench/results-server-uring.jsonl; the ratio is the feature's CPU per delivery over the plain
build's. The build without it is the binary target/release/tagcast-plain:

    cargo build --release -p tagcast-server --no-default-features
    cp target/release/tagcast target/release/tagcast-plain
    cargo build --release -p tagcast-server -p tagcast-bench
    python3 bench/floor.py --compare server-uring
"""
import argparse
import json
import os
import statistics
import subprocess
import time

from tls import server  # starts a server, returns it with its port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
SERVERS = {
    "tagcast": [os.path.join(RELEASE, "tagcast"), "serve", "--host", "127.0.0.1", "--port", "0"],
    "floor": [os.path.join(RELEASE, "tagcast-floor"), "--host", "127.0.0.1", "--port", "0"],
    "floor-uring": [os.path.join(RELEASE, "tagcast-floor"), "--host", "127.0.0.1", "--port", "0",
                    "--io-uring"],
    "tagcast-plain": [os.path.join(RELEASE, "tagcast-plain"), "serve", "--host", "127.0.0.1",
                      "--port", "0"],
}
# What each comparison pairs: (measured, reference); the ratio is measured over reference.
COMPARE = {"tagcast": ("tagcast", "floor"), "uring": ("floor-uring", "floor"),
           "server-uring": ("tagcast", "tagcast-plain")}
OUT = {"tagcast": "results-floor.jsonl", "uring": "results-floor-uring.jsonl",
       "server-uring": "results-server-uring.jsonl"}
LOAD = ["--subscribers", "10000", "--groups", "100", "--in-flight", "1", "--messages", "3000",
        "--payload", "64"]


def one(kind):
    proc, port = server(SERVERS[kind])
    try:
        out = subprocess.run([os.path.join(RELEASE, "tagcast-bench"), "fanout", "--url",
                              f"ws://127.0.0.1:{port}", "--server", kind, "--server-pid",
                              str(proc.pid), *LOAD], check=True, capture_output=True, text=True,
                             timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", choices=sorted(COMPARE), default="tagcast",
                        help="tagcast: Tagcast against the floor; uring: the floor's io_uring "
                             "mode against its plain one; server-uring: Tagcast's io-uring "
                             "build against its plain one")
    parser.add_argument("--out")
    opts = parser.parse_args()
    measured, reference = COMPARE[opts.compare]
    out = opts.out or os.path.join(ROOT, "bench", OUT[opts.compare])
    ratios, rates = [], {measured: [], reference: []}
    # Tagcast is run before the floor; a plain build or mode before its io_uring one.
    order = (measured, reference) if opts.compare == "tagcast" else (reference, measured)
    with open(out, "w") as f:
        for run in range(opts.runs):
            pair = {kind: one(kind) for kind in order}
            for kind, result in pair.items():
                result["run"] = run
                f.write(json.dumps(result) + "\n")
                rates[kind].append(result["deliveries_per_sec"])
            m, r = (pair[k]["server_cpu_us_per_delivery"] for k in (measured, reference))
            ratios.append(m / r)
            lost = sum(pair[k]["lost"] + pair[k]["duplicates"] for k in pair)
            print(f"run {run}: {measured} {m} us/delivery ({pair[measured]['deliveries_per_sec']:.0f}/s), "
                  f"{reference} {r} us/delivery ({pair[reference]['deliveries_per_sec']:.0f}/s): "
                  f"{m / r:.2f}x, {lost} lost or duplicated", flush=True)
    print(f"median of {len(ratios)} pairs: {measured}'s CPU per delivery is "
          f"{statistics.median(ratios):.2f}x {reference}'s (min {min(ratios):.2f}x, "
          f"max {max(ratios):.2f}x); median deliveries/s: {measured} "
          f"{statistics.median(rates[measured]):.0f}, {reference} "
          f"{statistics.median(rates[reference]):.0f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Scenario 3's floor: Tagcast's server CPU per delivery against tagcast-floor's (one write
system call per delivery into the same 10,000 sockets, nothing else), in paired runs.

    cargo build --release -p tagcast-server -p tagcast-bench
    python3 bench/floor.py [--runs 5] [--out bench/results-floor.jsonl]

Each pair runs Tagcast then the floor back to back under the same load (10,000 subscribers in
100 groups, one request in flight, 3,000 requests of 64 bytes); the ratio of a pair is
Tagcast's CPU per delivery over the floor's, and the median of the pairs is reported.
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
}
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
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results-floor.jsonl"))
    opts = parser.parse_args()
    ratios = []
    with open(opts.out, "w") as f:
        for run in range(opts.runs):
            pair = {kind: one(kind) for kind in ("tagcast", "floor")}
            for result in pair.values():
                result["run"] = run
                f.write(json.dumps(result) + "\n")
            t, fl = (pair[k]["server_cpu_us_per_delivery"] for k in ("tagcast", "floor"))
            ratios.append(t / fl)
            lost = sum(pair[k]["lost"] + pair[k]["duplicates"] for k in pair)
            print(f"run {run}: tagcast {t} us/delivery ({pair['tagcast']['deliveries_per_sec']:.0f}/s), "
                  f"floor {fl} us/delivery ({pair['floor']['deliveries_per_sec']:.0f}/s): "
                  f"{t / fl:.2f}x, {lost} lost or duplicated", flush=True)
    print(f"median of {len(ratios)} pairs: Tagcast's CPU per delivery is "
          f"{statistics.median(ratios):.2f}x the floor's (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""TLS against plain TCP (issue 6/7): burst fan-out and idle memory per connection, Tagcast over
wss:// against its own plain ws://, and against Node's `ws` behind https with the same
certificate (`tagcast dev-cert`).

    cargo build --release -p tagcast-server -p tagcast-bench
    (cd bench/baselines && npm ci)
    python3 bench/tls.py [--out bench/results-tls.jsonl]
"""
import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TAGCAST = os.path.join(RELEASE, "tagcast")
BENCH = os.path.join(RELEASE, "tagcast-bench")
BASELINE = os.path.join(ROOT, "bench", "baselines", "ws-server.mjs")
BURST = ["fanout", "--subscribers", "1000", "--groups", "1", "--payload", "64", "--in-flight", "16",
         "--messages", "3000"]
IDLE = ["idle", "--connections", "10000"]


def server(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(50):
        line = proc.stderr.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line) if "listening on" in line else None
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start")


def run(label, cmd, scheme, cert, load):
    proc, port = server(cmd)
    try:
        out = subprocess.run([BENCH, *load, "--url", f"{scheme}://localhost:{port}", "--server", label,
                              "--server-pid", str(proc.pid), "--ca-cert", cert],
                             check=True, capture_output=True, text=True, timeout=600)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["transport"] = scheme
        print(json.dumps(result), flush=True)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results-tls.jsonl"))
    opts = parser.parse_args()
    certs = tempfile.mkdtemp(prefix="tagcast-tls-")
    subprocess.run([TAGCAST, "dev-cert", "--host", "localhost", "--out", certs], check=True,
                   capture_output=True)
    cert, key = os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem")
    tls = ["--tls-cert", cert, "--tls-key", key]
    servers = {
        ("tagcast", "ws"): [TAGCAST, "serve", "--host", "127.0.0.1", "--port", "0"],
        ("tagcast", "wss"): [TAGCAST, "serve", "--host", "127.0.0.1", "--port", "0", *tls],
        ("ws", "wss"): ["node", BASELINE, "--host", "127.0.0.1", "--port", "0", *tls],
    }
    r = {}
    for name, load in (("burst", BURST), ("idle", IDLE)):
        for (label, scheme), cmd in servers.items():
            r[(name, label, scheme)] = run(label, cmd, scheme, cert, load)
    with open(opts.out, "w") as f:
        for v in r.values():
            f.write(json.dumps(v) + "\n")
    b = lambda k: r[("burst", *k)]["deliveries_per_sec"]
    m = lambda k: r[("idle", *k)]["server_rss_bytes_per_connection"]
    print(f"burst: tagcast wss {b(('tagcast', 'wss')):.0f}/s = {b(('tagcast', 'wss')) / b(('tagcast', 'ws')):.2f}x "
          f"its plain ws ({b(('tagcast', 'ws')):.0f}/s), {b(('tagcast', 'wss')) / b(('ws', 'wss')):.2f}x ws over https "
          f"({b(('ws', 'wss')):.0f}/s)")
    print(f"idle: tagcast wss {m(('tagcast', 'wss'))} B/connection, plain {m(('tagcast', 'ws'))} B "
          f"(TLS adds {m(('tagcast', 'wss')) - m(('tagcast', 'ws'))} B), ws over https {m(('ws', 'wss'))} B")


if __name__ == "__main__":
    main()
